"""QLoRA: LoRA on a base model quantized to 4-bit NF4 with bitsandbytes (Dettmers et al., 2023).

bitsandbytes 0.48+ has CPU kernels for 4-bit, so this runs (slowly) without a GPU too.
"""

from __future__ import annotations

from slmops_pipelines.steps.train.methods.base import TrainingMethod, load_dtype, register


@register
class QLora(TrainingMethod):
    name = "qlora"

    def load_model(self, path, spec):
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        compute_dtype = load_dtype(spec)
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
        return AutoModelForCausalLM.from_pretrained(
            path,
            quantization_config=quantization,
            dtype=compute_dtype,
            trust_remote_code=spec.model.trust_remote_code,
        )

    def wrap(self, model, spec):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=spec.training.gradient_checkpointing
        )
        return self.wrap_with_lora(model, spec)
