"""The demo, for real: SmolLM2-135M-Instruct learns the tone task (opt-in: ``--slow``).

Needs the demo model folder (``scripts/prepare_demo_model.sh``, which ``make demo`` runs).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

MODEL = REPO / ".cache" / "models" / "SmolLM2-135M-Instruct"


@pytest.mark.slow
def test_demo_fine_tune_beats_the_base_model(tmp_path):
    if not (MODEL / "config.json").exists():
        subprocess.run([str(REPO / "scripts" / "prepare_demo_model.sh")], check=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "slmops_operator.cli.main",
            "run",
            "examples/finetune-smollm2.yaml",
            "--runs-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "smollm2-tone" / "metrics.json").read_text())
    evaluation = metrics["evaluation"]
    assert evaluation["finetuned"]["accuracy"] >= 0.85
    assert evaluation["base"]["accuracy"] <= 0.10
    assert "accuracy, fine-tuned" in proc.stdout
