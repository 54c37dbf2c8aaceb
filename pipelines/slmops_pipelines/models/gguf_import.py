"""Import a GGUF file as a plain, serializable transformers model folder.

transformers can load a GGUF file (``gguf_file=``) and dequantizes it to float weights, but
such a model keeps a GGUF ``quantization_config`` and refuses ``save_pretrained`` ("The model
is quantized with gguf and is not serializable").  We rebuild the same architecture from the
config without that quantization config, copy the dequantized weights into it and save that:
the result is an ordinary model folder (safetensors + tokenizer) that every later step,
including PEFT and the ONNX model builder, loads like any Hub checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from slmops_pipelines.errors import InputError
from slmops_pipelines.models.load import load_tokenizer


def import_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize ``gguf_path`` into ``out_dir`` (written atomically: a crash leaves no half folder)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not gguf_path.is_file():
        raise InputError(f"GGUF file not found: {gguf_path}", field="model.uri")
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = load_tokenizer(folder, gguf_file=name)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # the gguf reader raises many kinds of errors for bad files
        raise InputError(f"cannot read GGUF file {gguf_path}: {exc}", field="model.uri") from exc

    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings show up as a "missing" lm_head; anything else means the copy went wrong.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise InputError(
            f"GGUF weights do not fit the model: missing={missing[:5]}, unexpected={unexpected[:5]}"
        )
    if config.tie_word_embeddings:
        plain.tie_weights()

    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "slmops_source.json").write_text(
        json.dumps({"gguf": str(gguf_path), "dequantized": True}, indent=2)
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir
