"""What the training processes are asked to do, and what they report back (JSON files)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from slmops_pipelines.specs import FineTuneJobSpec


class TrainRequest(BaseModel):
    spec: FineTuneJobSpec
    model_path: Path  # local folder of the base model
    data_dir: Path  # output of data prep
    work_dir: Path  # checkpoints/, adapter/ or model/, tensorboard/, logs/

    @property
    def checkpoints_dir(self) -> Path:
        return self.work_dir / "checkpoints"

    @property
    def events_path(self) -> Path:
        return self.work_dir / "logs" / "events.jsonl"

    @property
    def error_path(self) -> Path:
        return self.work_dir / "logs" / "train_error.json"

    @property
    def result_path(self) -> Path:
        return self.work_dir / "logs" / "train_result.json"

    @property
    def stop_path(self) -> Path:
        """Written by the parent on SIGTERM: save the step reached and stop (see :mod:`.preemption`)."""
        return self.work_dir / "logs" / "stop-requested"

    @property
    def preempted_path(self) -> Path:
        """Written by rank 0 when it stopped on request: the step whose checkpoint it saved."""
        return self.work_dir / "logs" / "preempted.json"


class TrainResult(BaseModel):
    global_step: int
    total_steps: int
    world_size: int
    gpus: int = 0  # GPUs the run trained on, all nodes together (one per process on GPUs)
    resumed_from_step: int | None = None
    stopped_early: bool = False
    train_loss: float | None = None
    eval_loss: float | None = None
    train_runtime_s: float
    seconds_per_step: float | None = None
    tokens_seen: int
    # Token positions the steps ran, all processes: padding included, a shared prefix once
    # (steps/train/shared_prefix.py).  Fewer than tokens_seen where rows share a prefix.
    positions_computed: int | None = None
    tokens_per_second: float | None = None
    peak_memory_mb: float
    trainable_parameters: int
    total_parameters: int
    output: str  # "adapter" or "model"
    precision: str = "fp32"  # what training.precision resolved to on this node (auto: bf16 or fp32)
    log_history: list[dict]
