"""The base class of every spec model.

Kubernetes manifests use camelCase; Python uses snake_case.  Every spec model accepts both
(``populate_by_name``), serialises to camelCase (``by_alias``), and rejects unknown fields
(``extra="forbid"``) so that a typo in a manifest is an error rather than a silently ignored
setting.  Field descriptions double as the CRD's ``description`` texts and ``slmops explain``.

Cross-field rules are pydantic validators (what ``slmops validate`` and the webhook run);
those that CEL can express are also declared with :func:`cel_rules` next to them, and land
in the CRD as ``x-kubernetes-validations``, so that the API server enforces them even when
no webhook answers.  A test evaluates every rule against the validator it mirrors.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from slmops_pipelines.specs.locations import LocationKind

CEL_KEY = "x-kubernetes-validations"


SECRET_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"  # a DNS subdomain, as Kubernetes names Secrets


def cel_rules(*rules: tuple[str, str]) -> ConfigDict:
    """A model config carrying CEL ``(rule, message)`` pairs into the model's JSON schema.

    Rules are written against a manifest as the API server stores it (camelCase, defaults
    applied where the schema has them); optional fields are guarded with ``has()``.
    """
    return ConfigDict(json_schema_extra={CEL_KEY: [{"rule": r, "message": m} for r, m in rules]})


def has_true(path: str) -> str:
    """CEL: ``path`` is set and true (a boolean field that may be absent)."""
    return f"(has({path}) && {path})"


class SpecModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )
    # Set on the parts that name a place the job reads or writes (see specs/locations.py).
    location: ClassVar[LocationKind | None] = None

    def to_manifest(self) -> dict[str, Any]:
        """The camelCase form, as it appears in a manifest (defaults included)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
