"""``spec.serve``: a succeeded job's target behind KServe, as an InferenceService the job owns.

A job's spec may ask to be served (``spec.serve``; see
:mod:`slmops_pipelines.specs.serve`).  Each pass over a finished job with such a spec:

* **Succeeded** (every quality gate passed: a violated gate fails the job) -> the
  InferenceService ``serve.name`` (default: the job's name) in the job's namespace is made
  to serve the job's target: created, or taken over from an earlier job (``storageUri`` and
  the owner change; the earlier job's status says ``replacedBy``).  The ``storageUri`` is the
  job's own output as the operator resolves it, never a location read from status.
* **Failed** or **Cancelled** -> nothing is touched: what serves keeps serving.  Status says
  so (``Serving=False``, reason ``NotServed``).
* An InferenceService of that name that slmops does not manage (no ``managed-by`` label)
  is never changed: ``Serving=False``, reason ``NameTaken``.

Then ``status.serving`` mirrors KServe's view (its URL, whether it is ready) and the
condition ``Serving`` says it in one word.  Each job acts once: after it handed the name to
a later job it only reports that (a finished job's passes go on, and two jobs must not take
the name back and forth).
"""

from __future__ import annotations

import re
from typing import Any

import kopf

from slmops_operator.api.resources import API_VERSION, Resource
from slmops_operator.handlers.conditions import set_condition
from slmops_operator.handlers.reconciler import Reconciler
from slmops_operator.handlers.status_writer import JobPass
from slmops_pipelines.specs.serve import SERVICE_NAME, SERVING_RUNTIME

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"  # KubeApi.SERVING_CALLS
MODEL_FORMAT = "onnxruntime-genai"  # the ClusterServingRuntime's supported format
MANAGED_BY = "app.kubernetes.io/managed-by"
JOB_LABEL = "slmops.io/job"
TARGET_ANNOTATION = "slmops.io/target"


def collection(namespace: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"


def inference_service(resource: Resource, uid: str, storage_uri: str) -> dict[str, Any]:
    """The InferenceService that serves ``resource``'s target, owned by the job."""
    spec: Any = resource.spec  # a kind with spec.serve (served_target)
    serve, target = spec.serve, spec.served_target()
    model: dict[str, Any] = {
        "modelFormat": {"name": MODEL_FORMAT},
        "runtime": SERVING_RUNTIME,
        "storageUri": storage_uri,
    }
    if requirements := serve.resources.requirements():
        model["resources"] = requirements
    predictor: dict[str, Any] = {"minReplicas": serve.replicas, "maxReplicas": serve.replicas, "model": model}
    if serve.service_account_name:
        predictor["serviceAccountName"] = serve.service_account_name
    owner = {
        "apiVersion": API_VERSION,
        "kind": resource.kind_name,
        "name": resource.name,
        "uid": uid,
        "controller": True,
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": service_name(resource),
            "namespace": resource.namespace,
            "labels": {MANAGED_BY: "slmops", JOB_LABEL: resource.name},
            "annotations": {TARGET_ANNOTATION: target.name},
            "ownerReferences": [owner],
        },
        "spec": {"predictor": predictor},
    }


def service_name(resource: Resource) -> str:
    spec: Any = resource.spec
    return spec.serve.name or resource.name


async def reconcile_serving(reconciler: Reconciler, resource: Resource, job: JobPass) -> None:
    """Serve a succeeded job's target; never touch what serves for a job that did not succeed."""
    if getattr(resource.spec, "serve", None) is None:
        return
    seen = dict(job.status.get("serving") or {})
    if seen.get("replacedBy"):
        return  # handed over: the later job reports what serves
    if job.status.get("phase") != "Succeeded":
        _say(
            job,
            seen,
            "False",
            reason="NotServed",
            message=f"the job {job.status.get('phase', '').lower()}: what serves stays",
        )
        return
    name = service_name(resource)
    if not re.match(SERVICE_NAME, name) or len(name) > 45:  # a job's name may have dots or be long
        _say(
            job,
            seen,
            "False",
            reason="InvalidName",
            message=f"{name!r} cannot name an InferenceService: set spec.serve.name",
        )
        return
    spec: Any = resource.spec
    target = spec.served_target()
    storage_uri = reconciler.output_uri(resource).rstrip("/") + f"/targets/{target.name}"
    desired = inference_service(resource, job.uid, storage_uri)
    path = f"{collection(resource.namespace)}/{name}"
    try:
        current = await reconciler.kube.get(path)
        if current is None:
            await reconciler.kube.create(collection(resource.namespace), desired)
            current = desired
        elif (current.get("metadata", {}).get("labels") or {}).get(MANAGED_BY) != "slmops":
            _say(
                job,
                seen,
                "False",
                reason="NameTaken",
                message=f"InferenceService {name} exists and slmops does not manage it",
            )
            return
        elif _owner_uid(current) != job.uid:
            if seen.get("name"):  # this job served it before: a later job took it over
                _replaced(job, seen, current)
                return
            await reconciler.kube.merge(path, _takeover(current, desired))
            current = {**current, "spec": desired["spec"], "status": {}}
        elif not _holds(current["spec"], desired["spec"]):  # the spec changed (replicas, resources)
            await reconciler.kube.merge(path, {"spec": desired["spec"]})
    except PermissionError as exc:
        _say(job, seen, "False", reason="Forbidden", message=f"{exc} (the chart's kserve.enabled grants it)")
        return
    except kopf.TemporaryError as exc:
        # KServe not installed (404), the API busy: said in status, tried again next pass
        _say(job, seen, "False", reason="ServingUnavailable", message=str(exc))
        return
    _mirror(job, seen, name, target.name, storage_uri, current)


def _holds(current: Any, desired: Any) -> bool:
    """Whether ``current`` has every field ``desired`` sets, with its value.

    KServe's webhook defaults fields we never set (the protocol, the containers): comparing the
    whole spec would patch it again on every pass.
    """
    if isinstance(desired, dict):
        return isinstance(current, dict) and all(_holds(current.get(k), v) for k, v in desired.items())
    return bool(current == desired)


def _owner_uid(isvc: dict[str, Any]) -> str | None:
    owners = isvc.get("metadata", {}).get("ownerReferences") or []
    return next((o.get("uid") for o in owners if o.get("controller")), None)


def _takeover(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that makes an earlier job's InferenceService this job's (checked at its version)."""
    meta = desired["metadata"]
    return {
        "metadata": {
            "resourceVersion": current["metadata"].get("resourceVersion"),
            "labels": meta["labels"],
            "annotations": meta["annotations"],
            "ownerReferences": meta["ownerReferences"],
        },
        "spec": desired["spec"],
    }


def _mirror(
    job: JobPass, seen: dict[str, Any], name: str, target: str, storage_uri: str, isvc: dict[str, Any]
) -> None:
    status = isvc.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    serving = {
        "name": name,
        "target": target,
        "storageUri": storage_uri,
        "url": status.get("url"),
        "ready": ready,
    }
    message = f"InferenceService {name} serves target {target}" + (
        f" at {status['url']}" if ready else " (not ready yet)"
    )
    shown = {k: v for k, v in serving.items() if v is not None}
    if ready:
        _say(job, shown, "True", reason="Ready", message=message)
    else:
        _say(job, shown, "False", reason="NotReady", message=message)


def _replaced(job: JobPass, seen: dict[str, Any], isvc: dict[str, Any]) -> None:
    by = (isvc["metadata"].get("labels") or {}).get(JOB_LABEL) or "another job"
    served = {**seen, "replacedBy": by, "ready": False}
    _say(
        job,
        served,
        "False",
        reason="Replaced",
        message=f"InferenceService {seen['name']} now serves {by}'s target",
    )


def _say(job: JobPass, serving: dict[str, Any], status: str, *, reason: str, message: str) -> None:
    """Write ``status.serving`` and the ``Serving`` condition into the pass's patch (when they change)."""
    conditions = set_condition(
        list(job.status.get("conditions") or []),
        "Serving",
        status,
        reason=reason,
        message=message,
        generation=job.generation,
    )
    old = next((c for c in job.status.get("conditions") or [] if c.get("type") == "Serving"), None)
    new = conditions[-1]
    unchanged = old is not None and all(old.get(k) == new[k] for k in ("status", "reason", "message"))
    if serving != (job.status.get("serving") or {}) and serving:
        job.patch.status["serving"] = serving
    if not unchanged:
        job.patch.status["conditions"] = conditions
