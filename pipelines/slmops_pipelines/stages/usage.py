"""What a job cost: wall time, CPU-seconds and GPU-seconds, per stage.

Every stage, in whatever process or pod it runs, adds one record to the output location
(``.slmops/usage/<stage>-<id>.json``) when it ends, failed or not: its wall time, the CPU
time of its process and the children it waited for (torchrun and its trainers), and the
GPUs it held.  GPU-seconds are GPUs x wall time, what a GPU pool bills.  The report sums
them (:func:`summarize`) into ``metrics.json`` (``usage``), ``report.html`` and the job's
``status.usage``; a stage that ran twice (a retried step, a resumed job, search trials)
counts twice, as it was paid for twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from slmops_pipelines.storage import ArtifactStore

USAGE_PREFIX = ".slmops/usage"
_CURRENT: list[StageUsage] = []  # the stages being measured in this process, innermost last


@dataclass
class StageUsage:
    """One run of one stage."""

    stage: str
    wall_s: float = 0.0
    cpu_s: float = 0.0
    gpus: int = 0  # the stage may set it once it knows (training: the processes on GPUs)

    @property
    def gpu_s(self) -> float:
        return self.gpus * self.wall_s


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the processes it waited for
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def visible_gpus() -> int:
    """GPUs this process holds: torch's count where torch is loaded, else what the device plugin gave."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return int(torch.cuda.device_count())
    given = os.environ.get("NVIDIA_VISIBLE_DEVICES", "").strip()
    if given and given not in ("void", "none", "all"):
        return len([d for d in given.split(",") if d.strip()])
    return 0


def hold_gpus(count: int) -> None:
    """The stage being measured held ``count`` GPUs (in processes or pods it started)."""
    if _CURRENT:
        _CURRENT[-1].gpus = max(_CURRENT[-1].gpus, count)


@contextlib.contextmanager
def metered(store: ArtifactStore | None, stage: str) -> Iterator[StageUsage]:
    """Measure the block as ``stage`` and record it in ``store`` (None: measure only)."""
    record = StageUsage(stage=stage)
    wall, cpu = time.monotonic(), _cpu_seconds()
    _CURRENT.append(record)
    try:
        yield record
    finally:
        _CURRENT.remove(record)
        record.wall_s = round(time.monotonic() - wall, 3)
        record.cpu_s = round(_cpu_seconds() - cpu, 3)
        record.gpus = record.gpus or visible_gpus()
        if store is not None:
            with contextlib.suppress(Exception):  # accounting never fails the job it accounts for
                store.write_text(
                    f"{USAGE_PREFIX}/{stage}-{uuid.uuid4().hex[:8]}.json", json.dumps(asdict(record))
                )


def read_usage(store: ArtifactStore) -> list[StageUsage]:
    """Every stage record of the output location, oldest first."""
    records = []
    for info in sorted(store.list(USAGE_PREFIX), key=lambda i: i.key):
        with contextlib.suppress(Exception):  # one unreadable record does not hide the others
            data = json.loads(store.read_text(info.key))
            records.append(StageUsage(**{k: data[k] for k in ("stage", "wall_s", "cpu_s", "gpus")}))
    return records


def summarize(records: list[StageUsage]) -> dict[str, Any]:
    """Totals and a row per stage (runs of one stage added up), as metrics.json and status show them."""
    stages: dict[str, dict[str, Any]] = {}
    for r in records:
        row = stages.setdefault(r.stage, {"runs": 0, "wall_s": 0.0, "cpu_s": 0.0, "gpu_s": 0.0, "gpus": 0})
        row["runs"] += 1
        row["wall_s"] = round(row["wall_s"] + r.wall_s, 1)
        row["cpu_s"] = round(row["cpu_s"] + r.cpu_s, 1)
        row["gpu_s"] = round(row["gpu_s"] + r.gpu_s, 1)
        row["gpus"] = max(row["gpus"], r.gpus)
    return {
        "gpu_seconds": round(sum(r.gpu_s for r in records), 1),
        "cpu_seconds": round(sum(r.cpu_s for r in records), 1),
        "wall_seconds": round(sum(r.wall_s for r in records), 1),
        "stages": stages,
    }


def of_output(output_uri: str) -> dict[str, Any]:
    """The summed usage records of a job's output location (an empty summary where none can be read)."""
    from slmops_pipelines.storage import open_store

    try:
        return summarize(read_usage(open_store(output_uri, field="output.uri")))
    except Exception:  # accounting never fails the report it is part of
        return summarize([])
