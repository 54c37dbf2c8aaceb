"""The base class of every spec model.

Kubernetes manifests use camelCase; Python uses snake_case.  Every spec model accepts both
(``populate_by_name``), serialises to camelCase (``by_alias``), and rejects unknown fields
(``extra="forbid"``) so that a typo in a manifest is an error rather than a silently ignored
setting.  Field descriptions double as the CRD's ``description`` texts and ``slmops explain``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class SpecModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_manifest(self) -> dict[str, Any]:
        """The camelCase form, as it appears in a manifest (defaults included)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
