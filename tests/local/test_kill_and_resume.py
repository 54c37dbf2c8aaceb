"""Kill ``slmops run`` mid-training, run it again: it resumes instead of starting over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import REPO, finetune_manifest


def cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "pipelines"), str(REPO / "operator"), str(REPO)]),
    }
    return subprocess.Popen([sys.executable, "-m", "slmops_operator.cli.main", *args], env=env, **kwargs)


def trainer_processes(marker: str) -> list[int]:
    """PIDs whose command line mentions ``marker`` (our torchrun and its workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_then_rerun_resumes_from_the_last_checkpoint(tiny_model, tmp_path):
    out = tmp_path / "runs"
    manifest = finetune_manifest(
        "resume", tiny_model, training={"maxSteps": 300, "saveSteps": 10, "loggingSteps": 10}
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    work = out / "resume"

    first = cli(
        "run", str(path), "--runs-dir", str(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(
        lambda: list(work.glob("checkpoints/checkpoint-*/.slmops-complete")), 180, "a complete checkpoint"
    )
    first.send_signal(signal.SIGKILL)
    first.wait()
    # The trainers die with their parent (PR_SET_PDEATHSIG): nothing keeps writing.
    wait_for(lambda: not trainer_processes(str(work)), 60, "the orphaned trainers to exit")
    assert not (work / "manifest.json").exists()
    saved = max(
        int(p.parent.name.split("-")[1]) for p in work.glob("checkpoints/checkpoint-*/.slmops-complete")
    )
    assert saved < 300

    second = cli(
        "run", str(path), "--runs-dir", str(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["train"]["resumed_from_step"] >= saved
    assert metrics["train"]["global_step"] == 300
    assert "resuming from checkpoint" in output
    assert (work / "manifest.json").exists()

    third = cli(
        "run", str(path), "--runs-dir", str(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output, _ = third.communicate(timeout=300)
    assert third.returncode == 0 and "nothing to do" in output
