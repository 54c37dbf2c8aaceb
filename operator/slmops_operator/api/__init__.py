"""The slmops API (group and version: the registry's): resources, status, CRD generation, manifest loading.

Each registered job kind has a resource class, made from the kind (:func:`resource_of`);
``from slmops_operator.api import <Kind>`` gives it by the kind's name.
"""

from typing import Any

from slmops_operator.api.resources import (
    API_VERSION,
    GROUP,
    VERSION,
    ObjectMeta,
    Resource,
    resource_of,
    resources,
)
from slmops_operator.api.status import Condition, JobPhase, JobStatus, Progress, RunRef


def __getattr__(name: str) -> Any:
    """A registered kind's resource class, by the kind's name."""
    try:
        return resource_of(name)
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Condition",
    "JobPhase",
    "JobStatus",
    "ObjectMeta",
    "Progress",
    "Resource",
    "RunRef",
    "resource_of",
    "resources",
]
