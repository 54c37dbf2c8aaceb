"""The optimize demo, for real: SmolLM2 fine-tuned, then int4/int8 ONNX with gates (opt-in: ``--slow``)."""

from __future__ import annotations

import json

import pytest

from tests.slow.helpers import run_examples


@pytest.mark.slow
def test_fine_tune_then_optimize_passes_the_gates(tmp_path):
    run_examples(
        "examples/01-finetune-lora.yaml", "examples/08-optimize-cpu.yaml", runs_dir=tmp_path, timeout=3600
    )
    doc = json.loads((tmp_path / "smollm2-tone-cpu" / "metrics.json").read_text())
    reference = doc["reference"]["finetuned_pytorch"]["accuracy"]
    for name in ("cpu-int4", "cpu-int4-adapter", "cpu-int8"):
        assert doc["targets"][name]["metrics"]["accuracy"] >= reference - 0.02, name
    assert (tmp_path / "smollm2-tone-cpu" / "manifest.json").exists()
