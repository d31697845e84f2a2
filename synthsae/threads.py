"""CPU thread policy: small problems run on one thread.

On a 2-core machine a default-sized step (d = 64, d_sae = 256) is many tiny ops; with two OpenMP threads every op
waits at a barrier, and if anything else runs on the machine a step slowed from 44 ms to 908 ms (measured
2026-11-25). One thread is as fast when quiet and robust when not. Users who set OMP_NUM_THREADS or
SYNTHSAE_THREADS keep their choice.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

SMALL_WORK = 1 << 30  # multiply-adds per seed per step (batch * d_in * d_sae) below which one thread is used


def configure_threads(batch: int, d_in: int, d_sae: int, device: torch.device | str) -> int:
    """Set torch's intra-op threads for this problem on the CPU; returns the number in force."""
    if str(device).startswith("cuda"):
        return torch.get_num_threads()
    if os.environ.get("SYNTHSAE_THREADS"):
        torch.set_num_threads(int(os.environ["SYNTHSAE_THREADS"]))
    elif not os.environ.get("OMP_NUM_THREADS") and batch * d_in * d_sae < SMALL_WORK:
        torch.set_num_threads(1)
    return torch.get_num_threads()


def cpu_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@contextmanager
def _kept_threads():
    """The intra-op thread count as it was, back after the block whatever the block set."""
    n = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n)


@contextmanager
def one_thread(device: torch.device | str = "cpu"):
    """Run a CPU op on one intra-op thread. torch's parallel integer sort on 2 cores took 160 ms for 32k entries
    when another process used the other core, against 0.3 ms on one thread (measured 2026-11-26)."""
    if str(device).startswith("cuda") or torch.get_num_threads() == 1:
        yield
        return
    with _kept_threads():
        torch.set_num_threads(1)
        yield


@contextmanager
def threads_for(batch: int, d_in: int, d_sae: int, device: torch.device | str):
    """configure_threads for a block of SAE work, then the previous thread count back (so a language model's
    forward passes after it keep theirs)."""
    with _kept_threads():
        configure_threads(batch, d_in, d_sae, device)
        yield
