"""Running the real demo files through the CLI, as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

MODEL = REPO / ".cache" / "models" / "SmolLM2-135M-Instruct"


def run_examples(
    *files: str, runs_dir: Path, timeout: int, engine: str = "local"
) -> subprocess.CompletedProcess:
    """``slmops run FILES --runs-dir RUNS --engine E`` from the repo root, preparing the demo model if needed."""
    if not (MODEL / "config.json").exists():
        subprocess.run([str(REPO / "scripts" / "prepare_demo_model.sh")], check=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "slmops_operator.cli.main",
            "run",
            *files,
            "--runs-dir",
            str(runs_dir),
            "--engine",
            engine,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
