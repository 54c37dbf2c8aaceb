"""Typed job specifications shared by the API models, the steps and the runners."""

from slmops_pipelines.specs.base import SpecModel
from slmops_pipelines.specs.common import (
    DatasetSpec,
    JobSpec,
    ModelSpec,
    OutputSpec,
)
from slmops_pipelines.specs.finetune import (
    EarlyStoppingSpec,
    EvaluationSpec,
    FineTuneJobSpec,
    LoraSpec,
    Method,
    Precision,
    TrainingSpec,
)
from slmops_pipelines.specs.optimize import (
    OptimizeJobSpec,
    OptimizeSource,
    OptimizeTarget,
)
from slmops_pipelines.specs.resources import ResourcesSpec, Toleration

__all__ = [
    "DatasetSpec",
    "EarlyStoppingSpec",
    "EvaluationSpec",
    "FineTuneJobSpec",
    "JobSpec",
    "LoraSpec",
    "Method",
    "ModelSpec",
    "OptimizeJobSpec",
    "OptimizeSource",
    "OptimizeTarget",
    "OutputSpec",
    "Precision",
    "ResourcesSpec",
    "SpecModel",
    "Toleration",
    "TrainingSpec",
]
