"""Preemption costs minutes, not the run: on SIGTERM, save the step reached and stop.

A preempted spot node, a drained node or a deleted pod gets SIGTERM, then SIGKILL once the
pod's grace period is over.  Training answers SIGTERM by finishing the optimizer step it is
in, writing a complete checkpoint of it (marked complete and mirrored to the output like
any other, :mod:`.checkpoints`) and exiting; a rerun -- ``slmops run`` again, a KFP retry of
the train step, a restarted PyTorchJob/TrainJob node -- resumes from it and says so.

How the signal travels:

* the parent of torchrun (:mod:`.launch`, PID 1 of a training node's pod) turns SIGTERM into
  a stop request (a file, ``logs/stop-requested``) instead of passing the signal on: torchrun
  would kill its workers 30 s later, whatever they were writing;
* each training process also takes a SIGTERM of its own as a stop request (a signal to the
  whole process group, torchrun passing one on when its parent died);
* at the end of every optimizer step, :class:`.callbacks.StopOnRequest` asks all ranks at once whether
  any of them was asked to stop (one all-reduce of one number, on every node): if one was,
  every rank saves the same step and leaves the loop, so a multi-node run never saves two
  different steps or waits at a collective a stopped rank will never reach;
* rank 0 writes ``logs/preempted.json`` (the step saved) and the parent fails the step with
  the reason ``Preempted``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PREEMPTED_REASON = "Preempted"


def request_stop(path: Path, why: str) -> None:
    """Ask the training processes of this node to save and stop (idempotent)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"why": why, "time": time.time()}))


@contextlib.contextmanager
def sigterm_requests_stop(path: Path) -> Iterator[None]:
    """While training runs, SIGTERM to this (parent) process becomes a stop request.

    A handler the process had already (the operator's local worker cancels its job on
    SIGTERM) runs after the request: it stops the wait, and the trainers, which got the stop
    request, still save their step before torchrun's grace runs out.  Only the main thread
    may install signal handlers; elsewhere SIGTERM keeps its meaning.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        request_stop(path, "SIGTERM")
        if callable(before):
            before(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def preempted_error(path: Path):
    """The JobError a preempted training ends with (``logs/preempted.json`` as rank 0 wrote it)."""
    from slmops_pipelines.errors import JobError

    found = json.loads(path.read_text())
    return JobError(
        f"training stopped by {found.get('why', 'SIGTERM')} at step {found['step']} of {found['total_steps']}: "
        f"a complete checkpoint of that step is saved; run the job again to resume from it",
        reason=PREEMPTED_REASON,
    )
