"""What each ONNX Runtime execution provider can build and run: one table, read by everything.

Two tables, and no chain of ifs anywhere else:

* :data:`PROVIDERS`: per execution provider, the model builder's ``-e`` value, the name
  onnxruntime-genai's config uses, and the image family its targets are built and measured
  in (``cuda``: GPU pods in the CUDA image; ``cpu``: everything else);
* :data:`RECIPES`: per (provider, precision, algorithm), how a target is made -- the
  builder's precision and the post-pass that quantizes its graph -- or why it cannot be.

The spec's validator and its CEL rule (the API server), the webhook, placement (which pods
get GPUs, which image) and export (the builder's arguments, then the post-pass) all read
them.  The "algorithm" is ``quantization.int4Algorithm`` for int4, ``quantization.int8Mode``
for int8, and empty for fp32/fp16.

Importing this costs nothing: plain data, no onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ImageFamily = Literal["cpu", "cuda"]
# How the builder's graph is quantized afterwards (slmops_pipelines.steps.optimize.export).
PostPass = Literal["none", "int8-nbits", "int8-dynamic", "int8-static", "int4-hqq", "int4-gptq"]


@dataclass(frozen=True)
class ProviderInfo:
    name: str  # ONNX Runtime's name
    builder_ep: str  # the model builder's -e value
    genai_name: str  # the name onnxruntime-genai's config uses
    family: ImageFamily  # the image (and, for cuda, the GPUs) its targets are built and measured with
    int4_block_size: int = 32  # weights per int4 scale where the spec sets none (the builder's default)
    # ... and where adapters stay separate: an adapter trained on the unquantized base sits on
    # the int4 base's rounding as it is, where a merged one is rounded with it.  The layers
    # only: the output layer, which LoRA does not adapt, keeps int4_block_size
    # (steps/optimize/output_layer.py).
    int4_block_size_separate: int = 32
    # Projections that read one input (gate/up; q/k/v where adapters keep them apart) as one
    # MatMulNBits each: steps/optimize/fuse.py.  Measured on the CPU only.
    fuse_projections: bool = False
    # The output layer for each row's last real token only (steps/optimize/logits.py): needs an
    # attention mask as long as the tokens so far, which graph capture on GPUs does not give.
    prune_prefill_logits: bool = False


PROVIDERS: dict[str, ProviderInfo] = {
    # Block 64 on the CPU: 1.16x-1.39x the decode of the builder's default int4 (block 32) at
    # equal threads in two runs, at 100% accuracy and perplexity 1.015 on the demo
    # (bench/int4_sweep.py, bench/optimize.py: docs/benchmarks.md); half the scales to read.
    # Not with separate adapters: the demo's adapter on a block-64 base lost 10-11 points
    # (89-90% with RTN, 85% with GPTQ) where block 32 lost 3 and the merged model 1.
    "CPUExecutionProvider": ProviderInfo(
        "CPUExecutionProvider",
        "cpu",
        "cpu",
        "cpu",
        int4_block_size=64,
        int4_block_size_separate=32,
        fuse_projections=True,
        prune_prefill_logits=True,
    ),
    "CUDAExecutionProvider": ProviderInfo("CUDAExecutionProvider", "cuda", "cuda", "cuda"),
    "DmlExecutionProvider": ProviderInfo("DmlExecutionProvider", "dml", "dml", "cpu"),
    "TensorrtExecutionProvider": ProviderInfo(
        "TensorrtExecutionProvider", "NvTensorRtRtx", "NvTensorRtRtx", "cuda"
    ),
    # OpenVINO runs the CPU graph through its own provider (set in genai_config.json).
    "OpenVINOExecutionProvider": ProviderInfo("OpenVINOExecutionProvider", "cpu", "OpenVINO", "cpu"),
}


@dataclass(frozen=True)
class Recipe:
    """How one (provider, precision, algorithm) target is made, or why it cannot be."""

    builder_precision: str = ""  # the builder's -p: the precision itself, or fp32 for a post-pass
    post_pass: PostPass = "none"
    why_not: str = ""  # set: refused, with this reason

    @property
    def supported(self) -> bool:
        return not self.why_not


def _made(precision: str, post_pass: PostPass = "none") -> Recipe:
    return Recipe(builder_precision=precision, post_pass=post_pass)


def _refused(why: str) -> Recipe:
    return Recipe(why_not=why)


NO_KERNELS = "no kernels for it"
# Measured on the demo (docs/benchmarks.md): onnxruntime's HQQ writes float zero points, which its
# CPU MatMulNBits kernel runs through the generic path that dequantizes every weight at every call.
HQQ_ON_CPU = (
    "int4Algorithm hqq cannot run fast on CPUExecutionProvider: onnxruntime's HQQ writes float zero "
    "points, which its CPU kernel dequantizes at every call (5 tokens/s against 130 for rtn, and 72% "
    "accuracy against 100% on the demo); use rtn or gptq"
)
_FP16_ON_CPU = "CPU kernels for fp16 are missing or slower than fp32; use fp32, int8 or int4"

# The builder makes fp32, fp16 and rtn int4 itself; int8 and the other int4 algorithms are
# onnxruntime's quantizers over its fp32 graph.
_INT4 = {"rtn": _made("int4"), "hqq": _made("fp32", "int4-hqq"), "gptq": _made("fp32", "int4-gptq")}
_INT8 = {
    "weightOnly": _made("fp32", "int8-nbits"),
    "dynamic": _made("fp32", "int8-dynamic"),
    "static": _made("fp32", "int8-static"),
}


_NO_INT8 = {
    "CUDAExecutionProvider": "ONNX Runtime's CUDA provider has no int8 MatMul kernels for LLMs; use int4 or fp16",
    "DmlExecutionProvider": "DirectML has no int8 LLM kernels; use int4 or fp16",
    "TensorrtExecutionProvider": "int8 on TensorRT needs calibration caches the model builder does not make",
}
# The exceptions to "every provider builds every precision with every algorithm".
_REFUSED: dict[tuple[str, str, str], str] = {
    ("CPUExecutionProvider", "fp16", ""): _FP16_ON_CPU,
    ("CPUExecutionProvider", "int4", "hqq"): HQQ_ON_CPU,
    ("TensorrtExecutionProvider", "fp32", ""): "TensorRT LLM engines are built in fp16 or int4",
    **{(provider, "int8", mode): why for provider, why in _NO_INT8.items() for mode in _INT8},
}


def _rows() -> dict[tuple[str, str, str], Recipe]:
    every = {("fp32", ""): _made("fp32"), ("fp16", ""): _made("fp16")}
    every |= {("int8", mode): row for mode, row in _INT8.items()}
    every |= {("int4", algorithm): row for algorithm, row in _INT4.items()}
    return {
        (provider, precision, algorithm): _refused(_REFUSED[key]) if key in _REFUSED else row
        for provider in PROVIDERS
        for (precision, algorithm), row in every.items()
        if (key := (provider, precision, algorithm))
    }


RECIPES: dict[tuple[str, str, str], Recipe] = _rows()


def recipe(provider: str, precision: str, algorithm: str = "") -> Recipe:
    """The row of the table; a refusal for a combination it does not list."""
    return RECIPES.get(
        (provider, precision, algorithm if precision in ("int4", "int8") else ""), _refused(NO_KERNELS)
    )


def precisions(provider: str) -> list[str]:
    """The precisions ``provider`` runs with at least one algorithm, in table order."""
    found: list[str] = []
    for (name, precision, _), row in RECIPES.items():
        if name == provider and row.supported and precision not in found:
            found.append(precision)
    return found


def refused_algorithms(provider: str, precision: str) -> dict[str, str]:
    """Algorithm -> reason, for the algorithms refused where the precision itself runs."""
    if precision not in precisions(provider):
        return {}
    return {
        algorithm: row.why_not
        for (name, prec, algorithm), row in RECIPES.items()
        if name == provider and prec == precision and not row.supported
    }


def image_family(provider: str) -> ImageFamily:
    """``cuda`` for the GPU providers (their pods get GPUs, in the CUDA image); ``cpu`` otherwise."""
    return PROVIDERS[provider].family
