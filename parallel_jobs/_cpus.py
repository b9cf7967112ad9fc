"""How many CPUs this process may really use."""

from __future__ import annotations

import math
import os

__all__ = ["cpu_count"]


def _cgroup_quota() -> float | None:
    """The CPU quota of this process's cgroup, in CPUs, or None when there is none."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:  # cgroup v2
            quota, period = fh.read().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as fh:  # cgroup v1
            quota_us = int(fh.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as fh:
            period_us = int(fh.read())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def cpu_count() -> int:
    """The number of CPUs this process may use: its CPU affinity, capped by any cgroup quota.

    Examples:
        >>> cpu_count() >= 1
        True
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)
