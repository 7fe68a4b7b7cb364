"""How many CPU threads torch gets for training: :func:`torch_threads_for`.

Torch's default is one intra-op thread per physical core. That is the fastest
setting for one run on a quiet machine, and a collapse when the cores are
shared: each small op of our policy then waits for threads that other
processes hold. Issue 17 measured PPO on ``mbm/FindSound-v0`` through the
RL Zoo at 287 steps/s when torch took every core while other processes shared
them, against 1,921 with the cores to itself (6.7x). The automatic choice here
(``torch_threads: 0``, the default) therefore counts the cores the process may
run on and takes away those the other processes already keep busy (the
one-minute load average), capped at 4 (our policies gain nothing beyond):
a quiet 8-core machine gives 4 threads, a busy one or a worker among several
gives 1. An explicit ``OMP_NUM_THREADS`` (Ray sets it for its workers) wins.

Measured on this project's 2-core machine while other processes kept it busy
(load average 7.5; PPO on ``mbm/FindSound-v0``, 16 envs, three interleaved
rounds of 2,048 steps): 312 steps/s with 1 thread against 28 with 2 (11x); the
automatic choice gave 1. On the same machine when quiet, torch's default of 2
threads ran ~1,750 steps/s against ~1,000 with 1, and the automatic choice
keeps 2 there.
"""

from __future__ import annotations

import math
import os

import torch

MAX_AUTO_THREADS = 4
"""Most threads the automatic choice gives (small policies stop scaling there)."""


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def busy_cores() -> float:
    """Cores other processes keep busy: the one-minute load average (0 where unknown)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # Windows
        return 0.0


def auto_torch_threads(cores: int | None = None, load: float | None = None) -> int:
    """The automatic thread count: ``min(4, cores - round(load))``, at least 1.

    Args:
        cores: Cores available (default: :func:`available_cores`).
        load: Cores other processes keep busy (default: :func:`busy_cores`).
    """
    cores = available_cores() if cores is None else cores
    load = busy_cores() if load is None else load
    idle = cores - math.floor(load + 0.5)
    return max(1, min(MAX_AUTO_THREADS, idle))


def torch_threads_for(requested: int) -> int:
    """Threads to train with: ``requested`` when > 0, else ``OMP_NUM_THREADS`` or the automatic count."""
    if requested > 0:
        return requested
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return torch.get_num_threads()  # torch already follows it
    return auto_torch_threads()
