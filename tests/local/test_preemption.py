"""SIGTERM mid-training (what a preempted or drained node sends): the step reached is saved, a rerun resumes there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import yaml

from tests.conftest import finetune_manifest
from tests.local.test_kill_and_resume import cli, trainer_processes, wait_for


def steps_reached(work: Path) -> int:
    events = work / "logs" / "events.jsonl"
    if not events.exists():
        return 0
    steps = [json.loads(line).get("step") or 0 for line in events.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def complete_checkpoints(work: Path) -> list[int]:
    return sorted(
        int(p.parent.name.split("-")[1]) for p in work.glob("checkpoints/checkpoint-*/.slmops-complete")
    )


def start(tmp_path: Path, name: str, tiny_model: Path, **resources) -> tuple[Path, Path, subprocess.Popen]:
    out = tmp_path / "runs"
    # saveSteps beyond maxSteps: without the SIGTERM checkpoint nothing would be saved at all.
    manifest = finetune_manifest(
        name, tiny_model, training={"maxSteps": 100, "saveSteps": 1000, "loggingSteps": 5}
    )
    if resources:
        manifest["spec"]["resources"] = resources
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    first = cli(
        "run", str(path), "--runs-dir", str(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return path, out / name, first


def rerun(path: Path, out: Path) -> str:
    second = cli(
        "run", str(path), "--runs-dir", str(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    return output


def test_sigterm_saves_the_step_reached_and_the_rerun_resumes_there(tiny_model, tmp_path):
    path, work, first = start(tmp_path, "preempted", tiny_model)
    wait_for(lambda: steps_reached(work) >= 5, 240, "training to pass step 5")
    first.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    output, _ = first.communicate(timeout=60)
    assert time.monotonic() - sent < 30, "a SIGTERM must end the run well within a grace period"
    assert first.returncode != 0, output
    saved = complete_checkpoints(work)
    assert len(saved) == 1 and 5 <= saved[0] < 100, (saved, output)
    assert f"stopped by SIGTERM at step {saved[0]}" in output and "resume" in output, output
    assert not trainer_processes(str(work))
    assert not (work / "manifest.json").exists()

    output = rerun(path, work.parent)
    assert f"resuming from checkpoint at step {saved[0]}" in output, output
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["train"]["resumed_from_step"] == saved[0]
    assert metrics["train"]["global_step"] == 100


def test_two_processes_agree_on_the_step_they_save_when_one_of_them_is_told_to_stop(tiny_model, tmp_path):
    """Only rank 1 gets SIGTERM (one node of a multi-node run drained): rank 0 saves the same step."""
    path, work, first = start(tmp_path, "preempted-ddp", tiny_model, processesPerNode=2)
    wait_for(lambda: steps_reached(work) >= 5, 300, "training to pass step 5")
    rank1 = [
        pid
        for pid in trainer_processes(str(work))
        if b"RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes()
    ]
    assert rank1, "no rank-1 training process found"
    for pid in rank1:
        os.kill(pid, signal.SIGTERM)
    output, _ = first.communicate(timeout=90)
    assert first.returncode != 0, output
    saved = complete_checkpoints(work)
    assert len(saved) == 1 and 5 <= saved[0] < 100, (saved, output)
    assert f"at step {saved[0]}" in output, output
    checkpoint = work / "checkpoints" / f"checkpoint-{saved[0]}"
    assert (checkpoint / "rng_state_0.pth").exists() and (checkpoint / "rng_state_1.pth").exists()

    output = rerun(path, work.parent)
    assert f"resuming from checkpoint at step {saved[0]}" in output, output
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["train"]["resumed_from_step"] == saved[0] and metrics["train"]["world_size"] == 2
