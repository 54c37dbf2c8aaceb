"""The container images the components run in (built from ``images/``).

Tags are exact and follow the package version, so a compiled pipeline names the images its
code was released with; ``SLMOPS_IMAGE_REGISTRY`` points a build at a private registry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata

DEFAULT_REGISTRY = "ghcr.io/slmops"


def package_version() -> str:
    try:
        return metadata.version("slmops")
    except metadata.PackageNotFoundError:  # running from a source tree without an install
        return "0.1.0"


@dataclass(frozen=True)
class Images:
    """Image references for the component families."""

    trainer: str  # data prep, training, fine-tune evaluation and publishing (torch, peft)
    optimizer: str  # ONNX export, quantization and measurement (onnxruntime, onnxruntime-genai)
    # The optimize targets of GPU providers (CUDA, TensorRT): onnxruntime-gpu, onnxruntime-genai-cuda.
    optimizer_cuda: str

    @classmethod
    def default(cls, registry: str | None = None, version: str | None = None) -> Images:
        registry = (registry or os.environ.get("SLMOPS_IMAGE_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")
        version = version or package_version()
        return cls(
            trainer=f"{registry}/slmops-trainer:{version}",
            optimizer=f"{registry}/slmops-optimizer:{version}",
            optimizer_cuda=f"{registry}/slmops-optimizer-cuda:{version}",
        )

    @classmethod
    def only(cls, image: str) -> Images:
        """One image for every family: a job's ``spec.image``."""
        return cls(trainer=image, optimizer=image, optimizer_cuda=image)
