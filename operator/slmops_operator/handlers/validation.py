"""The validating admission webhook: bad specs are refused with the field and the reason.

Admission has three layers, so that safety never hangs on one webhook replica:

1. the CRD's structural schema (types, enums, bounds, patterns) and its CEL rules
   (``x-kubernetes-validations``: exactly one source, templates that exclude each other,
   immutability of the spec through ``oldSelf``), enforced by the API server itself;
2. this webhook, which runs the API models' own validation -- what CEL cannot say: a
   precision that a provider cannot run, a metric that needs answers the data does not
   have -- and the checks that depend on how this operator is set up (:func:`setup_problems`);
3. the reconciler, which runs the same checks again (the webhook may be bypassed or not
   installed) and fails the job with reason ``InvalidSpec``.

The update policy: **a job's spec is immutable once created**, except ``suspend`` and
``ttlSecondsAfterFinished`` -- a run's results must describe the spec shown on the
resource; to change a job, create a new one.  Updates that leave the spec as it was
(metadata: finalizers, labels, annotations) always pass, and deletes are never sent
here: a stricter release of the webhook can never lock an existing object in.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

import kopf
from pydantic import ValidationError

from slmops_operator.api.manifests import describe_error, format_loc
from slmops_operator.api.resources import (
    GROUP,
    MUTABLE_SPEC_FIELDS,
    VERSION,
    Resource,
    resource_of,
    resources,
)
from slmops_operator.settings import OperatorSettings
from slmops_pipelines import jobs
from slmops_pipelines.specs import JobSpec


def problems_of(
    kind: str,
    body: dict[str, Any],
    old: dict[str, Any] | None = None,
    *,
    settings: OperatorSettings | None = None,
) -> list[str]:
    """Every problem with the object, as ``path: reason`` lines; empty when it is fine."""
    spec = body.get("spec") or {}
    if old is not None and (old.get("spec") or {}) == spec:
        return []  # metadata or status only: never refused (finalizers must always come off)
    return checked_resource(kind, body, old, settings=settings)[1]


def checked_resource(
    kind: str,
    body: dict[str, Any],
    old: dict[str, Any] | None = None,
    *,
    settings: OperatorSettings | None = None,
) -> tuple[Resource | None, list[str]]:
    """The object as its resource class, and every problem with it (``path: reason`` lines).

    One validation serves both: the reconciler needs the typed resource and the problems.
    """
    spec = body.get("spec") or {}
    problems: list[str] = []
    resource: Resource | None = None
    try:
        resource = resource_of(kind).model_validate({**body, "status": None})
    except ValidationError as exc:
        problems += [f"{format_loc(e['loc'])}: {describe_error(e)}" for e in exc.errors(include_url=False)]
    uri = ((spec.get("output") or {}).get("uri")) or ""
    if uri and not uri.startswith(("s3://", "pvc://", "/", "file://")):
        problems.append(
            f"spec.output.uri: must be s3://bucket/prefix or an absolute path, or pvc://claim/path (got {uri!r})"
        )
    if settings is not None and resource is not None:
        problems += setup_problems(resource.spec, settings)
    if old is not None:
        problems += immutability_problems(old.get("spec") or {}, spec)
    return resource, problems


def immutability_problems(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    problems = []
    for key in sorted((set(before) | set(after)) - MUTABLE_SPEC_FIELDS):
        if before.get(key) != after.get(key):
            problems.append(
                f"spec.{key}: the spec is immutable once created (only suspend and ttlSecondsAfterFinished "
                "may change); create a new job instead"
            )
    return problems


# -- what depends on this operator's setup ------------------------------------------------------


def _local_path(uri: str) -> str | None:
    """The normalized path of a local URI; None for s3:// and hf://."""
    if uri.startswith(("s3://", "hf://")):
        return None
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return posixpath.normpath(path) if path.startswith("/") else None


def _contains(outer: str, inner: str) -> bool:
    """True when location ``inner`` is ``outer`` or lies under it (both normalized)."""
    outer, inner = outer.rstrip("/"), inner.rstrip("/")
    return inner == outer or inner.startswith(outer + "/")


def _reserved_roots(settings: OperatorSettings) -> dict[str, str]:
    roots = {"the operator's state folder (SLMOPS_LOCAL_STATE_DIR)": str(settings.local_state_dir)}
    if settings.default_output:
        roots["the default output root (SLMOPS_DEFAULT_OUTPUT)"] = settings.default_output
    elif settings.backend == "local":
        roots["the default output root"] = str(settings.local_state_dir / "outputs")
    return {
        what: (_local_path(root) or root.rstrip("/")) for what, root in roots.items() if root and root != "."
    }


def output_problems(uri: str, settings: OperatorSettings) -> list[str]:
    """An output must not hold the operator's own folders, nor be one pipeline pods cannot reach."""
    problems = []
    local = _local_path(uri)
    location = local or uri.rstrip("/")
    for what, root in _reserved_roots(settings).items():
        if _contains(location, root):
            problems.append(
                f"spec.output.uri: {uri!r} is or holds {what}; a job's output is a folder of its own "
                "(leave output.uri empty to get one under the default root)"
            )
    if local is not None and settings.backend == "kfp":
        problems.append(
            f"spec.output.uri: {uri!r} is a local path, and this operator runs jobs as Kubeflow "
            "pipelines whose pods cannot see it: use s3://bucket/prefix"
        )
    return problems


def input_problems(spec: JobSpec, settings: OperatorSettings) -> list[str]:
    """In local mode, with allowed roots set, every local input must lie under one of them."""
    if settings.backend != "local" or not settings.local_allowed_roots:
        return []
    roots = [posixpath.normpath(str(Path(r))) for r in settings.local_allowed_roots]
    problems = []
    for loc in jobs.spec_inputs(spec):
        if loc.uri.startswith(("s3://", "hf://", "pvc://")):  # not this pod's files (pvc: see pvc_problems)
            continue
        local = _local_path(loc.uri)
        if local is None or not any(_contains(root, local) for root in roots):
            problems.append(
                f"spec.{loc.uri_field}: {loc.uri!r} is outside the folders this operator may read "
                f"(SLMOPS_LOCAL_ALLOWED_ROOTS: {', '.join(roots)})"
            )
    return problems


def pvc_problems(spec: JobSpec, settings: OperatorSettings) -> list[str]:
    """A claim is mounted into the pipeline's pods: the local backend's workers have none of it."""
    if settings.backend != "local":
        return []
    return [
        f"spec.{loc.uri_field}: {loc.uri!r} is on a PersistentVolumeClaim, which only the kfp backend "
        "mounts (its pipeline pods); this operator runs jobs in its own pod"
        for loc in jobs.spec_locations(spec)
        if loc.uri.startswith("pvc://")
    ]


def setup_problems(spec: JobSpec, settings: OperatorSettings) -> list[str]:
    """What this operator's setup refuses, over every location the spec declares."""
    uri = spec.output.uri or ""
    outputs = output_problems(uri, settings) if uri else []
    return outputs + input_problems(spec, settings) + pvc_problems(spec, settings)


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings | None = None) -> None:
    for kind, cls in resources().items():
        # kopf's WebhookFn protocol lists neither ``old`` (kopf passes it to validating webhooks)
        # nor a ``param`` without a default (kopf passes the one registered here).
        @kopf.on.validate(  # type: ignore[arg-type]
            GROUP,
            VERSION,
            cls.plural,
            registry=registry,
            id=f"validate-{cls.plural}",
            param=kind,
            operations=["CREATE", "UPDATE"],
        )
        def validate(body: kopf.Body, old: kopf.Body | None, param: str, **_: Any) -> None:
            problems = problems_of(param, dict(body), dict(old) if old else None, settings=settings)
            if problems:
                raise kopf.AdmissionError("; ".join(problems), code=422)
