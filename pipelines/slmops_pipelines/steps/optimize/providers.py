"""Execution providers: the model builder's name for each, and whether this machine runs it.

Building a model for a provider needs no hardware (the builder writes a graph with the
provider's kernels in mind); running it does.  A target whose provider is not available here
is still built, and its evaluation says so instead of failing or pretending.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProviderInfo:
    name: str  # ONNX Runtime's name
    builder_ep: str | None  # the model builder's -e value; None: the builder cannot target it
    genai_name: str  # the name onnxruntime-genai's config uses


PROVIDERS: dict[str, ProviderInfo] = {
    "CPUExecutionProvider": ProviderInfo("CPUExecutionProvider", "cpu", "cpu"),
    "CUDAExecutionProvider": ProviderInfo("CUDAExecutionProvider", "cuda", "cuda"),
    "DmlExecutionProvider": ProviderInfo("DmlExecutionProvider", "dml", "dml"),
    "TensorrtExecutionProvider": ProviderInfo("TensorrtExecutionProvider", "NvTensorRtRtx", "NvTensorRtRtx"),
    # OpenVINO runs the CPU graph through its own provider (set in genai_config.json).
    "OpenVINOExecutionProvider": ProviderInfo("OpenVINOExecutionProvider", "cpu", "OpenVINO"),
}


def available_providers() -> set[str]:
    """Providers whose runtime libraries and devices are present on this machine."""
    import onnxruntime as ort
    import onnxruntime_genai as og

    found = set(ort.get_available_providers())
    checks = {
        "CUDAExecutionProvider": getattr(og, "is_cuda_available", lambda: False),
        "DmlExecutionProvider": getattr(og, "is_dml_available", lambda: False),
        "OpenVINOExecutionProvider": getattr(og, "is_openvino_available", lambda: False),
    }
    for name, check in checks.items():
        try:
            if not check():
                found.discard(name)
        except Exception:  # a probe that fails means: not here
            found.discard(name)
    found.add("CPUExecutionProvider")
    return found
