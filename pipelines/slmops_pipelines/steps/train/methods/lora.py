"""LoRA: low-rank adapters on the attention and MLP linear layers (Hu et al., 2021)."""

from __future__ import annotations

from slmops_pipelines.steps.train.methods.base import TrainingMethod, register


@register
class Lora(TrainingMethod):
    name = "lora"

    def wrap(self, model, spec):
        return self.wrap_with_lora(model, spec)
