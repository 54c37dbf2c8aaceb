"""The demo, for real: SmolLM2-135M-Instruct learns the tone task (opt-in: ``--slow``).

Needs the demo model folder (``scripts/prepare_demo_model.sh``, which ``make demo`` runs).
"""

from __future__ import annotations

import json

import pytest

from tests.slow.helpers import run_examples


@pytest.mark.slow
def test_demo_fine_tune_beats_the_base_model(tmp_path):
    proc = run_examples("examples/01-finetune-lora.yaml", runs_dir=tmp_path, timeout=1800)
    metrics = json.loads((tmp_path / "smollm2-tone" / "metrics.json").read_text())
    evaluation = metrics["evaluation"]
    assert evaluation["finetuned"]["accuracy"] >= 0.85
    assert evaluation["base"]["accuracy"] <= 0.10
    assert "accuracy, fine-tuned" in proc.stdout


@pytest.mark.slow
def test_demo_as_a_kfp_pipeline(tmp_path):
    """The same demo through the compiled KFP pipeline (kfp.local): the same result."""
    run_examples("examples/01-finetune-lora.yaml", runs_dir=tmp_path, timeout=1800, engine="kfp-local")
    out = tmp_path / "smollm2-tone"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluation"]["finetuned"]["accuracy"] >= 0.85
    manifest = json.loads((out / "manifest.json").read_text())
    paths = {entry["path"] for entry in manifest["files"]}
    assert {"adapter/adapter_model.safetensors", "report.html", "data/stats.json"} <= paths
