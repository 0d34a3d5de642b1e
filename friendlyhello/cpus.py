"""The CPUs this process may use: what WORKERS=auto starts a worker for each of."""

import os


def available():
    """The CPUs this process may use: its affinity, capped by a cgroup CPU quota (a container's
    --cpus, a pod's CPU limit), rounded up; at least 1."""
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_cpu_quota()
    return max(min(cpus, quota) if quota else cpus, 1)


def _cgroup_cpu_quota():
    """The cgroup's CPU limit in whole CPUs, rounded up; None when there is none."""
    try:  # cgroup v2: "150000 100000", or "max 100000" when unlimited
        quota, period = _read("/sys/fs/cgroup/cpu.max").split()
    except (OSError, ValueError):
        try:  # cgroup v1: -1 when unlimited
            quota = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").strip()
            period = _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us").strip()
        except OSError:
            return None
    if quota in ("max", "-1") or not quota.isdigit() or not period.isdigit() or not int(period):
        return None
    return -(-int(quota) // int(period))


def _read(path):
    with open(path) as file:
        return file.read()
