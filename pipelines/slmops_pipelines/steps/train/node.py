"""One node of a multi-node run: ``python -m slmops_pipelines.steps.train.node STAGING_URI OUTPUT_URI``.

A PyTorchJob or TrainJob starts this in every pod (see
:mod:`slmops_pipelines.kubeflow.distributed`); the engine gives the rendezvous in the
environment.  Each node:

1. reads the staged request (``request.json``: the spec) and the prepared data from
   ``STAGING_URI`` into its own disk, and resolves the base model into its own cache;
2. restores the latest complete checkpoint from ``OUTPUT_URI/checkpoints`` (every rank loads
   it when the Trainer resumes), so a restarted pod or a retried step continues;
3. runs torchrun with ``processesPerNode`` processes, joined to the other nodes; on SIGTERM
   (preemption, drain) every rank saves the same step and the node exits 143, so that the
   engine restarts it and it resumes there (:mod:`.preemption`).

Node 0 holds global rank 0, which writes the events, the checkpoints and the result: it
mirrors events to ``STAGING_URI/events.jsonl`` as they come (the train step follows them),
uploads each complete checkpoint to the output, and at the end uploads the result to
``STAGING_URI/result/`` with ``COMPLETE`` written last -- or ``error.json`` when training
failed for a reason with a spec field.

Storage only: nothing here knows Kubernetes.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from slmops_pipelines.errors import JobError
from slmops_pipelines.steps.train.preemption import PREEMPTED_REASON
from slmops_pipelines.storage import ArtifactStore, open_store

REQUEST = "request.json"
EVENTS = "events.jsonl"
RESULT = "result"
COMPLETE = "result/COMPLETE"
ERROR = "error.json"
EVENT_UPLOAD_INTERVAL_S = 5.0
PREEMPTED_EXIT = 143


class EventMirror:
    """Append events to a local file and upload it now and then (and on saves and at the end)."""

    def __init__(self, staging: ArtifactStore, path: Path) -> None:
        self.staging, self.path, self.last = staging, path, 0.0
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, event: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(event) + "\n")
        if event.get("event") in ("save", "train_end") or time.time() - self.last > EVENT_UPLOAD_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        if self.path.exists():
            self.staging.upload_file(self.path, EVENTS)
        self.last = time.time()


def run_node(staging_uri: str, output_uri: str, *, scratch: Path) -> None:
    from slmops_pipelines.models import resolve_model
    from slmops_pipelines.specs import FineTuneJobSpec
    from slmops_pipelines.steps.train.checkpoints import restore_checkpoint, sync_checkpoint
    from slmops_pipelines.steps.train.launch import Rendezvous, run_training
    from slmops_pipelines.steps.train.request import TrainRequest

    staging, output = open_store(staging_uri), open_store(output_uri)
    spec = FineTuneJobSpec.model_validate(json.loads(staging.read_text(REQUEST))["spec"])
    rendezvous = Rendezvous.from_env()
    data_dir, work = scratch / "data", scratch / "work"
    staging.download_dir("data", data_dir)
    restore_checkpoint(output, work)
    first = rendezvous.node_rank == 0
    mirror = EventMirror(staging, scratch / "events.jsonl")

    def on_event(event: dict) -> None:
        if event.get("event") == "save":
            sync_checkpoint(output, work, int(event["step"]))
        mirror(event)

    request = TrainRequest(spec=spec, model_path=resolve_model(spec.model), data_dir=data_dir, work_dir=work)
    try:
        run_training(request, on_event=on_event if first else None, rendezvous=rendezvous)
    except JobError as exc:
        if first and exc.reason != PREEMPTED_REASON:  # preempted: the restarted node resumes
            staging.write_text(ERROR, json.dumps(exc.to_dict()))
        raise
    finally:
        if first:
            mirror.flush()
    if first:
        for folder in ("adapter", "model", "tensorboard", "logs"):
            if (work / folder).is_dir():
                staging.upload_dir(work / folder, f"{RESULT}/{folder}")
        staging.write_text(COMPLETE, "")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m slmops_pipelines.steps.train.node STAGING_URI OUTPUT_URI", file=sys.stderr)
        return 2
    from slmops_pipelines.quiet import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="slmops-node-") as scratch:
        try:
            run_node(argv[0], argv[1], scratch=Path(scratch))
        except JobError as exc:
            print(f"[slmops] training failed: {exc}", file=sys.stderr, flush=True)
            # 128 + SIGTERM: what the engines' ExitCode restart policy retries (a preempted node)
            return PREEMPTED_EXIT if exc.reason == PREEMPTED_REASON else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
