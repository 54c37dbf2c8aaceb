"""What a tenant may ask of this operator: the admission policy, per operator mode.

Everything in a job's spec is written by a tenant, so every location, account, claim and
pod setting it names is checked against what the job's namespace may use.  How far a
namespace reaches depends on where the job's pods run (``OperatorSettings.mode``):

==============  ========================================================================
mode            where the work runs, and so what a tenant must not name
==============  ========================================================================
multi-user      KFP runs in the job's namespace (Kubeflow profiles): its own accounts,
                claims and pull secrets are the tenant's to use.
standalone      every team's pipeline pods share the KFP namespace (``SLMOPS_KFP_NAMESPACE``):
                a ServiceAccount, a claim or a pull secret there is KFP's or another team's,
                and a custom image runs any code there, so each must be on the namespace's
                allow-list (``SLMOPS_TENANT_ALLOW``); a
                model's own code (``trustRemoteCode``) runs beside other teams' Secret copies,
                so only where the operator allows it (``SLMOPS_ALLOW_TRUST_REMOTE_CODE``).
local           the work runs in worker processes of the operator's own pod: no input from
                credential files of its user, the operator's state or its webhook
                certificate (symlinks and relative paths followed), even with no allowed
                roots set; ``trustRemoteCode`` only where allowed.
==============  ========================================================================

In every mode the default output root is split by namespace (``<root>/<namespace>/...``): a
job writes only in its own namespace's slot and reads no other namespace's outputs, and a
``system-*`` PriorityClass, a toleration of control-plane taints and an input under a pod's
system folders (``/proc``, ``/sys``, ``/dev``, ``/var/run/secrets``: in standalone KFP the
token there is KFP's own account's) are refused.

The functions return ``spec.<field>: <reason>`` lines; the webhook (over HTTP), the
reconciler (the webhook may be bypassed) and ``slmops validate --operator`` show them.
docs/operator.md's threat model table says the same, and tests/operator/test_tenancy.py
pins both.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from slmops_operator.settings import OperatorSettings
from slmops_pipelines import jobs
from slmops_pipelines.specs import JobSpec

# Every mode: a pod's kernel files and tokens (in standalone KFP, KFP's own account's; locally, the operator's).
SYSTEM_PATHS = ("/proc", "/sys", "/dev", "/var/run/secrets", "/run/secrets")
# ... and the credential files a process's home may hold (the worker shares the operator's home).
HOME_CREDENTIALS = (".aws", ".kube", ".docker", ".netrc", ".git-credentials", ".config", ".ssh")
HOME_CREDENTIAL_FILES = (".cache/huggingface/token",)
# Taints that keep work off control-plane nodes: tolerating them puts a tenant's pods there.
CONTROL_PLANE_TAINTS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")


def problems(spec: JobSpec, namespace: str, settings: OperatorSettings) -> list[str]:
    """Everything this operator's setup refuses in ``spec`` for a job in ``namespace``."""
    found = output_problems(spec.output.uri or "", settings, namespace=namespace)
    found += slot_problems(spec, namespace, settings)
    found += pod_problems(spec)
    found += system_path_problems(spec)
    if settings.mode == "standalone":
        found += standalone_problems(spec, namespace, settings)
    if settings.mode == "local":
        found += local_problems(spec, settings)
    if settings.mode != "multi-user":
        found += remote_code_problems(spec, settings)
    return found


# -- locations ------------------------------------------------------------------------------------


def local_path(uri: str) -> str | None:
    """The normalized path of a local URI; None for s3://, hf:// and pvc://."""
    if uri.startswith(("s3://", "hf://", "pvc://")):
        return None
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return posixpath.normpath(path) if path.startswith("/") else None


def location(uri: str) -> str:
    """What ``contains`` compares: a local URI's normalized path, any other URI without its trailing '/'."""
    return local_path(uri) or uri.rstrip("/")


def contains(outer: str, inner: str) -> bool:
    """True when location ``inner`` is ``outer`` or lies under it (both normalized)."""
    outer, inner = outer.rstrip("/"), inner.rstrip("/")
    return inner == outer or inner.startswith(outer + "/")


def default_root(settings: OperatorSettings) -> str:
    """Where jobs without ``output.uri`` write, one slot per namespace ("" when there is none)."""
    if settings.default_output:
        return location(settings.default_output)
    return str(settings.local_state_dir / "outputs") if settings.backend == "local" else ""


def namespace_slot(settings: OperatorSettings, namespace: str) -> str:
    """``<default root>/<namespace>``: the only part of the root a namespace's jobs may touch."""
    root = default_root(settings)
    return f"{root}/{namespace}" if root else ""


def _reserved_roots(settings: OperatorSettings) -> dict[str, str]:
    outputs = "the default output root" + (" (SLMOPS_DEFAULT_OUTPUT)" if settings.default_output else "")
    roots = {
        "the operator's state folder (SLMOPS_LOCAL_STATE_DIR)": location(str(settings.local_state_dir)),
        outputs: default_root(settings),
    }
    return {what: root for what, root in roots.items() if root and root != "."}


def output_problems(uri: str, settings: OperatorSettings, *, namespace: str | None = None) -> list[str]:
    """An output is a folder of its own: never one that holds the operator's folders, another
    namespace's slot of the default root, or (kfp backend) a path pipeline pods cannot see."""
    if not uri:
        return []
    found = []
    where = location(uri)
    for what, root in _reserved_roots(settings).items():
        if contains(where, root):
            found.append(
                f"spec.output.uri: {uri!r} is or holds {what}; a job's output is a folder of its own "
                "(leave output.uri empty to get one under the default root)"
            )
    root, slot = default_root(settings), namespace_slot(settings, namespace or "")
    if namespace is not None and root and contains(root, where) and not found:
        if not contains(slot, where) or where == slot:
            found.append(
                f"spec.output.uri: {uri!r} lies in the default output root outside this namespace's slot; "
                f"jobs of {namespace} write under {slot}/<name> (leave output.uri empty to get one)"
            )
    if local_path(uri) is not None and settings.backend == "kfp":
        found.append(
            f"spec.output.uri: {uri!r} is a local path, and this operator runs jobs as Kubeflow "
            "pipelines whose pods cannot see it: use s3://bucket/prefix"
        )
    if settings.backend == "local" and (blocked := _blocked_path(uri, settings)):
        found.append(f"spec.output.uri: {uri!r} is {blocked}, which jobs may not write")
    return found


def slot_problems(spec: JobSpec, namespace: str, settings: OperatorSettings) -> list[str]:
    """Inputs under the default output root come from the job's own namespace's slot only."""
    root, slot = default_root(settings), namespace_slot(settings, namespace)
    if not root:
        return []
    return [
        f"spec.{loc.uri_field}: {loc.uri!r} is another namespace's output (under {root}); "
        f"jobs of {namespace} read outputs under {slot} only"
        for loc in jobs.spec_inputs(spec)
        if contains(root, location(loc.uri)) and not contains(slot, location(loc.uri))
    ]


# -- pods -----------------------------------------------------------------------------------------


def pod_problems(spec: JobSpec) -> list[str]:
    """Scheduling a tenant may not choose in any mode."""
    found = []
    priority = spec.resources.priority_class_name or ""
    if priority.startswith("system-"):
        found.append(
            f"spec.resources.priorityClassName: {priority!r} is reserved for cluster components "
            "(Kubernetes admits system-* classes in kube-system only); use one of your cluster's classes"
        )
    for index, toleration in enumerate(spec.resources.tolerations):
        everything = not toleration.key and toleration.operator == "Exists"
        if everything or toleration.key in CONTROL_PLANE_TAINTS:
            what = "every taint" if everything else f"the taint {toleration.key}"
            found.append(
                f"spec.resources.tolerations[{index}]: tolerates {what}, which would let the job's pods "
                "onto control-plane nodes; tolerate your GPU pool's taints by key"
            )
    return found


def system_path_problems(spec: JobSpec) -> list[str]:
    """No mode reads a pod's kernel files or its service-account token as data.

    In standalone KFP that token is KFP's own account's; in the local backend, the
    operator's.  No model or dataset lives there, so every mode refuses it (by the path as
    written: the pods' filesystem is not this one; local mode also follows symlinks, below).
    """
    return [
        f"spec.{loc.uri_field}: {loc.uri!r} is under {root}, a pod's system files and tokens, "
        "which jobs may not read"
        for loc in jobs.spec_inputs(spec)
        if (root := _system_root(loc.uri)) is not None
    ]


def _system_root(uri: str) -> str | None:
    """The system folder a local input names, lexically ('..' climbs from wherever a pod starts)."""
    if uri.startswith(("s3://", "hf://", "pvc://")):
        return None
    path = local_path(uri)
    if path is None and ".." in uri.split("/"):
        path = posixpath.normpath(posixpath.join("/", uri))
    return next((root for root in SYSTEM_PATHS if path and contains(root, path)), None)


def standalone_problems(spec: JobSpec, namespace: str, settings: OperatorSettings) -> list[str]:
    """Standalone KFP: accounts, claims and pull secrets of the shared KFP namespace, allow-listed."""
    allowed = settings.allowance(namespace)
    where = f"the KFP namespace ({settings.kfp_namespace}), which every team's pipeline pods share"
    hint = f"Helm value tenancy.allow.{namespace}"
    found = []
    account = spec.service_account_name
    if account and account not in allowed.service_accounts:
        found.append(
            f"spec.serviceAccountName: {account!r} is an account of {where}, not on {namespace}'s "
            f"allow-list ({hint}.serviceAccounts, SLMOPS_TENANT_ALLOW)"
        )
    image = spec.image
    if image and not any(image.startswith(prefix) for prefix in allowed.images if prefix):
        found.append(
            f"spec.image: {image!r} would run its own code in {where}, as its account and beside other "
            f"teams' Secret copies; not on {namespace}'s allow-list ({hint}.images, SLMOPS_TENANT_ALLOW)"
        )
    for index, secret in enumerate(spec.image_pull_secrets):
        if secret.name not in allowed.image_pull_secrets:
            found.append(
                f"spec.imagePullSecrets[{index}].name: {secret.name!r} is a Secret of {where}, not on "
                f"{namespace}'s allow-list ({hint}.imagePullSecrets, SLMOPS_TENANT_ALLOW)"
            )
    for loc in jobs.spec_locations(spec):
        if loc.claim and loc.claim not in allowed.claims:
            found.append(
                f"spec.{loc.uri_field}: claim {loc.claim!r} is a PersistentVolumeClaim of {where}, not on "
                f"{namespace}'s allow-list ({hint}.claims, SLMOPS_TENANT_ALLOW)"
            )
    return found


def remote_code_problems(spec: JobSpec, settings: OperatorSettings) -> list[str]:
    """A model's own Python runs only where the pods are the tenant's, or the operator allows it."""
    if settings.allow_trust_remote_code:
        return []
    where = (
        "the operator's own pod"
        if settings.mode == "local"
        else f"pods of the shared KFP namespace ({settings.kfp_namespace}), beside other teams' Secrets"
    )
    return [
        f"spec.{loc.code_field}: a model repository's code would run in {where}; this operator does not "
        "allow it (SLMOPS_ALLOW_TRUST_REMOTE_CODE)"
        for loc in jobs.spec_remote_code(spec)
    ]


# -- the local backend: the work runs in the operator's pod -----------------------------------------


def _protected_paths(settings: OperatorSettings) -> dict[str, str]:
    home = Path(os.path.expanduser("~"))
    protected = {path: f"{path} (the operator pod's system files)" for path in SYSTEM_PATHS}
    for name in (*HOME_CREDENTIALS, *HOME_CREDENTIAL_FILES):
        protected[str(home / name)] = f"{home / name} (credentials of the operator's user)"
    protected[str(settings.kfp_token_path)] = "the operator's KFP token"
    protected[str(settings.webhook_cert_dir)] = "the webhook's certificate and key (SLMOPS_WEBHOOK_CERT_DIR)"
    return {posixpath.normpath(path): what for path, what in protected.items()}


def _blocked_path(uri: str, settings: OperatorSettings) -> str | None:
    """What protected place a local URI names, through any symlink; None when it names none.

    A relative path is taken from the operator's working folder, as its workers read it.
    """
    if uri.startswith(("s3://", "hf://", "pvc://")):
        return None
    path = posixpath.normpath(os.path.abspath(uri[len("file://") :] if uri.startswith("file://") else uri))
    candidates = [path, os.path.realpath(path)]  # a symlink may lead into a protected folder
    protected_paths = _protected_paths(settings)
    for candidate in candidates:
        for protected, what in protected_paths.items():
            if contains(protected, candidate):
                return what
    return None


def local_problems(spec: JobSpec, settings: OperatorSettings) -> list[str]:
    """Local mode: inputs from the operator's own files never; with allowed roots, only under them."""
    found = []
    state = posixpath.normpath(str(settings.local_state_dir))
    outputs = default_root(settings)
    roots = [posixpath.normpath(str(Path(r))) for r in settings.local_allowed_roots]
    for loc in jobs.spec_locations(spec):
        if loc.uri.startswith("pvc://"):
            found.append(
                f"spec.{loc.uri_field}: {loc.uri!r} is on a PersistentVolumeClaim, which only the kfp backend "
                "mounts (its pipeline pods); this operator runs jobs in its own pod"
            )
            continue
        if not loc.read_only or loc.uri.startswith(("s3://", "hf://")):
            continue
        path = local_path(loc.uri)
        blocked = _blocked_path(loc.uri, settings)
        if _system_root(loc.uri) is not None:
            continue  # said by system_path_problems
        if blocked is not None:
            found.append(f"spec.{loc.uri_field}: {loc.uri!r} is {blocked}, which jobs may not read")
        elif path is not None and contains(state, path) and not contains(outputs, path):
            found.append(
                f"spec.{loc.uri_field}: {loc.uri!r} is in the operator's state folder (SLMOPS_LOCAL_STATE_DIR), "
                "which jobs may not read"
            )
        elif roots and (path is None or not any(contains(root, path) for root in roots)):
            found.append(
                f"spec.{loc.uri_field}: {loc.uri!r} is outside the folders this operator may read "
                f"(SLMOPS_LOCAL_ALLOWED_ROOTS: {', '.join(roots)})"
            )
    return found
