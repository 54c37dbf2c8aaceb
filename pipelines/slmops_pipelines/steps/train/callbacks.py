"""Trainer callbacks: progress events for whoever watches, complete-checkpoint markers, and
saving then stopping on a stop request (see :mod:`.preemption`).

Progress goes to an append-only JSON-lines file written by the main process only.  The
parent (``slmops run``'s progress bar, the operator's local backend, a KFP component) tails
it; a file works across processes, containers and restarts where a pipe would not.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from slmops_pipelines.steps.train.checkpoints import COMPLETE_MARKER


class EventLog:
    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields) -> None:
        if not self.enabled:
            return
        record = {"event": event, "time": time.time(), **fields}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


class ProgressEvents(TrainerCallback):
    """Emit train_begin / step / log / evaluate / save / train_end events."""

    def __init__(self, events: EventLog, *, world_size: int, resumed_from: int | None) -> None:
        self.events = events
        self.world_size = world_size
        self.resumed_from = resumed_from
        self._start = 0.0
        self._start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.time()
        self._start_step = state.global_step
        self.events.emit(
            "train_begin",
            total_steps=state.max_steps,
            world_size=self.world_size,
            resumed_from=self.resumed_from,
            step=state.global_step,
        )

    def on_step_end(self, args, state, control, **kwargs):
        done = state.global_step - self._start_step
        elapsed = time.time() - self._start
        eta = elapsed / done * (state.max_steps - state.global_step) if done else None
        self.events.emit("step", step=state.global_step, total_steps=state.max_steps, eta_seconds=eta)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        fields = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
        self.events.emit("log", step=state.global_step, **fields)

    def on_save(self, args, state, control, **kwargs):
        self.events.emit("save", step=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.events.emit("train_end", step=state.global_step)


class MarkCompleteCheckpoints(TrainerCallback):
    """After the Trainer has saved ``checkpoint-N`` (all ranks done), mark it complete."""

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            (folder / COMPLETE_MARKER).write_text(
                json.dumps({"step": state.global_step, "time": time.time()})
            )


class StopOnRequest(TrainerCallback):
    """Save the current step and stop, on every rank, once any rank was asked to stop."""

    def __init__(self, stop_path: Path) -> None:
        self.stop_path = stop_path
        self.signalled = False
        self.stopped_at: int | None = None
        self.why = "SIGTERM"
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def _asked_here(self) -> bool:
        if self.stop_path.exists():
            with contextlib.suppress(OSError, ValueError):
                self.why = json.loads(self.stop_path.read_text()).get("why", self.why)
            return True
        return self.signalled

    def _asked_anywhere(self, args: Any) -> bool:
        import torch
        import torch.distributed as dist

        asked = self._asked_here()
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return asked
        flag = torch.tensor([1 if asked else 0], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped_at is None and self._asked_anywhere(args):
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_evaluate = False  # no time for it: the grace period is counting
            control.should_training_stop = True
        return control

    def write_preempted(self, path: Path, state: Any) -> None:
        """Rank 0, once the checkpoint is saved: what the parent reports."""
        path.write_text(
            json.dumps({"step": self.stopped_at, "total_steps": state.max_steps, "why": self.why})
        )

    def restore_signal(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
