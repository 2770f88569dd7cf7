"""How many CPUs this process may use: the default number of gunicorn workers."""
import math
import os
from typing import Optional

MAX_DEFAULT_WORKERS = 8
CGROUP_ROOT = "/sys/fs/cgroup"


def available_cpus(cgroup_root: str = CGROUP_ROOT) -> int:
    """CPUs this process may run on (its affinity), lowered to its cgroup's CPU quota
    rounded up (a container limited to 1.5 CPUs gets 2); at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_quota(root: str = CGROUP_ROOT) -> Optional[float]:
    """The cgroup's CPU quota in CPUs (v2 cpu.max, else v1 cfs), None when unlimited."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, _, period = f.read().strip().partition(" ")
        if quota == "max":
            return None
        return int(quota) / int(period or 100000)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota_us = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period_us = int(f.read())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def default_workers(cgroup_root: str = CGROUP_ROOT) -> int:
    """One event-loop worker per available CPU, at most MAX_DEFAULT_WORKERS."""
    return min(available_cpus(cgroup_root), MAX_DEFAULT_WORKERS)
