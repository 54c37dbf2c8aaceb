"""How many CPUs this process may really use: the one figure every thread pool is sized from.

``os.cpu_count()`` is the node's CPUs, which in a Kubernetes pod is far more than the pod's
CPU limit (a 2-CPU pod on a 64-core node would start 64 threads that fight for 2 CPUs), and
onnxruntime sizes its pool from the *physical* cores it detects, which on virtual machines is
often fewer than the CPUs the process may use (one thread on a 2-CPU VM).  The usable count is
the smallest of the CPUs the scheduler lets this process run on and the cgroup's CPU quota
(cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``), rounded up.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

_CGROUP = Path("/sys/fs/cgroup")


def _affinity() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _quota(root: Path) -> float | None:
    """CPUs the cgroup's quota allows, or None when there is no limit (or no cgroup file)."""
    try:
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    for controller in ("cpu", "cpu,cpuacct"):  # cgroup v1 mounts it under either name
        try:
            quota = int((root / controller / "cpu.cfs_quota_us").read_text())
            period = int((root / controller / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota > 0 and period > 0:
            return quota / period
    return None


def usable_cpus(*, cgroup_root: Path = _CGROUP) -> int:
    """CPUs this process can keep busy: its affinity, capped by the cgroup's quota; at least 1."""
    cpus = _affinity()
    quota = _quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)
