"""The validating admission webhook: bad specs are refused with the field and the reason.

Admission has three layers, so that safety never hangs on one webhook replica:

1. the CRD's structural schema (types, enums, bounds, patterns) and its CEL rules
   (``x-kubernetes-validations``: exactly one source, templates that exclude each other,
   immutability of the spec through ``oldSelf``), enforced by the API server itself;
2. this webhook, which runs the API models' own validation -- what CEL cannot say: a
   precision that a provider cannot run, a metric that needs answers the data does not
   have -- and what a tenant may ask of this operator in its mode (:mod:`slmops_operator.policy`:
   accounts, claims, the default output root's namespace slots, the operator's own files);
3. the reconciler, which runs the same checks again (the webhook may be bypassed or not
   installed) and fails the job with reason ``InvalidSpec``.

The update policy: **a job's spec is immutable once created**, except ``suspend`` and
``ttlSecondsAfterFinished`` -- a run's results must describe the spec shown on the
resource; to change a job, create a new one.  Updates that leave the spec as it was
(metadata: finalizers, labels, annotations) always pass, and deletes are never sent
here: a stricter release of the webhook can never lock an existing object in.
"""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from slmops_operator import policy
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
        problems += policy.problems(resource.spec, resource.namespace, settings)
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
