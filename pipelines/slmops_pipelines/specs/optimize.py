"""The OptimizeJob spec: turn a (fine-tuned) model into optimized ONNX models, one per target.

Which precisions and algorithms each ONNX Runtime execution provider can run is a table
(:mod:`slmops_pipelines.specs.providers`), not a chain of ifs: validation, the CRD's CEL rules,
placement and export all read it.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from slmops_pipelines.specs import providers
from slmops_pipelines.specs.base import SpecModel, cel_rules
from slmops_pipelines.specs.common import (
    MAX_SAMPLES,
    DatasetSpec,
    JobSpecBase,
    ModelSpec,
    OutputSpec,
    check_uri,
)
from slmops_pipelines.specs.locations import LocationKind
from slmops_pipelines.specs.resources import ResourcesSpec
from slmops_pipelines.specs.serve import SERVED_PROVIDER, ServeSpec

Provider = Literal[
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "DmlExecutionProvider",
    "TensorrtExecutionProvider",
    "OpenVINOExecutionProvider",
]
TargetPrecision = Literal["fp32", "fp16", "int8", "int4"]
# What the pinned tools implement: the model builder's RTN, onnxruntime's HQQ and GPTQ (GPTQ
# calibrates on the job's own rows).  (AWQ needs a pass neither tool runs on these graphs;
# k-quant produces an invalid graph in onnxruntime-genai 0.13.2.)
Int4Algorithm = Literal["rtn", "hqq", "gptq"]
Int8Mode = Literal["weightOnly", "dynamic", "static"]
OptimizeMetric = Literal["perplexity", "accuracy", "rouge", "bleu", "latency", "size"]
ANSWER_METRICS = ("accuracy", "rouge", "bleu")
DEFAULT_METRICS: tuple[OptimizeMetric, ...] = ("perplexity", "accuracy", "latency", "size")

_ADAPTER_NAME = r"^[A-Za-z0-9][\w.\-]*$"
_GENERIC_FOLDERS = {"adapter", "adapters", "lora", "final", "output", "model"}


def default_adapter_name(uri: str) -> str:
    """The adapter's folder name (its parent's for a generic one: runs/tone/adapter -> tone)."""
    parts = [p for p in re.split(r"[/\\]", uri.split("://", 1)[-1]) if p not in ("", ".", "..")]
    while len(parts) > 1 and parts[-1].lower() in _GENERIC_FOLDERS:
        parts.pop()
    name = re.sub(r"[^\w.\-]", "-", parts[-1] if parts else "").lstrip("._-")[:63]
    return name or "adapter"


class AdapterEvaluationSpec(SpecModel):
    """How one adapter is evaluated: each adapter may serve a task of its own."""

    dataset: DatasetSpec | None = Field(
        default=None,
        description=(
            "This adapter's evaluation data (same fields as evaluation.dataset); default: the job's "
            "evaluation.dataset.  The adapter's PyTorch reference and every target with this adapter "
            "active are measured on it, and the job's gates apply to it."
        ),
    )


class AdapterRef(SpecModel):
    """One LoRA adapter of the source base model."""

    location = LocationKind("model", read_only=True, secret_attr=None)  # read with the model's Secret

    name: str | None = Field(
        default=None,
        pattern=_ADAPTER_NAME,
        max_length=63,
        description="Name to select the adapter by (default: its folder's name).",
    )
    uri: str = Field(
        min_length=1, description="Adapter folder (PEFT format): s3://, pvc://, file:// or a local path."
    )
    evaluation: AdapterEvaluationSpec | None = Field(
        default=None, description="This adapter's own evaluation (default: the job's evaluation.dataset)."
    )

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str) -> str:
        return check_uri(value)

    @model_validator(mode="after")
    def _default_name(self) -> AdapterRef:
        if self.name is None:
            self.name = default_adapter_name(self.uri)
        return self


class FineTuneJobRef(SpecModel):
    """A FineTuneJob in the same namespace whose result is the source."""

    name: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253, description="FineTuneJob name."
    )


class OptimizeSource(SpecModel):
    """What to optimize: a FineTuneJob's result, or a model with zero, one or several adapters."""

    model_config = cel_rules(
        ("has(self.fineTuneJobRef) != has(self.model)", "set exactly one of fineTuneJobRef and model"),
        (
            "!has(self.fineTuneJobRef) || (!has(self.adapter) && !has(self.adapters))",
            "adapter/adapters go with model, not with fineTuneJobRef",
        ),
        ("!(has(self.adapter) && has(self.adapters))", "set adapter or adapters, not both"),
        (
            "!has(self.adapters) || self.adapters.all(a, !has(a.name) "
            "|| self.adapters.filter(b, has(b.name) && b.name == a.name).size() == 1)",
            "adapter names must be unique",
        ),
    )

    fine_tune_job_ref: FineTuneJobRef | None = Field(
        default=None, description="Use this FineTuneJob's base model and adapter."
    )
    model: ModelSpec | None = Field(default=None, description="A base (or already merged) model.")
    adapter: AdapterRef | None = Field(default=None, description="One adapter for model.")
    adapters: list[AdapterRef] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Several adapters of model, kept separate and chosen per request.",
    )

    def adapter_refs(self) -> list[AdapterRef]:
        """The adapters, in spec order, whether given as ``adapter`` or ``adapters``."""
        return [self.adapter] if self.adapter else list(self.adapters or [])

    def adapter_datasets(self) -> dict[str, DatasetSpec]:
        """The adapters with evaluation data of their own (rendered as that data was), by name."""
        return {
            ref.name: ref.evaluation.dataset
            for ref in self.adapter_refs()
            if ref.name and ref.evaluation is not None and ref.evaluation.dataset is not None
        }

    def adapter_field(self, index: int) -> str:
        """The spec field of the ``index``-th adapter: ``source.adapter`` or ``source.adapters[i]``."""
        return "source.adapter" if self.adapter else f"source.adapters[{index}]"

    @model_validator(mode="after")
    def _check_one_source(self) -> OptimizeSource:
        if (self.fine_tune_job_ref is None) == (self.model is None):
            raise ValueError("set exactly one of fineTuneJobRef and model")
        if self.fine_tune_job_ref is not None and (self.adapter or self.adapters):
            raise ValueError("adapter/adapters go with model, not with fineTuneJobRef")
        if self.adapter and self.adapters:
            raise ValueError("set adapter or adapters, not both")
        if self.adapters:
            names = [a.name for a in self.adapters if a.name is not None]  # AdapterRef fills in every name
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"adapter names must be unique: {', '.join(duplicates)}")
        return self


class QuantizationSpec(SpecModel):
    """How weights are quantized for int4 and int8 targets."""

    int4_block_size: Literal[16, 32, 64, 128, 256] | None = Field(
        default=None,
        description=(
            "Weights per int4 scale. Unset: the provider's measured best (64 on CPUExecutionProvider "
            "with the adapter merged: faster than 32 at the same accuracy on the demo; 32 for the layers "
            "where adapters stay separate, which lost 10 points at 64 on the demo, while the output layer, "
            "which LoRA does not adapt, keeps 64; 32 elsewhere). Set, it applies to every int4 layer, the "
            "output layer included. Larger blocks decode "
            "batches faster but cost accuracy (the demo: 91% at 128 against 100% at 64); a block that "
            "does not divide the hidden size is padded."
        ),
    )
    int4_algorithm: Int4Algorithm = Field(
        default="rtn",
        description=(
            "int4 algorithm: rtn (round to nearest), gptq (calibrated on calibrationSamples rows of the "
            "job's own data) or hqq (half-quadratic, no data; not on CPUExecutionProvider, whose kernel "
            "runs its float zero points slowly)."
        ),
    )
    lm_head_int8: bool = Field(
        default=False,
        description=(
            "Keep the output layer in int8 rather than int4. Off by default: int4 shares its weights "
            "with the embedding table (smaller) and decodes faster; turn it on if the int4 head "
            "costs accuracy on your task (the layer most sensitive to quantization)."
        ),
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
        description="Rows calibrating int8Mode static's activation ranges and int4Algorithm gptq.",
    )


def _provider_precision_rule() -> str:
    """CEL: the precision is one the provider can run (from the provider table)."""
    table = ", ".join(
        f"'{provider}': [{', '.join(repr(p) for p in providers.precisions(provider))}]"
        for provider in providers.PROVIDERS
    )
    return f"self.precision in {{{table}}}[self.provider]"


# Where an algorithm is named, and its default: int4Algorithm for int4, int8Mode for int8.
_ALGORITHM_FIELDS = {"int4": ("int4Algorithm", "rtn"), "int8": ("int8Mode", "weightOnly")}


def _algorithm_rules() -> list[tuple[str, str]]:
    """CEL: one rule per algorithm the table refuses where its precision runs (hqq on CPU)."""
    rules = []
    for provider in providers.PROVIDERS:
        for precision, (field, default) in _ALGORITHM_FIELDS.items():
            for algorithm, why in providers.refused_algorithms(provider, precision).items():
                chosen = (
                    f"(has(self.quantization) && has(self.quantization.{field}) "
                    f"? self.quantization.{field} : '{default}')"
                )
                rules.append(
                    (
                        f"self.provider != '{provider}' || self.precision != '{precision}' "
                        f"|| {chosen} != '{algorithm}'",
                        why,
                    )
                )
    return rules


class TargetRuntime(SpecModel):
    """onnxruntime settings written into the target's genai_config.json, so that they travel with it.

    A user who loads the folder with plain ``onnxruntime_genai.Model`` gets these settings.  A
    thread count is written only when asked: it belongs to the machine that serves the model,
    which slmops' own loaders (serve, generate, chat, the job's evaluation) size where they run.
    """

    threads: int | None = Field(
        default=None,
        ge=0,
        le=1024,
        description=(
            "Intra-op threads written into the target for whoever loads it. Default: none -- slmops' "
            "loaders use the CPUs they may use where they run (a pod's CPU limit), plain "
            "onnxruntime_genai.Model runs it with onnxruntime-genai's own thread setup (about one "
            "thread's speed, measured on 2 vCPUs); 0 writes onnxruntime's default (one thread per "
            "core of the loading machine: twice as fast there, but blind to a pod's CPU limit); a "
            "count fits a fixed pod size."
        ),
    )
    spin: bool = Field(
        default=True,
        description=(
            "Let idle pool threads spin between kernels (fastest decode: a token is hundreds of short "
            "kernels); false yields the CPUs to other processes between kernels."
        ),
    )


class OptimizeTarget(SpecModel):
    """One optimized model: an execution provider and a precision."""

    model_config = cel_rules(
        (_provider_precision_rule(), "this provider cannot run this precision (see the provider table)"),
        *_algorithm_rules(),
    )

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
    runtime: TargetRuntime = Field(
        default_factory=TargetRuntime, description="onnxruntime settings baked into genai_config.json."
    )

    @property
    def calibrated(self) -> bool:
        """Whether building this target needs calibration rows (static int8, GPTQ int4)."""
        q = self.quantization
        return (self.precision == "int8" and q.int8_mode == "static") or (
            self.precision == "int4" and q.int4_algorithm == "gptq"
        )

    @property
    def algorithm(self) -> str:
        """The table's algorithm column: int4Algorithm for int4, int8Mode for int8, empty otherwise."""
        if self.precision == "int4":
            return self.quantization.int4_algorithm
        if self.precision == "int8":
            return self.quantization.int8_mode
        return ""

    @property
    def int4_block_size(self) -> int:
        """Weights per int4 scale: ``quantization.int4BlockSize``, else the provider's default
        for a merged target or for one whose adapters stay separate."""
        if self.quantization.int4_block_size:
            return self.quantization.int4_block_size
        info = providers.PROVIDERS[self.provider]
        return info.int4_block_size if self.merge_adapter else info.int4_block_size_separate

    @property
    def int4_output_block_size(self) -> int:
        """Weights per int4 scale in the output layer (and the embedding table tied to it):
        ``quantization.int4BlockSize``, else the provider's merged default even where adapters
        stay separate, since LoRA adapts no output layer (steps/optimize/output_layer.py)."""
        if self.quantization.int4_block_size:
            return self.quantization.int4_block_size
        return providers.PROVIDERS[self.provider].int4_block_size

    @property
    def recipe(self) -> providers.Recipe:
        """How this target is made (the provider table's row)."""
        return providers.recipe(self.provider, self.precision, self.algorithm)

    @model_validator(mode="after")
    def _check_provider_precision(self) -> OptimizeTarget:
        row = self.recipe
        if row.supported:
            return self
        supported = providers.precisions(self.provider)
        if self.precision in supported:  # the precision runs, not with this algorithm
            raise ValueError(f"target {self.name!r}: {row.why_not}")
        raise ValueError(
            f"target {self.name!r}: {self.provider} cannot run {self.precision} ({row.why_not}); "
            f"supported: {', '.join(sorted(supported))}"
        )


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
        default_factory=lambda: list(DEFAULT_METRICS),
        min_length=1,
        max_length=6,
        description="Metrics to compute per target.",
    )
    match: Literal["exact", "startsWith"] = Field(
        default="exact", description="How accuracy compares answers."
    )
    max_new_tokens: int = Field(default=16, ge=1, le=4096, description="Token budget of generated answers.")
    max_samples: int | None = Field(
        default=128, ge=1, le=MAX_SAMPLES, description="Evaluate at most this many rows."
    )
    gates: Gates = Field(default_factory=Gates, description="Gates relative to the fine-tuned PyTorch model.")

    @model_validator(mode="after")
    def _check_answers(self) -> OptimizeEvaluationSpec:
        """accuracy, rouge and bleu compare generated answers with expected ones: a textTemplate has none."""
        if self.dataset is None or not self.dataset.text_template:
            return self
        needs_answer = [m for m in self.metrics if m in ANSWER_METRICS]
        if needs_answer and "metrics" in self.model_fields_set:
            raise ValueError(
                f"metrics {', '.join(needs_answer)} compare generated answers with the expected ones, and "
                "dataset.textTemplate has no answer: use promptTemplate+completionTemplate or chatTemplate, "
                "or drop them from metrics"
            )
        # The default list asks for them; without answers it measures what it can.
        self.metrics = [m for m in self.metrics if m not in ANSWER_METRICS] or ["perplexity"]
        return self


class OptimizeJobSpec(JobSpecBase):
    """Convert a model to ONNX and optimize it for one or more execution providers."""

    model_config = cel_rules(
        (
            "self.targets.all(t, self.targets.filter(u, u.name == t.name).size() == 1)",
            "target names must be unique",
        ),
        (
            "!has(self.source.adapters) || size(self.source.adapters) < 2 "
            "|| self.targets.all(t, has(t.mergeAdapter) && !t.mergeAdapter)",
            "several adapters cannot be merged into one model; set mergeAdapter: false on every target",
        ),
        (
            "!has(self.serve) || self.targets.exists(t, t.provider == 'CPUExecutionProvider' "
            "&& (!has(self.serve.target) || t.name == self.serve.target))",
            "serve.target must name a CPUExecutionProvider target of targets (the serving runtime runs on CPU)",
        ),
    )

    source: OptimizeSource = Field(description="The model (and adapters) to optimize.")
    targets: list[OptimizeTarget] = Field(
        min_length=1, max_length=32, description="One optimized model per target."
    )
    evaluation: OptimizeEvaluationSpec = Field(
        default_factory=OptimizeEvaluationSpec, description="Evaluation of every target."
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Compute for the conversion.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Where artifacts are written.")
    serve: ServeSpec | None = Field(
        default=None,
        description="Serve a target with KServe once the job succeeded: an InferenceService owned by the job.",
    )

    def served_target(self) -> OptimizeTarget | None:
        """The target ``serve`` puts behind KServe: the one named, else -- as ``slmops serve``
        picks -- the first the runtime runs that keeps its adapters separate (one base, each
        adapter a model id), else the first it runs."""
        if self.serve is None:
            return None
        runnable = [t for t in self.targets if t.provider == SERVED_PROVIDER]
        if self.serve.target is not None:
            return next((t for t in runnable if t.name == self.serve.target), None)
        return next((t for t in runnable if not t.merge_adapter), runnable[0] if runnable else None)

    @model_validator(mode="after")
    def _check_served_target(self) -> OptimizeJobSpec:
        if self.serve is not None and self.served_target() is None:
            which = f"{self.serve.target!r} is not" if self.serve.target else "there is no"
            raise ValueError(
                f"serve.target: {which} a {SERVED_PROVIDER} target of targets (the serving runtime runs on CPU)"
            )
        return self

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

    @model_validator(mode="after")
    def _check_adapter_answers(self) -> OptimizeJobSpec:
        """As for evaluation.dataset: answer metrics asked for by name need answers in every adapter's data."""
        named = [m for m in self.evaluation.metrics if m in ANSWER_METRICS]
        if not named or "metrics" not in self.evaluation.model_fields_set:
            return self  # the default list: each adapter measures what its data allows
        for index, ref in enumerate(self.source.adapter_refs()):
            dataset = ref.evaluation.dataset if ref.evaluation else None
            if dataset is not None and dataset.text_template:
                raise ValueError(
                    f"{self.source.adapter_field(index)}.evaluation.dataset: metrics {', '.join(named)} compare "
                    "generated answers with the expected ones, and its textTemplate has no answer"
                )
        return self
