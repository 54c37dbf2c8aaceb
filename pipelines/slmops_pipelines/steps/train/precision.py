"""``training.precision: auto``: bf16 where this node computes it fast, fp32 elsewhere.

Which precision is fastest is a property of the node the step lands on, not of the job, so
``auto`` is resolved inside the training process:

* a CUDA GPU with bf16 (Ampere and later): bf16;
* a CPU with AMX or AVX-512 BF16 (Sapphire Rapids, Zen 4 and later): bf16.  A 2048x2048
  matmul ran 7x faster in bf16 than in fp32 on such a CPU, and the demo job trains 1.7x
  faster end to end at the same accuracy (docs/benchmarks.md);
* anything else: fp32 (bf16 there is emulated, slower than fp32).

Only for adapter methods (LoRA, DoRA): their base weights are frozen, so they are loaded in
bf16 once instead of being cast at every step, while the adapter and its optimizer stay fp32
(peft keeps adapter weights in fp32).  Full fine-tuning and QLoRA keep what they were given.

On a CPU, attention runs in fp32 even in bf16 training: PyTorch's CPU flash-attention
backward is 5x slower in bf16 than in fp32 (profiled on the demo job), and its inputs are
small.  :func:`attention_implementation` names that variant, registered with transformers'
``AttentionInterface``.
"""

from __future__ import annotations

from pathlib import Path

from slmops_pipelines.specs import FineTuneJobSpec

_BF16_CPU_FLAGS = {"amx_bf16", "avx512_bf16"}
_ADAPTER_METHODS = {"lora", "dora"}
CPU_BF16_ATTENTION = "sdpa_fp32_on_cpu"


def cpu_has_fast_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has bf16 matrix instructions (Linux /proc/cpuinfo flags)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return bool(_BF16_CPU_FLAGS & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


def resolve_precision(spec: FineTuneJobSpec) -> str:
    """The precision this node trains ``spec`` in: fp32, bf16 or fp16 (never auto)."""
    requested = spec.training.precision
    if requested != "auto":
        return requested
    if spec.method not in _ADAPTER_METHODS:
        return "fp32"
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def with_resolved_precision(spec: FineTuneJobSpec) -> FineTuneJobSpec:
    """A copy of ``spec`` whose training.precision is what this node trains in."""
    training = spec.training.model_copy(update={"precision": resolve_precision(spec)})
    return spec.model_copy(update={"training": training})


def attention_implementation(spec: FineTuneJobSpec) -> str:
    """SDPA; in bf16 on a CPU, SDPA computed in fp32 (see the module docstring)."""
    import torch

    if spec.training.precision != "bf16" or torch.cuda.is_available():
        return "sdpa"
    _register_cpu_bf16_attention()
    return CPU_BF16_ATTENTION


def _register_cpu_bf16_attention() -> None:
    import torch
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    def sdpa_in_fp32(module, query, key, value, attention_mask, **kwargs):
        dtype = query.dtype
        with torch.autocast("cpu", enabled=False):
            out, weights = sdpa_attention_forward(
                module, query.float(), key.float(), value.float(), attention_mask, **kwargs
            )
        return out.to(dtype), weights

    AttentionInterface.register(CPU_BF16_ATTENTION, sdpa_in_fp32)
    # The masks SDPA takes: without this, transformers builds none for an unknown name, and a
    # left-padded row would attend to its padding.
    AttentionMaskInterface.register(CPU_BF16_ATTENTION, sdpa_mask)
