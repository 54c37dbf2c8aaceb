"""Run the training step with torchrun and follow its progress (the parent side).

``processesPerNode`` processes are started with ``torch.distributed.run --standalone``
(a free rendezvous port, so parallel jobs do not collide).  Every process runs
:mod:`slmops_pipelines.steps.train.__main__`.  One process on one node is started without
torchrun: its launcher costs about 2 s of imports and a rendezvous, and on a GPU it would
wrap the one process in DDP for nothing (the trainer reads rank 0 of 1 when torchrun's
variables are absent).  The parent tails the event log and calls
``on_event`` for each new event: the CLI draws a progress bar from them, the operator will
mirror them into ``status.progress``.  SIGTERM to this process asks the trainers to save the
step they reach and stop (:mod:`.preemption`); the step then fails with the reason
``Preempted`` and a rerun resumes from that checkpoint.

On CPU-only machines each process gets ``cores // processes`` threads: torchrun would
otherwise give each one thread and leave cores idle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slmops_pipelines.errors import JobError
from slmops_pipelines.steps.cpus import usable_cpus
from slmops_pipelines.steps.train.preemption import preempted_error, sigterm_requests_stop
from slmops_pipelines.steps.train.request import TrainRequest, TrainResult

EventHandler = Callable[[dict], None]


@dataclass(frozen=True)
class Rendezvous:
    """Where the nodes of a multi-node run meet: given by the engine that started the pods."""

    nodes: int
    node_rank: int
    master_addr: str
    master_port: int

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Rendezvous:
        """Read what a PyTorchJob or a TrainJob sets (``PET_*``, else ``MASTER_*``/``RANK``)."""
        env = dict(os.environ if env is None else env)

        def first(*names: str) -> str:
            for name in names:
                if env.get(name):
                    return env[name]
            raise JobError(
                f"multi-node training needs {' or '.join(names)} in the environment (set by the PyTorchJob/TrainJob)",
                reason="TrainingFailed",
            )

        return cls(
            nodes=int(first("PET_NNODES", "WORLD_SIZE")),
            node_rank=int(first("PET_NODE_RANK", "RANK", "JOB_COMPLETION_INDEX")),
            master_addr=first("PET_MASTER_ADDR", "MASTER_ADDR"),
            master_port=int(first("PET_MASTER_PORT", "MASTER_PORT")),
        )


def under_torchrun(processes: int, rendezvous: Rendezvous | None) -> bool:
    """Whether this node's trainers start under torchrun: all but one process on one node."""
    return processes > 1 or rendezvous is not None


def training_command(request_path: Path, processes: int, rendezvous: Rendezvous | None = None) -> list[str]:
    """The command that starts the training processes of this node."""
    trainer = ["-m", "slmops_pipelines.steps.train", str(request_path)]
    if not under_torchrun(processes, rendezvous):
        return [sys.executable, *trainer]
    if rendezvous is None:  # one node: a private rendezvous on a free port
        where = ["--standalone", "--nnodes=1"]
    else:
        where = [
            f"--nnodes={rendezvous.nodes}",
            f"--node-rank={rendezvous.node_rank}",
            f"--master-addr={rendezvous.master_addr}",
            f"--master-port={rendezvous.master_port}",
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        f"--nproc-per-node={processes}",
        *trainer,
    ]


def _child_env(processes: int, *, torchrun: bool) -> dict[str, str]:
    env = dict(os.environ)
    threads = max(1, usable_cpus() // processes)  # the pod's CPU limit, not the node's cores
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not torchrun:
        env["CUDA_VISIBLE_DEVICES"] = one_device(env.get("CUDA_VISIBLE_DEVICES"))
    # The parent may run from a source tree: make sure the children import the same code.
    src_paths = [str(Path(__file__).resolve().parents[3])]
    env["PYTHONPATH"] = os.pathsep.join([*src_paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def one_device(visible: str | None) -> str:
    """The one GPU a trainer started without torchrun may see: the first of those visible.

    Under torchrun one process trains on ``cuda:LOCAL_RANK``; alone, the Trainer would spread
    it over every GPU it sees (``DataParallel``), which a 4-bit base refuses.  No GPU, none.
    """
    if visible is None:
        return "0"
    return visible.split(",")[0].strip()


def _die_with_parent() -> None:
    """Have the kernel send SIGTERM to torchrun (or the one trainer) if the parent dies.

    torchrun forwards it to the workers; without this a killed ``slmops run`` would leave
    orphaned trainers writing into the output folder while a rerun resumes from it.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class _EventTail:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def read_new(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open() as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        complete, _, _rest = chunk.rpartition("\n")
        if not complete:
            return []
        self.offset += len(complete) + 1
        return [json.loads(line) for line in complete.split("\n") if line.strip()]


def _failure_summary(log_path: Path) -> str:
    lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    errors = [line for line in lines if "Error" in line or "error:" in line]
    detail = errors[-1].strip() if errors else (lines[-1].strip() if lines else "no output")
    return detail[:500]


def run_training(
    request: TrainRequest,
    *,
    on_event: EventHandler | None = None,
    poll_s: float = 0.5,
    rendezvous: Rendezvous | None = None,
) -> TrainResult | None:
    """Train with ``resources.processesPerNode`` processes on this node; raise JobError on failure.

    With a ``rendezvous`` this node joins a multi-node run; the result (and the events) come
    from global rank 0, so only node 0 returns a TrainResult -- the others return None.
    """
    processes = request.spec.resources.processes_per_node
    logs = request.work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    request_path = logs / "train_request.json"
    request_path.write_text(request.model_dump_json(indent=2))
    for stale in (request.result_path, request.error_path, request.stop_path, request.preempted_path):
        stale.unlink(missing_ok=True)
    tail = _EventTail(request.events_path)
    log_path = logs / "train.log"
    with log_path.open("a") as log, sigterm_requests_stop(request.stop_path):
        proc = subprocess.Popen(
            training_command(request_path, processes, rendezvous),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_child_env(processes, torchrun=under_torchrun(processes, rendezvous)),
            preexec_fn=_die_with_parent,
        )
        try:
            while proc.poll() is None:
                time.sleep(poll_s)
                for event in tail.read_new():
                    if on_event:
                        on_event(event)
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    for event in tail.read_new():
        if on_event:
            on_event(event)
    if request.error_path.exists():
        raise JobError.from_dict(json.loads(request.error_path.read_text()))
    if request.preempted_path.exists():
        raise preempted_error(request.preempted_path)
    if proc.returncode == 0 and rendezvous is not None and rendezvous.node_rank != 0:
        return None
    if proc.returncode != 0 or not request.result_path.exists():
        raise JobError(
            f"training failed (exit code {proc.returncode}): {_failure_summary(log_path)}; full log: {log_path}",
            field=None,
            reason="TrainingFailed",
        )
    return TrainResult.model_validate_json(request.result_path.read_text())
