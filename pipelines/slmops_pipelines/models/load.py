"""Loading a causal LM and its tokenizer from a resolved folder, the same way in every step."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmops_pipelines.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


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


def load_tokenizer(path: Path | str, **kwargs: Any) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(path, **kwargs)`` with a pad token to batch with.

    Many causal LMs ship without a pad token, and batching needs one; end-of-sequence is the
    usual stand-in (padded positions are masked out of attention and of the labels anyway).
    One function, so that every step (data preparation, training, evaluation, GGUF import)
    pads with the same token.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
