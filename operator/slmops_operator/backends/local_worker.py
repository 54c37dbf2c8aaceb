"""One job of the local backend: ``python -m slmops_operator.backends.local_worker REQUEST.json STATE.json``.

Runs the job with the local engine (the same stages as every engine) in its own process
and session, and keeps ``STATE.json`` current: the phase, the progress of training (step,
losses, ETA) and, at the end, the artifacts and the summary metrics, or the failure with
its reason and spec field.  The operator only reads that file.

SIGTERM (a cancelled or deleted job) interrupts the engine, which stops its trainers; the
state becomes Cancelled.  The process is the leader of its own session so that the
operator can signal it with its children, and so that it survives an operator restart:
the new operator adopts it by its pid.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

WRITE_INTERVAL_S = 1.0


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically: the operator never reads half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


class StateReporter:
    """The engine's Reporter, writing progress into the state file (at most once a second)."""

    def __init__(self, path: Path, base: dict[str, Any]) -> None:
        from slmops_pipelines import jobs

        self.path, self.base = path, base
        self.tracker = jobs.progress_tracker()
        self.last_write = 0.0

    @property
    def progress(self) -> dict[str, Any]:
        return self.tracker.progress

    def _write(self, force: bool = False) -> None:
        if force or time.time() - self.last_write >= WRITE_INTERVAL_S:
            write_state(self.path, {**self.base, "phase": "Running", "progress": self.progress})
            self.last_write = time.time()

    def stage(self, name: str, message: str) -> None:
        self.tracker.stage(name, message)
        self._write(force=True)

    def info(self, message: str) -> None:
        self._write()

    def search_progress(self, counts: dict) -> None:
        self.tracker.trials(counts)
        self._write(force=True)

    def training_event(self, event: dict) -> None:
        self.tracker.event(event)
        self._write(force=event.get("event") in ("train_begin", "train_end", "save"))


def run(request: dict[str, Any], state_path: Path) -> int:
    from slmops_pipelines import jobs

    try:  # the operator counts this run's restarts in the file: keep the count
        restarts = int(json.loads(state_path.read_text()).get("restarts") or 0)
    except (OSError, ValueError):
        restarts = 0
    base = {"pid": os.getpid(), "runName": request["runName"], "restarts": restarts}
    reporter = StateReporter(state_path, base)
    reporter.stage("starting", f"{request['kind']} {request['namespace']}/{request['name']}")
    kind = jobs.job_kind(request["kind"])
    try:
        run = kind.new_run(
            request["name"],
            kind.spec_class.model_validate(request["spec"]),
            default_output=request["outputUri"],  # the operator resolved it (JobRequest.output_uri)
            namespace=request["namespace"],
            source_uri=request.get("sourceUri") or "",
            uid=request.get("uid", ""),
        )
        outcome = kind.run_local(run, reporter=reporter)
    except KeyboardInterrupt:
        write_state(state_path, {**base, "phase": "Cancelled", "message": "cancelled", "reason": "Cancelled"})
        return 130
    except jobs.JobError as exc:
        write_state(
            state_path,
            {**base, "phase": "Failed", **exc.to_dict(), "progress": reporter.progress},
        )
        return 2 if isinstance(exc, jobs.InputError) else 1
    except Exception as exc:  # a bug, not a bad input: say what it was, keep the traceback in the log
        import traceback

        traceback.print_exc()
        write_state(
            state_path,
            {
                **base,
                "phase": "Failed",
                "message": f"{type(exc).__name__}: {exc}"[:1000],
                "reason": "InternalError",
            },
        )
        return 1
    write_state(
        state_path,
        {
            **base,
            "phase": "Succeeded",
            "message": "already complete" if outcome.already_complete else "done",
            "artifacts": {"output": outcome.output_uri, **outcome.artifacts},
            "metrics": kind.summary_metrics(outcome.metrics),
            "usage": jobs.usage_status(outcome.metrics),
            "tracking": jobs.tracking_status(outcome.metrics),
            "progress": {**reporter.progress, "stage": "done", "percent": 100},
        },
    )
    return 0


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(
            "usage: python -m slmops_operator.backends.local_worker REQUEST.json STATE.json", file=sys.stderr
        )
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    request = json.loads(Path(argv[0]).read_text())
    return run(request, Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
