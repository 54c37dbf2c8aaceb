"""The validating admission webhook: bad specs are refused with the field and the reason.

Beyond the CRD's structural schema (types, enums, bounds), the webhook runs the API
models' own validation, which knows what a schema cannot say: a precision that a provider
cannot run, several adapters merged into one model, a target named twice, qlora in fp16,
an output location that is not a URI we can write.  It also enforces the update policy:
**a job's spec is immutable once created**, except ``suspend`` and
``ttlSecondsAfterFinished`` -- a run's results must describe the spec shown on the
resource; to change a job, create a new one.
"""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from slmops_operator.api.manifests import describe_error, format_loc
from slmops_operator.api.resources import GROUP, KINDS, VERSION

MUTABLE = {"suspend", "ttlSecondsAfterFinished"}


def problems_of(kind: str, body: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Every problem with the object, as ``path: reason`` lines; empty when it is fine."""
    problems: list[str] = []
    try:
        KINDS[kind].model_validate({**body, "status": None})
    except ValidationError as exc:
        problems += [f"{format_loc(e['loc'])}: {describe_error(e)}" for e in exc.errors(include_url=False)]
    spec = body.get("spec") or {}
    uri = ((spec.get("output") or {}).get("uri")) or ""
    if uri and not uri.startswith(("s3://", "/", "file://")):
        problems.append(f"spec.output.uri: must be s3://bucket/prefix or an absolute path (got {uri!r})")
    if old is not None:
        before = {k: v for k, v in (old.get("spec") or {}).items() if k not in MUTABLE}
        after = {k: v for k, v in spec.items() if k not in MUTABLE}
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                problems.append(
                    f"spec.{key}: the spec is immutable once created (only suspend and ttlSecondsAfterFinished "
                    "may change); create a new job instead"
                )
    return problems


def register(registry: kopf.OperatorRegistry) -> None:
    for kind, cls in KINDS.items():

        @kopf.on.validate(
            GROUP,
            VERSION,
            cls.plural,
            registry=registry,
            id=f"validate-{cls.plural}",
            param=kind,
            operations=["CREATE", "UPDATE"],
        )
        def validate(body: kopf.Body, old: kopf.Body | None, param: str, **_: Any) -> None:
            problems = problems_of(param, dict(body), dict(old) if old else None)
            if problems:
                raise kopf.AdmissionError("; ".join(problems), code=422)
