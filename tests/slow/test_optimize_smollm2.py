"""The optimize demo, for real: SmolLM2 fine-tuned, then int4/int8 ONNX with gates (opt-in: ``--slow``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.slow.test_demo_smollm2 import MODEL


@pytest.mark.slow
def test_fine_tune_then_optimize_passes_the_gates(tmp_path):
    if not (MODEL / "config.json").exists():
        subprocess.run([str(REPO / "scripts" / "prepare_demo_model.sh")], check=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "slmops_operator.cli.main",
            "run",
            "examples/finetune-smollm2.yaml",
            "examples/optimize-smollm2.yaml",
            "--runs-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "smollm2-tone-cpu" / "metrics.json").read_text())
    reference = doc["reference"]["finetuned_pytorch"]["accuracy"]
    for name in ("cpu-int4", "cpu-int4-adapter", "cpu-int8"):
        assert doc["targets"][name]["metrics"]["accuracy"] >= reference - 0.02, name
    assert (tmp_path / "smollm2-tone-cpu" / "manifest.json").exists()
