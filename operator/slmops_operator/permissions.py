"""The Kubernetes permissions the operator needs: exactly what it calls, nothing more.

* its resources: ``get``/``list``/``watch`` (kopf's watches, indexes and timers), ``patch``
  (kopf's annotations and finalizer), ``delete`` (``ttlSecondsAfterFinished``, through
  :class:`slmops_operator.handlers.kube.KubeApi`);
* their ``status`` subresource: ``get``/``patch``;
* ``events``: ``create`` (one per transition);
* ``secrets``: ``get`` where jobs live (a job's own Secrets, see :mod:`slmops_operator.credentials`);
  with standalone KFP, ``get``/``create``/``patch``/``delete`` in the KFP namespace only, for
  the run-owned copies, each write checked against the copy's label (:func:`secret_copy_rules`);
* ``inferenceservices`` (KServe): ``get``/``create``/``patch`` where jobs live, with the
  chart's ``kserve.enabled`` (:func:`serving_rules`);
* watching all namespaces: ``namespaces`` and ``customresourcedefinitions``, ``list``/``watch``
  (kopf's namespace and resource observers; off when a list of namespaces is given).

The Helm chart renders these rules (``charts/slmops/templates/rbac.yaml``); a test checks
the rendered rules against this module, and this module against the handlers and calls
in the code.
"""

from __future__ import annotations

from slmops_operator.api.resources import GROUP, resources

JOB_VERBS = ["get", "list", "watch", "patch", "delete"]
STATUS_VERBS = ["get", "patch"]


def operator_rules(*, clusterwide: bool) -> list[dict[str, list[str]]]:
    plurals = sorted(cls.plural for cls in resources().values())
    rules = [
        {"apiGroups": [GROUP], "resources": plurals, "verbs": JOB_VERBS},
        {"apiGroups": [GROUP], "resources": [f"{p}/status" for p in plurals], "verbs": STATUS_VERBS},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    ]
    if clusterwide:
        rules += [
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
            {
                "apiGroups": ["apiextensions.k8s.io"],
                "resources": ["customresourcedefinitions"],
                "verbs": ["list", "watch"],
            },
        ]
    return rules


def serving_rules() -> list[dict[str, list[str]]]:
    """With the chart's ``kserve.enabled``: the InferenceServices of jobs' ``spec.serve``.

    The operator changes only those it labelled ``app.kubernetes.io/managed-by: slmops``
    (:mod:`slmops_operator.handlers.serving`); it never deletes one (the job owns it: deleting
    the job lets Kubernetes' garbage collector delete it).
    """
    return [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "verbs": ["get", "create", "patch"],
        }
    ]


def secret_copy_rules() -> list[dict[str, list[str]]]:
    """Standalone KFP, in the KFP namespace: the run-owned copies of jobs' Secrets.

    RBAC cannot limit a create by name: the operator checks (``get``) that a Secret carries its
    ``slmops.io/run`` label for the run before it replaces or deletes it.
    """
    return [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch", "delete"]}]
