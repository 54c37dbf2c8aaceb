"""Full fine-tuning: every weight is trained; the result is a whole model, not an adapter."""

from __future__ import annotations

from slmops_pipelines.steps.train.methods.base import TrainingMethod, register


@register
class Full(TrainingMethod):
    name = "full"
    uses_adapter = False
