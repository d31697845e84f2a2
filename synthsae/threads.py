"""CPU thread policy: small problems run on one thread.

On a 2-core machine a default-sized step (d = 64, d_sae = 256) is many tiny ops; with two OpenMP threads every op
waits at a barrier, and if anything else runs on the machine a step slowed from 44 ms to 908 ms (measured
2026-11-25). One thread is as fast when quiet and robust when not. Users who set OMP_NUM_THREADS or
SYNTHSAE_THREADS keep their choice.
"""

from __future__ import annotations

import os

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
