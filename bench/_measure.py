"""Run a command and measure it: wall time and the peak RSS of its whole process tree.

``resource.getrusage`` only sees children that were waited for, and a tool may fork workers
(dataloaders, compilers), so the tree's RSS is summed from ``/proc`` every 0.1 s instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log: Path,
    timeout: float | None = None,
    cpus: set[int] | None = None,
) -> Measured:
    """Run ``cmd`` to completion, output to ``log``; wall time and peak tree RSS.

    Past ``timeout`` seconds the command is killed and ``TimeoutError`` raised.  ``cpus``: the
    only CPUs the command may run on (as ``taskset -c`` or a pod's CPU limit would set them).
    """
    peak = 0
    with open(log, "w") as out:
        started = time.perf_counter()
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        process = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True, preexec_fn=pin
        )
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_rss(process.pid))
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            process.kill()
            process.wait()
            raise TimeoutError(f"{cmd[0]} ran past {timeout:.0f} s") from exc
        finally:
            done.set()
            sampler.join()
        wall = time.perf_counter() - started
    return Measured(returncode, wall, peak / 2**20, Path(log).read_text())


def run_slmops(
    job: dict, *, work: Path, name: str, timeout: float | None = None, cpus: set[int] | None = None
) -> Measured:
    """``slmops run`` of ``job`` (written to ``work/NAME.yaml``), from a clean output folder.

    Raises ``RuntimeError`` with the end of the job's output when it fails.
    """
    import yaml

    out = Path(job["spec"]["output"]["uri"])
    shutil.rmtree(out, ignore_errors=True)  # a rerun in the same work folder starts clean
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": python_path()}
    cmd = [sys.executable, "-c", "from slmops_operator.cli.main import main; main()", "run", str(path)]
    measured = run_measured(cmd, env=env, log=work / f"{name}.log", timeout=timeout, cpus=cpus)
    if measured.returncode:
        raise RuntimeError(f"slmops run {name} failed:\n{measured.output[-3000:]}")
    return measured


def versions(*packages: str) -> dict[str, str]:
    """The installed version of each package (in this interpreter), for the figures' record."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed here"
    return found


def provenance(argv: list[str] | None, *packages: str) -> dict[str, object]:
    """What every figures file records of its run: the date, the machine, the command, the versions."""
    command = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    return {
        "date": time.strftime("%Y-%m-%d"),
        "time": time.strftime("%H:%M", time.gmtime()),  # UTC: which of one day's runs is the newest
        "machine": machine(),
        "command": command,
        "versions": versions(*packages),
    }


def machine() -> str:
    """One line: CPU model with its widest vector instructions, cores, memory.

    A virtual machine's CPU model ("AMD EPYC") hides its generation, and the int4 kernels'
    speed depends on it (VNNI, AVX-512): the instructions tell two such machines apart."""
    model, flags = "unknown CPU", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and model == "unknown CPU":
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    isa = next((name for flag, name in VECTOR_ISAS if flag in flags), None)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = f"{model} ({isa})" if isa else model
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, {memory:.0f} GiB"


VECTOR_ISAS = (  # widest first: the /proc/cpuinfo flag, and what a table says
    ("amx_tile", "AMX"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx512f", "AVX-512"),
    ("avx_vnni", "AVX2 VNNI"),
    ("avx2", "AVX2"),
)
