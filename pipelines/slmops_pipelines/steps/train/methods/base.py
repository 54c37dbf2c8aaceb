"""The method interface and its registry."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from slmops_pipelines.specs import FineTuneJobSpec
from slmops_pipelines.specs.finetune import DEFAULT_TARGET_MODULES

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

METHODS: dict[str, type[TrainingMethod]] = {}

_PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def register(cls: type[TrainingMethod]) -> type[TrainingMethod]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> TrainingMethod:
    try:
        return METHODS[name]()
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}") from None


def load_dtype(spec: FineTuneJobSpec) -> torch.dtype:
    """Dtype of the base weights: model.dtype, or follow training.precision for 'auto'.

    ``spec`` is the node's resolved spec (:func:`..precision.with_resolved_precision`): an
    ``auto`` precision left unresolved loads fp32.
    """
    import torch

    precision = spec.training.precision if spec.training.precision != "auto" else "fp32"
    name = spec.model.dtype if spec.model.dtype != "auto" else _PRECISION_DTYPES[precision]
    # Trainable fp16 weights make the optimizer step overflow; train them in fp32 under autocast.
    if name == "float16" and spec.method == "full":
        name = "float32"
    return getattr(torch, name)


def linear_module_names(model: PreTrainedModel) -> set[str]:
    """Leaf names of the model's linear layers (excluding the output head)."""
    import torch

    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lm_head" not in full_name:
            names.add(full_name.rsplit(".", 1)[-1])
    return names


def default_target_modules(model: PreTrainedModel) -> list[str] | str:
    """All attention and MLP linear layers under their common names, else every linear layer."""
    present = linear_module_names(model)
    known = [name for name in DEFAULT_TARGET_MODULES if name in present]
    return known or "all-linear"


class TrainingMethod:
    """Loads and wraps a model for one fine-tuning method."""

    name: ClassVar[str]
    uses_adapter: ClassVar[bool] = True

    def load_model(self, path: Path, spec: FineTuneJobSpec) -> PreTrainedModel:
        from transformers import AutoModelForCausalLM

        from slmops_pipelines.steps.train.precision import attention_implementation

        return AutoModelForCausalLM.from_pretrained(
            path,
            dtype=load_dtype(spec),
            trust_remote_code=spec.model.trust_remote_code,
            attn_implementation=attention_implementation(spec),
        )

    def wrap(self, model: PreTrainedModel, spec: FineTuneJobSpec) -> PreTrainedModel:
        return model

    def lora_config_kwargs(self, model: PreTrainedModel, spec: FineTuneJobSpec) -> dict:
        lora = spec.lora
        return {
            "r": lora.r,
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            "target_modules": lora.target_modules or default_target_modules(model),
            "bias": "none",
            "task_type": "CAUSAL_LM",
        }

    def wrap_with_lora(self, model: PreTrainedModel, spec: FineTuneJobSpec, **extra) -> PreTrainedModel:
        from peft import LoraConfig, get_peft_model

        if spec.lora.target_modules:
            present = linear_module_names(model)
            missing = [m for m in spec.lora.target_modules if m not in present]
            if missing:
                from slmops_pipelines.errors import InputError

                raise InputError(
                    f"module {missing[0]!r} is not a linear layer of this model; linear layers: "
                    f"{', '.join(sorted(present))}",
                    field="lora.targetModules",
                )
        config = LoraConfig(**self.lora_config_kwargs(model, spec), **extra)
        return get_peft_model(model, config)
