"""Core counting and the division of cores among a model's instances.

Each instance is one InferenceSession whose intra-op thread pool would otherwise size itself to
every core of the host, not to the cores this container may use: N instances on a pod limited
to 2 CPUs would each start a pool as wide as the node and spend their quota being throttled.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"

# cgroup v1 mounts the cpu controller under one of these names (distributions differ);
# the last entry covers a root that already is the controller's directory.
_V1_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu", ".")


def available_cores(cgroup_root: str | os.PathLike[str] = DEFAULT_CGROUP_ROOT) -> int:
    """Cores this process may use, at least 1.

    The CPU affinity mask (os.sched_getaffinity where the platform has it, else os.cpu_count),
    further capped by the cgroup CPU quota so that a Kubernetes CPU limit is honoured: cgroup v2
    `<root>/cpu.max`, else v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`. A fractional quota rounds
    down: a pool one thread wider than the quota gets throttled, which costs more latency than the
    unused fraction of a core.
    """
    cores = _affinity_cores()
    quota = _cgroup_quota_cores(Path(cgroup_root))
    if quota is not None:
        cores = min(cores, quota)
    return max(1, cores)


def threads_per_instance(instance_count: int, requested: int, cores: int | None = None) -> int:
    """Intra-op threads for each of `instance_count` sessions of one model.

    `requested` > 0 wins (the operator knows best); otherwise the available cores are divided
    evenly, at least one thread each. `cores` defaults to available_cores().
    """
    if requested > 0:
        return requested
    if cores is None:
        cores = available_cores()
    return max(1, cores // max(1, instance_count))


def _affinity_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cgroup_quota_cores(root: Path) -> int | None:
    """Whole cores the cgroup quota allows, or None when there is no quota (or none readable)."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        # "<quota> <period>" in microseconds, quota "max" when unlimited.
        fields = v2.split()
        if len(fields) == 2:
            return _quota_cores(fields[0], fields[1])
        return None
    for directory in _V1_DIRS:
        quota = _read(root / directory / "cpu.cfs_quota_us")
        period = _read(root / directory / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return _quota_cores(quota, period)  # quota "-1" when unlimited
    return None


def _quota_cores(quota: str, period: str) -> int | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max", or a file we do not understand: no limit we can honour
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return max(1, quota_us // period_us)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
