"""usable_cpus: the CPUs a process can keep busy, capped by its cgroup's quota (a pod's CPU limit)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slmops_pipelines.steps.cpus import usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def cgroup(tmp_path: Path, cpu_max: str | None) -> Path:
    if cpu_max is not None:
        (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    return tmp_path


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        (None, AFFINITY),  # no cgroup file: the affinity
        ("max 100000", AFFINITY),  # no limit
        ("50000 100000", 1),  # half a CPU still needs one thread
        ("150000 100000", min(AFFINITY, 2)),  # 1.5 CPUs: rounded up, never above the affinity
        ("100000000 100000", AFFINITY),  # a quota above the affinity: the affinity
    ],
)
def test_usable_cpus_follow_the_quota(tmp_path, cpu_max, expected):
    assert usable_cpus(cgroup_root=cgroup(tmp_path, cpu_max)) == expected


def test_a_cgroup_v1_quota_counts_too(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(cgroup_root=tmp_path) == 1


def test_a_cgroup_v1_quota_under_cpu_cpuacct_counts_too(tmp_path):
    (tmp_path / "cpu,cpuacct").mkdir()
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(cgroup_root=tmp_path) == 1
