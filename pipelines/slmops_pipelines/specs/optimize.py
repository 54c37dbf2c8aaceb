"""The OptimizeJob spec: turn a (fine-tuned) model into optimized ONNX models, one per target.

Which precisions each ONNX Runtime execution provider can run is a table
(:data:`PROVIDER_PRECISIONS`), not a chain of ifs: validation, the webhook and the optimizer
all read it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from slmops_pipelines.specs.base import SpecModel
from slmops_pipelines.specs.common import DatasetSpec, ModelSpec, OutputSpec, ResourcesSpec, check_uri

Provider = Literal[
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "DmlExecutionProvider",
    "TensorrtExecutionProvider",
    "OpenVINOExecutionProvider",
]
TargetPrecision = Literal["fp32", "fp16", "int8", "int4"]
# What the pinned tools implement: the model builder's RTN, onnxruntime's HQQ.  (GPTQ/AWQ need
# calibration passes that neither tool runs on these graphs; k-quant produces an invalid graph
# in onnxruntime-genai 0.13.2.)
Int4Algorithm = Literal["rtn", "hqq"]
Int8Mode = Literal["weightOnly", "dynamic", "static"]
OptimizeMetric = Literal["perplexity", "accuracy", "rouge", "bleu", "latency", "size"]

PROVIDER_PRECISIONS: dict[str, set[str]] = {
    "CPUExecutionProvider": {"fp32", "int8", "int4"},
    "CUDAExecutionProvider": {"fp32", "fp16", "int4"},
    "DmlExecutionProvider": {"fp32", "fp16", "int4"},
    "TensorrtExecutionProvider": {"fp16", "int4"},
    "OpenVINOExecutionProvider": {"fp32", "fp16", "int8", "int4"},
}
WHY_NOT = {
    (
        "CPUExecutionProvider",
        "fp16",
    ): "CPU kernels for fp16 are missing or slower than fp32; use fp32, int8 or int4",
    (
        "CUDAExecutionProvider",
        "int8",
    ): "ONNX Runtime's CUDA provider has no int8 MatMul kernels for LLMs; use int4 or fp16",
    ("DmlExecutionProvider", "int8"): "DirectML has no int8 LLM kernels; use int4 or fp16",
    ("TensorrtExecutionProvider", "fp32"): "TensorRT LLM engines are built in fp16 or int4",
    (
        "TensorrtExecutionProvider",
        "int8",
    ): "int8 on TensorRT needs calibration caches the model builder does not make",
}


class AdapterRef(SpecModel):
    """One LoRA adapter of the source base model."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][\w.\-]*$", max_length=63, description="Name to select the adapter by."
    )
    uri: str = Field(
        min_length=1, description="Adapter folder (PEFT format): s3://, file:// or a local path."
    )

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str) -> str:
        return check_uri(value)


class FineTuneJobRef(SpecModel):
    """A FineTuneJob in the same namespace whose result is the source."""

    name: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253, description="FineTuneJob name."
    )


class OptimizeSource(SpecModel):
    """What to optimize: a FineTuneJob's result, or a model with zero, one or several adapters."""

    fine_tune_job_ref: FineTuneJobRef | None = Field(
        default=None, description="Use this FineTuneJob's base model and adapter."
    )
    model: ModelSpec | None = Field(default=None, description="A base (or already merged) model.")
    adapter: AdapterRef | None = Field(default=None, description="One adapter for model.")
    adapters: list[AdapterRef] | None = Field(
        default=None,
        min_length=1,
        description="Several adapters of model, kept separate and chosen per request.",
    )

    @model_validator(mode="after")
    def _check_one_source(self) -> OptimizeSource:
        if (self.fine_tune_job_ref is None) == (self.model is None):
            raise ValueError("set exactly one of fineTuneJobRef and model")
        if self.fine_tune_job_ref is not None and (self.adapter or self.adapters):
            raise ValueError("adapter/adapters go with model, not with fineTuneJobRef")
        if self.adapter and self.adapters:
            raise ValueError("set adapter or adapters, not both")
        if self.adapters:
            names = [a.name for a in self.adapters]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"adapter names must be unique: {', '.join(duplicates)}")
        return self


class QuantizationSpec(SpecModel):
    """How weights are quantized for int4 and int8 targets."""

    int4_block_size: Literal[16, 32, 64, 128, 256] = Field(default=32, description="Weights per int4 scale.")
    int4_algorithm: Int4Algorithm = Field(
        default="rtn", description="int4 algorithm: rtn (round to nearest) or hqq."
    )
    lm_head_int8: bool = Field(
        default=True,
        description="With rtn int4, keep the output layer in int8: it is the layer most sensitive to quantization.",
    )
    int8_mode: Int8Mode = Field(
        default="weightOnly",
        description=(
            "int8: weightOnly (block-wise int8 weights, MatMulNBits: accurate, fast decode), dynamic "
            "(int8 weights and activations, MatMulInteger: faster prefill, less accurate) or static "
            "(activation ranges calibrated on training rows, QDQ)."
        ),
    )
    calibration_samples: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="int8Mode static: training rows used to calibrate activation ranges.",
    )


class OptimizeTarget(SpecModel):
    """One optimized model: an execution provider and a precision."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63, description="Target name.")
    provider: Provider = Field(description="ONNX Runtime execution provider the model is built for.")
    precision: TargetPrecision = Field(description="Weight precision: fp32, fp16, int8 or int4.")
    merge_adapter: bool = Field(
        default=True,
        description="Merge the adapter into the weights (fastest); false keeps adapters separate (one base, many adapters).",
    )
    quantization: QuantizationSpec = Field(
        default_factory=QuantizationSpec, description="Quantizer settings."
    )

    @model_validator(mode="after")
    def _check_provider_precision(self) -> OptimizeTarget:
        if self.precision not in PROVIDER_PRECISIONS[self.provider]:
            why = WHY_NOT.get((self.provider, self.precision), "no kernels for it")
            supported = ", ".join(sorted(PROVIDER_PRECISIONS[self.provider]))
            raise ValueError(
                f"target {self.name!r}: {self.provider} cannot run {self.precision} ({why}); supported: {supported}"
            )
        return self


class Gates(SpecModel):
    """Quality and speed gates; a violated gate fails the job, naming the target and metric."""

    max_accuracy_drop: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Largest allowed accuracy drop vs. the fine-tuned PyTorch model.",
    )
    max_perplexity_increase: float | None = Field(
        default=None, ge=0, description="Largest allowed relative perplexity increase (0.05 = 5%)."
    )
    min_decode_speedup: float | None = Field(
        default=None, gt=0, description="Smallest allowed decode tokens/s ratio vs. the PyTorch model."
    )
    max_size_mb: float | None = Field(default=None, gt=0, description="Largest allowed model size in MB.")


class OptimizeEvaluationSpec(SpecModel):
    """How each optimized model is evaluated."""

    dataset: DatasetSpec | None = Field(
        default=None, description="Evaluation data (default: the source FineTuneJob's eval split)."
    )
    metrics: list[OptimizeMetric] = Field(
        default_factory=lambda: ["perplexity", "accuracy", "latency", "size"],
        min_length=1,
        description="Metrics to compute per target.",
    )
    match: Literal["exact", "startsWith"] = Field(
        default="exact", description="How accuracy compares answers."
    )
    max_new_tokens: int = Field(default=16, ge=1, le=4096, description="Token budget of generated answers.")
    max_samples: int | None = Field(default=128, ge=1, description="Evaluate at most this many rows.")
    gates: Gates = Field(default_factory=Gates, description="Gates relative to the fine-tuned PyTorch model.")


class OptimizeJobSpec(SpecModel):
    """Convert a model to ONNX and optimize it for one or more execution providers."""

    source: OptimizeSource = Field(description="The model (and adapters) to optimize.")
    targets: list[OptimizeTarget] = Field(
        min_length=1, max_length=32, description="One optimized model per target."
    )
    evaluation: OptimizeEvaluationSpec = Field(
        default_factory=OptimizeEvaluationSpec, description="Evaluation of every target."
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Compute for the conversion.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Where artifacts are written.")
    suspend: bool = Field(
        default=False,
        description="Stop the job's run (or keep it from starting); false again resumes it from its last checkpoint.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Delete the resource this many seconds after it finished (its artifacts stay).",
    )

    @model_validator(mode="after")
    def _check_targets(self) -> OptimizeJobSpec:
        names = [t.name for t in self.targets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"target names must be unique: {', '.join(duplicates)}")
        if self.source.adapters and len(self.source.adapters) > 1:
            merged = [t.name for t in self.targets if t.merge_adapter]
            if merged:
                raise ValueError(
                    f"target {merged[0]!r}: several adapters cannot be merged into one model; set mergeAdapter: false"
                )
        return self
