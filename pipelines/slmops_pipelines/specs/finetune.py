"""The FineTuneJob spec: what to train, on what, how, and where the results go."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from slmops_pipelines.specs.base import SpecModel, cel_rules, has_true
from slmops_pipelines.specs.common import (
    MAX_SAMPLES,
    MAX_SEED,
    MAX_STEPS,
    DatasetSpec,
    JobSpecBase,
    ModelSpec,
    OutputSpec,
)
from slmops_pipelines.specs.resources import ResourcesSpec
from slmops_pipelines.specs.search import SearchSpec

Method = Literal["lora", "qlora", "dora", "full"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Scheduler = Literal[
    "linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"
]
MatchMode = Literal["exact", "startsWith"]

# The linear layers of attention and MLP blocks in Llama/Mistral/Qwen/Phi-style models.  An
# explicit list (rather than PEFT's "all-linear") keeps the adapter portable to ONNX
# Runtime GenAI's adapter format, which knows these names.
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraSpec(SpecModel):
    """LoRA settings, used by the lora, qlora and dora methods."""

    r: int = Field(default=16, ge=1, le=1024, description="Rank of the low-rank update matrices.")
    alpha: int = Field(
        default=32, ge=1, le=4096, description="Scaling numerator: the update is scaled by alpha/r."
    )
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[Annotated[str, Field(max_length=256)]] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description=(
            "Module names to adapt.  Default: all linear layers of attention and MLP that the model has "
            "(q/k/v/o_proj, gate/up/down_proj, or the model's equivalents)."
        ),
    )


class EarlyStoppingSpec(SpecModel):
    """Stop when the eval loss stops improving: the model has started to overfit."""

    patience: int = Field(
        default=3, ge=1, le=1000, description="Evaluations without improvement before stopping."
    )
    min_delta: float = Field(
        default=0.0, ge=0, description="Smallest decrease of eval loss that counts as an improvement."
    )


class TrainingSpec(SpecModel):
    """Optimiser, schedule, batch and checkpoint settings."""

    model_config = cel_rules(
        ("!(has(self.maxSteps) && has(self.epochs))", "set maxSteps or epochs, not both"),
        ("!has(self.earlyStopping) || has(self.evalSteps)", "earlyStopping needs evalSteps"),
    )

    max_steps: int | None = Field(
        default=None, ge=1, le=MAX_STEPS, description="Optimizer steps to train (excludes epochs)."
    )
    epochs: float | None = Field(default=None, gt=0, le=1000, description="Passes over the training data.")
    learning_rate: float = Field(default=1e-3, gt=0, le=1, description="Peak learning rate.")
    scheduler: Scheduler = Field(default="linear", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1, description="Fraction of steps with linear warmup.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")
    batch_size: int = Field(default=8, ge=1, le=4096, description="Examples per device per step.")
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=4096, description="Micro-batches per optimizer step."
    )
    precision: Precision = Field(
        default="auto",
        description=(
            "Compute precision: auto (bf16 where the node computes it fast, a GPU with bf16 or a CPU "
            "with AMX or AVX-512 BF16, for adapter methods; fp32 elsewhere), fp32, bf16 or fp16 "
            "(fp16 needs a GPU)."
        ),
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Trade compute for memory by recomputing activations (slower)."
    )
    seed: int = Field(
        default=42,
        ge=0,
        le=MAX_SEED,
        description="Seed for data order, initialisation and splits (0 to 2^32-1: what numpy and torch accept).",
    )
    logging_steps: int = Field(default=5, ge=1, le=MAX_STEPS, description="Log training loss every N steps.")
    eval_steps: int | None = Field(
        default=None, ge=1, le=MAX_STEPS, description="Compute eval loss every N steps (default: at the end)."
    )
    save_steps: int = Field(
        default=50, ge=1, le=MAX_STEPS, description="Checkpoint every N steps (resumable after a crash)."
    )
    save_total_limit: int | None = Field(
        default=2, ge=1, le=1000, description="Checkpoints kept; older ones are removed."
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        default=None, description="Stop when eval loss stops improving (needs evalSteps)."
    )
    loss: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")] = Field(
        default="cross_entropy",
        description="Training loss by name: cross_entropy, or a plug-in registered under the entry point group slmops.losses.",
    )

    @model_validator(mode="after")
    def _check_length(self) -> TrainingSpec:
        if self.max_steps is None and self.epochs is None:
            self.epochs = 1.0
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError("set maxSteps or epochs, not both")
        if self.early_stopping is not None:
            if self.eval_steps is None:
                raise ValueError("earlyStopping needs evalSteps: eval loss is what it watches")
            if self.save_steps % self.eval_steps:
                raise ValueError(
                    f"with earlyStopping, saveSteps ({self.save_steps}) must be a multiple of evalSteps "
                    f"({self.eval_steps}) so that the best checkpoint can be kept"
                )
        return self


class EvaluationSpec(SpecModel):
    """Generation-based evaluation on the eval split, of the base model and the fine-tuned one."""

    accuracy: bool = Field(
        default=True,
        description="Generate an answer for each eval prompt and compare it to the expected one.",
    )
    match: MatchMode = Field(
        default="exact",
        description="exact: the answer equals the expected text; startsWith: it begins with it (case-insensitive, trimmed).",
    )
    compare_base: bool = Field(
        default=True, description="Also evaluate the base model, for a before/after figure."
    )
    max_new_tokens: int = Field(
        default=16, ge=1, le=4096, description="Token budget of each generated answer."
    )
    max_samples: int | None = Field(
        default=256, ge=1, le=MAX_SAMPLES, description="Evaluate at most this many eval rows."
    )
    batch_size: int = Field(default=16, ge=1, le=1024, description="Prompts generated together.")
    metrics: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$", max_length=128)]] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "More metrics of the generated answers, by name: accuracy or f1 (macro F1), built in, or a plug-in "
            "registered under the entry point group slmops.metrics."
        ),
    )


class FineTuneJobSpec(JobSpecBase):
    """Fine-tune a language model with LoRA, QLoRA, DoRA or full training."""

    model_config = cel_rules(
        (
            f"!(has(self.method) && self.method == 'full' && has(self.output) && {has_true('self.output.mergedModel')})",
            "output.mergedModel applies to adapter methods; full fine-tuning saves the whole model",
        ),
        (
            "!(has(self.method) && self.method == 'qlora' && has(self.training) "
            "&& has(self.training.precision) && self.training.precision == 'fp16')",
            "qlora with fp16 is unstable: use bf16 or fp32",
        ),
        (
            "!(has(self.evaluation) && has(self.evaluation.metrics) && size(self.evaluation.metrics) > 0 "
            "&& has(self.dataset.textTemplate))",
            "evaluation.metrics compare generated answers with expected ones: dataset.textTemplate has no answer",
        ),
    )

    model: ModelSpec = Field(description="The base model.")
    dataset: DatasetSpec = Field(description="Training (and evaluation) data.")
    method: Method = Field(default="lora", description="lora, qlora (4-bit base), dora, or full fine-tuning.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="Adapter settings (lora, qlora, dora).")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Training loop settings.")
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="Evaluation after training."
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Compute for training.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Where artifacts are written.")
    search: SearchSpec | None = Field(
        default=None, description="Try many recipes (hyperparameter search) and keep the best trial."
    )

    @model_validator(mode="after")
    def _check_method(self) -> FineTuneJobSpec:
        if self.method == "full" and self.output.merged_model:
            raise ValueError(
                "output.mergedModel applies to adapter methods; full fine-tuning saves the whole model"
            )
        if self.search is not None:
            known = {"eval_loss", "train_loss", "accuracy", *self.evaluation.metrics}
            if self.search.metric not in known:
                raise ValueError(
                    f"search.metric {self.search.metric!r} is not measured by this job; "
                    f"choose one of {', '.join(sorted(known))} (or add it to evaluation.metrics)"
                )
            if self.search.metric == "eval_loss" and not (
                self.dataset.eval_split or self.dataset.eval_fraction
            ):
                raise ValueError(
                    "search.metric eval_loss needs an eval split (dataset.evalSplit or evalFraction)"
                )
            if self.method == "full" and any(name.startswith("lora.") for name in self.search.space):
                raise ValueError("search.space has lora.* parameters but method is full")
        if self.evaluation.metrics and self.dataset.text_template:
            raise ValueError(
                f"evaluation.metrics ({', '.join(self.evaluation.metrics)}) compare generated answers with the "
                "expected ones, and dataset.textTemplate has no answer: use promptTemplate+completionTemplate "
                "or chatTemplate"
            )
        if self.training.precision == "fp16" and self.method == "qlora":
            # bitsandbytes 4-bit with fp16 compute overflows on most small models; bf16 or fp32 is safe.
            raise ValueError("qlora with fp16 is unstable: use bf16 or fp32")
        return self
