"""DoRA: weight-decomposed LoRA -- magnitude and direction trained apart (Liu et al., 2024)."""

from __future__ import annotations

from slmops_pipelines.steps.train.methods.base import TrainingMethod, register


@register
class Dora(TrainingMethod):
    name = "dora"

    def wrap(self, model, spec):
        return self.wrap_with_lora(model, spec, use_dora=True)
