"""Run a command and measure it: wall time and the peak RSS of its whole process tree.

``resource.getrusage`` only sees children that were waited for, and a tool may fork workers
(dataloaders, compilers), so the tree's RSS is summed from ``/proc`` every 0.1 s instead.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def python_path() -> str:
    """slmops' source folders first, then whatever PYTHONPATH already holds (e.g. carried wheels)."""
    extra = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    return os.pathsep.join([str(REPO / "pipelines"), str(REPO / "operator"), *extra])


@dataclass
class Measured:
    returncode: int
    wall_s: float
    peak_rss_mb: float
    output: str


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (0 once gone)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
        todo += _children(current)
    return total


def run_measured(
    cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, log: Path
) -> Measured:
    """Run ``cmd`` to completion, output to ``log``; wall time and peak tree RSS."""
    peak = 0
    with open(log, "w") as out:
        started = time.perf_counter()
        process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_rss(process.pid))
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        returncode = process.wait()
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
    return Measured(returncode, wall, peak / 2**20, Path(log).read_text())


def machine() -> str:
    """One line: CPU model, cores, memory."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {len(os.sched_getaffinity(0))} cores, {memory:.0f} GiB"
