"""Loading a causal LM from a resolved folder, with a clear error for a corrupt one."""

from __future__ import annotations

from pathlib import Path

from slmops_pipelines.errors import InputError


def load_causal_lm(path: Path, *, field: str, trust_remote_code: bool = False, dtype: str = "float32"):
    """``AutoModelForCausalLM.from_pretrained`` that names the field and file when the weights are broken."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # safetensors, torch and json each raise their own kinds for a damaged file
        raise InputError(
            f"cannot load the model in {path} (corrupt or truncated file?): {str(exc)[:300]}", field=field
        ) from exc
