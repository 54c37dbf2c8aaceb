"""training.precision auto: bf16 where the node computes it fast (adapter methods), fp32 elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmops_pipelines.specs import FineTuneJobSpec
from slmops_pipelines.steps.train import precision as precision_module
from slmops_pipelines.steps.train.precision import (
    CPU_BF16_ATTENTION,
    attention_implementation,
    cpu_has_fast_bf16,
    resolve_precision,
    with_resolved_precision,
)


def spec(method: str = "lora", precision: str | None = None) -> FineTuneJobSpec:
    training = {"precision": precision} if precision else {}
    return FineTuneJobSpec.model_validate(
        {
            "model": {"uri": "hf://org/model"},
            "dataset": {"uri": "hf://org/data", "promptTemplate": "{q}", "completionTemplate": "{a}"},
            "method": method,
            "training": training,
        }
    )


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: some CPU\nflags\t\t: fpu sse2 avx2 {flags}\n")
    return path


def test_auto_is_the_default():
    assert spec().training.precision == "auto"


@pytest.mark.parametrize(
    ("flags", "fast"),
    [("avx512f amx_tile amx_bf16", True), ("avx512f avx512_bf16", True), ("avx512f", False)],
)
def test_bf16_matrix_instructions_are_read_from_cpuinfo(tmp_path, flags, fast):
    assert cpu_has_fast_bf16(cpuinfo(tmp_path, flags)) is fast


def test_without_cpuinfo_the_cpu_is_not_assumed_fast(tmp_path):
    assert cpu_has_fast_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize(
    ("method", "fast_cpu", "expected"),
    [
        ("lora", True, "bf16"),
        ("dora", True, "bf16"),
        ("lora", False, "fp32"),
        ("full", True, "fp32"),  # trainable weights: fp32 unless asked
        ("qlora", True, "fp32"),
    ],
)
def test_auto_resolves_per_method_and_cpu(monkeypatch, method, fast_cpu, expected):
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: fast_cpu)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_precision(spec(method)) == expected
    resolved = with_resolved_precision(spec(method))
    assert resolved.training.precision == expected and resolved.method == method


def test_an_explicit_precision_is_kept(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: True)
    assert resolve_precision(spec(precision="fp32")) == "fp32"
    assert resolve_precision(spec(method="full", precision="bf16")) == "bf16"


def test_cpu_bf16_attention_computes_what_sdpa_computes(tiny_model):
    """The fp32-attention variant is a faster route to the same numbers, not another model."""
    import torch
    from transformers import AutoModelForCausalLM

    assert attention_implementation(spec(precision="fp32")) == "sdpa"
    name = attention_implementation(spec(precision="bf16"))
    assert name == CPU_BF16_ATTENTION
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    logits = {}
    for implementation in ("sdpa", name):
        model = AutoModelForCausalLM.from_pretrained(
            tiny_model, dtype=torch.float32, attn_implementation=implementation
        )
        with torch.no_grad():
            logits[implementation] = model(input_ids=ids).logits
    torch.testing.assert_close(logits["sdpa"], logits[name], rtol=1e-4, atol=1e-4)


def test_the_cpu_bf16_attention_masks_left_padding(tiny_model):
    """Registered with transformers' mask functions too: a padded row answers as it does alone."""
    import torch
    from transformers import AutoModelForCausalLM

    name = attention_implementation(spec(precision="bf16"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=name)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    padded = torch.tensor([[0, 0, 1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        alone = model(input_ids=ids).logits[0, -1]
        left = model(
            input_ids=padded,
            attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]]),
            position_ids=torch.tensor([[0, 0, 0, 1, 2, 3, 4, 5]]),
        ).logits[0, -1]
    torch.testing.assert_close(left, alone, rtol=1e-4, atol=1e-4)
