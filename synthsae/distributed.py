"""The seed axis across processes: torchrun's environment, seed shards, and the few collectives a run needs.

Under `torchrun --nproc-per-node N -m synthsae ...` every rank trains its own contiguous block of seeds (the same
batched step as one process) on the same data stream, so a seed's weights do not depend on N. Ranks talk only to
check on each other (a heartbeat every `log_every` steps and at every checkpoint), to commit checkpoints, and to
gather per-seed results on rank 0. Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a
no-op and a run is one process, as before.

Backends: gloo on CPU; on CUDA "cpu:gloo,cuda:nccl" (NCCL for CUDA tensors, gloo for the small CPU tensors and
Python objects of the heartbeat and the gathers, which also lets a lost peer surface as an error, not a hang).
A rank that dies makes the next collective on every other rank fail; that becomes `PeerLost`, one line.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist

TIMEOUT_ENV = "SYNTHSAE_DIST_TIMEOUT"  # seconds a rank waits for the others at a collective (default 600)


class PeerLost(RuntimeError):
    """Another rank stopped (died, was killed or failed); this rank stops too. One line: who, where, what to do."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank r of `world` processes (world 1 = no torch.distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> Dist:
    """Rank and world size from torchrun's environment variables (RANK, WORLD_SIZE, LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Dist()
    return Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def cuda_for_rank(device: torch.device, local_rank: int, n_devices: int) -> torch.device:
    """The CUDA device of a rank: the one asked for, else cuda:LOCAL_RANK; a one-line error when the node has fewer
    GPUs than ranks (NCCL needs one GPU per rank)."""
    from synthsae.config import ConfigError

    want = device if device.index is not None else torch.device("cuda", local_rank)
    if want.index >= n_devices:
        raise ConfigError(f"--device {device}: rank {local_rank} of this node needs cuda:{want.index} but the node has "
                          f"{n_devices} CUDA device(s); run at most {n_devices} process(es) per node "
                          f"(--nproc-per-node) or use --device cpu (gloo)")
    return want


def setup(device: torch.device) -> Dist:
    """Join the process group torchrun described (once per process); returns this rank's Dist.

    The CUDA device becomes cuda:LOCAL_RANK when the run is on CUDA without an explicit index.
    """
    d = env_world()
    if not d.active:
        return d
    if dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), d.local_rank)
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))
    if device.type == "cuda":
        torch.cuda.set_device(cuda_for_rank(device, d.local_rank, torch.cuda.device_count()))
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=timeout)
    _stop_on_sigterm()
    return Dist(dist.get_rank(), dist.get_world_size(), d.local_rank)


def _stop_on_sigterm() -> None:
    """torchrun stops the surviving ranks with SIGTERM when one fails: turn that into PeerLost (one line, exit 1)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def on_term(signum, frame):  # noqa: ARG001
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise PeerLost(f"rank {current().rank}: stopped by the launcher (SIGTERM: another rank failed or the run was "
                       "cancelled); rerun the same command with --resume (any number of processes) to finish the run")

    signal.signal(signal.SIGTERM, on_term)


def rank_device(device: torch.device, d: Dist) -> torch.device:
    """cuda -> cuda:LOCAL_RANK for a distributed run (one GPU per rank); anything else unchanged."""
    if d.active and device.type == "cuda" and device.index is None:
        return torch.device("cuda", d.local_rank)
    return device


def current() -> Dist:
    """The Dist of an initialised process group, else the one-process Dist."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Dist()


def teardown() -> None:
    """Leave the process group (end of a command); harmless when there is none."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def shard(n: int, rank: int, world: int) -> list[int]:
    """Rank's contiguous block of range(n) (sizes differ by at most one; earlier ranks get the extra ones)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return list(range(start, start + base + (1 if rank < extra else 0)))


def _lost(where: str, exc: BaseException) -> PeerLost:
    if isinstance(exc, PeerLost):  # the SIGTERM handler raised inside a collective: its message is already ours
        return exc
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    first = first.split("] ", 1)[-1].split(". ")[0][:120]  # gloo: drop the source path, keep the first sentence
    return PeerLost(f"rank {current().rank}: another rank stopped ({where}: {first}); "
                    "rerun the same command with --resume (any number of processes) to finish the run")


def heartbeat(where: str, status: int = 0) -> int:
    """Every rank reports a status (0 = fine); returns the largest. Raises PeerLost when a rank is gone."""
    if not current().active:
        return status
    t = torch.tensor([status], dtype=torch.int64)
    try:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    except Exception as exc:  # noqa: BLE001 - gloo/NCCL raise several types for a closed peer or a timeout
        raise _lost(where, exc) from None
    return int(t.item())


def barrier(where: str) -> None:
    """Wait for every rank (a heartbeat: a CPU all-reduce, so it also works and fails cleanly under NCCL)."""
    heartbeat(where)


def gather_to_main(obj: Any, where: str) -> list[Any] | None:
    """Every rank's object, in rank order, on rank 0 (None elsewhere); one process: [obj]."""
    d = current()
    if not d.active:
        return [obj]
    out: list[Any] | None = [None] * d.world if d.is_main else None
    try:
        dist.gather_object(obj, out, dst=0)
    except Exception as exc:  # noqa: BLE001
        raise _lost(where, exc) from None
    return out


def all_sum(t: torch.Tensor, where: str) -> torch.Tensor:
    """In-place sum of a tensor over ranks (every rank gets the result)."""
    if not current().active:
        return t
    try:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    except Exception as exc:  # noqa: BLE001
        raise _lost(where, exc) from None
    return t


# ----------------------------------------------------------------------------------------------- shared work

_SHARE_PAIRS: contextvars.ContextVar[bool] = contextvars.ContextVar("synthsae_share_pairs", default=False)


@contextlib.contextmanager
def sharing_pairs() -> Iterator[None]:
    """Inside this block, cross-seed pair work (metrics.stability.pair_scores) is split over the ranks.

    Every rank must run the same code inside the block (each call is a collective)."""
    token = _SHARE_PAIRS.set(True)
    try:
        yield
    finally:
        _SHARE_PAIRS.reset(token)


def pair_share() -> Dist | None:
    """The Dist to split pair work over, or None when the work stays in this process."""
    d = current()
    return d if d.active and _SHARE_PAIRS.get() else None
