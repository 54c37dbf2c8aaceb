"""The slmops.io/v1alpha1 API: resources, status, CRD generation and manifest loading."""

from slmops_operator.api.resources import (
    API_VERSION,
    GROUP,
    KINDS,
    VERSION,
    FineTuneJob,
    ObjectMeta,
    OptimizeJob,
    Resource,
)
from slmops_operator.api.status import Condition, JobPhase, JobStatus, Progress, RunRef

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "Condition",
    "FineTuneJob",
    "JobPhase",
    "JobStatus",
    "ObjectMeta",
    "OptimizeJob",
    "Progress",
    "Resource",
    "RunRef",
]
