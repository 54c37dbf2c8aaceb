"""Execution providers on this machine: which of them it runs.

What each provider is (the builder's name for it, onnxruntime-genai's, its image family) is
the provider table's (:mod:`slmops_pipelines.specs.providers`, re-exported here).  Building a
model for a provider needs no hardware (the builder writes a graph with the provider's kernels
in mind); running it does.  A target whose provider is not available here
is still built, and its evaluation says so instead of failing or pretending.
"""

from __future__ import annotations

from slmops_pipelines.specs.providers import PROVIDERS, ProviderInfo

__all__ = ["PROVIDERS", "ProviderInfo", "available_providers"]


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
