"""Progress of a running job, in the shape of the resources' ``status.progress``.

The engines report stages and training events (see :mod:`slmops_pipelines.local.reporting`);
:class:`ProgressTracker` folds them into one small dict -- stage, step, total steps,
percent, latest losses and an ETA from the observed step rate -- that the operator copies
into ``status.progress`` whatever ran the job: the local backend's worker writes it to its
state file, the KFP train step to ``.slmops/progress.json`` in the output location.
"""

from __future__ import annotations

import json
import time
from typing import Any

PROGRESS_KEY = ".slmops/progress.json"


class ProgressTracker:
    def __init__(self) -> None:
        self.progress: dict[str, Any] = {"stage": "starting"}
        self._train_started: float | None = None
        self._first_step = 0

    def stage(self, name: str, message: str = "") -> None:
        self.progress = {**self.progress, "stage": name, **({"message": message} if message else {})}

    def event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "train_begin":
            self._train_started, self._first_step = time.time(), int(event.get("step") or 0)
            self.progress = {
                **self.progress,
                "step": self._first_step,
                "totalSteps": event.get("total_steps"),
            }
        elif kind == "step":
            step = int(event["step"])
            total = event.get("total_steps") or self.progress.get("totalSteps")
            self.progress = {**self.progress, "step": step, "totalSteps": total}
            if total and self._train_started and step > self._first_step:
                seconds_per_step = (time.time() - self._train_started) / (step - self._first_step)
                self.progress["etaSeconds"] = int(seconds_per_step * (total - step))
                self.progress["percent"] = int(100 * step / total)
        elif kind == "log" and "loss" in event:
            self.progress = {**self.progress, "loss": float(event["loss"])}
        elif kind in ("log", "evaluate") and "eval_loss" in event:
            self.progress = {**self.progress, "evalLoss": float(event["eval_loss"])}

    def trials(self, counts: dict[str, Any]) -> None:
        """A search's trials so far (total, done, running, pruned, failed, bestTrial, bestValue)."""
        self.progress = {**self.progress, "trials": {k: v for k, v in counts.items() if v is not None}}


class StoredProgress:
    """Write a tracker's progress into an artifact store now and then (and on important events)."""

    def __init__(self, store, *, interval_s: float = 10.0) -> None:
        self.store, self.interval_s = store, interval_s
        self.tracker = ProgressTracker()
        self._last = 0.0

    def stage(self, name: str, message: str = "") -> None:
        self.tracker.stage(name, message)
        self.flush()

    def event(self, event: dict) -> None:
        self.tracker.event(event)
        if (
            event.get("event") in ("train_begin", "train_end", "save")
            or time.time() - self._last >= self.interval_s
        ):
            self.flush()

    def flush(self) -> None:
        try:
            self.store.write_text(PROGRESS_KEY, json.dumps(self.tracker.progress))
        except Exception as exc:  # progress is best effort: never fail training over it
            print(f"[slmops] could not write progress: {exc}", flush=True)
        self._last = time.time()
