"""How many CPUs this process may really use: affinity mask and cgroup v2 quota.

Torch sizes its thread pool from the cores it sees, but a container limited by a CPU quota
(a Kubernetes `limits.cpu`) sees every core of the node. Measured on a 2-core machine with one
core busy elsewhere, MiniLM with 2 threads ran 3x slower than with 1: every small op waits at
an OpenMP barrier for the descheduled thread. So the engine sizes the pool to the real share.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def quota_cpus(cpu_max: str) -> int | None:
    """CPUs granted by a cgroup v2 `cpu.max` line ("max 100000" or "150000 100000")."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def usable_cpus(cpu_max_file: Path = CGROUP_CPU_MAX) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota = quota_cpus(cpu_max_file.read_text())
    except OSError:
        quota = None
    return min(cpus, quota) if quota else cpus
