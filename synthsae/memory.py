"""Memory estimates made before anything is allocated or written, so a size the machine cannot hold is refused
in one line (the estimate and the free memory) instead of failing half way with files already on disk.

The estimates count the big tensors of each stage (see the functions) and err on the high side by a small
factor; they are not exact. `available_bytes` is what the OS reports as available (MemAvailable, or the
cgroup's limit minus its use when that is lower) or, on CUDA, the free device memory.
"""

from __future__ import annotations

from pathlib import Path

from synthsae.config import ConfigError, RunConfig, TruthConfig

GB = 1e9
_DTYPE_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}


class MemoryLimitError(ConfigError):
    """The estimated memory of a size exceeds what the machine has free (one line, both numbers)."""


class DiskLimitError(ConfigError):
    """The estimated size of what a stage writes exceeds the free disk where it writes (one line, both numbers)."""


def truth_bytes(t: TruthConfig) -> int:
    """Building the truth: a random d x d orthogonal matrix (float64, QR keeps ~3 copies) plus the components."""
    r_max = max(t.subspace_ranks, default=1)
    comps = t.n_atoms * t.d * 2 + len(t.subspace_ranks) * t.d * r_max + sum(t.frame_sizes) * t.d + t.d * t.n_classes
    return 8 * (3 * t.d * t.d + 2 * comps)


def sample_bytes(t: TruthConfig, n: int, details: bool = True) -> int:
    """Drawing n samples: the dense [n, components] firing draw (two float32 normals, a uniform, a mask), the
    magnitudes when details are kept, block coordinates and x."""
    c = t.n_components
    total_r = sum(t.subspace_ranks) + sum(t.frame_ranks)
    return n * (c * (13 + (4 if details else 0)) + 8 * total_r + 12 * t.d)


def train_bytes(cfg: RunConfig) -> int:
    """One training step of all S seeds: parameters + gradients + Adam's two moments, the [S, B, d_sae]
    activations (pre-activations, codes, masks and their gradients), the batch and its sampling."""
    S, d, m, B = cfg.train.seeds, cfg.truth.d, cfg.sae.d_sae, cfg.train.batch_size
    b = _DTYPE_BYTES.get(cfg.train.dtype, 4)
    params = S * (2 * d * m + m + d)
    streams = S if cfg.train.data_varies() else 1
    return 4 * params * b + 6 * S * B * m * b + S * m * 8 + streams * (sample_bytes(cfg.truth, B, details=False) + 3 * B * d * b)


def analysis_bytes(cfg: RunConfig) -> int:
    """Analysis and pooling: all seeds' decoders and encoders, one m x m cosine matrix per seed pair (float64
    for the assignment), and the frequency sample's codes [S, batch, m]."""
    S, d, m = cfg.train.seeds, cfg.truth.d, cfg.sae.d_sae
    return 4 * (4 * S * d * m) + 3 * 8 * m * m + 4 * S * cfg.train.batch_size * m + 8 * S * S * m


def _cgroup_free() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def available_bytes(device: str = "cpu") -> int | None:
    """Free memory of the device that will hold the tensors (None when it cannot be told)."""
    if str(device).startswith("cuda"):
        import torch

        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError, ValueError):
            return None
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:
            import os

            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    cg = _cgroup_free()
    return min(free, cg) if cg is not None else free


def check_fits(need: int, what: str, advice: str, device: str = "cpu") -> None:
    """Raise MemoryLimitError when `need` bytes exceed the free memory of `device`."""
    free = available_bytes(device)
    if free is not None and need > free:
        where = "on the GPU" if str(device).startswith("cuda") else "on this machine"
        raise MemoryLimitError(f"{what} needs about {need / GB:,.1f} GB of memory but {free / GB:,.1f} GB is free {where}; {advice}")


def sae_disk_bytes(S: int, d: int, m: int, param_bytes: int = 4) -> int:
    """What training writes for S seeds of width m over d (on the high side): the seed folders, two checkpoints at
    once while the newer one is committed (parameters plus Adam's two float32 moments each), and as much again
    for the pooled dictionaries of a whole run."""
    params = S * (2 * d * m + m + d)
    return params * param_bytes * 2 + 2 * params * (param_bytes + 8)


def run_disk_bytes(cfg: RunConfig) -> int:
    """A synthetic run's files: sae_disk_bytes plus the truth (components and the frame / subspace bases, float32)."""
    t = cfg.truth
    truth = 4 * t.d * (t.n_components + sum(t.subspace_ranks) + sum(t.frame_sizes) + t.n_classes)
    return sae_disk_bytes(cfg.train.seeds, t.d, cfg.sae.d_sae, _DTYPE_BYTES.get(cfg.train.dtype, 4)) + truth


def stack_bytes(S: int, d: int, m: int) -> int:
    """Analysing S loaded SAEs of d_in d x d_sae m: the stacked weights (float32, a few copies on the way), the
    m x m similarity matrices of a seed pair (float64 for the assignment) and the S x S x m match tables."""
    return 4 * (4 * S * (2 * d * m + m + d)) + 3 * 8 * m * m + 8 * S * S * m


def check_stack_fits(S: int, d: int, m: int, where: str) -> None:
    """Refuse SAE folders whose stacked SAE and analysis would not fit, before the stack is allocated."""
    check_fits(stack_bytes(S, d, m), f"{where}: analysing {S} seeds of d_in = {d} x d_sae = {m}",
               "analyse fewer seeds at once, or check d_in / d_sae in the folders' configs")


def check_run_fits(cfg: RunConfig, device: str = "cpu", analysis: bool = True, out: str | Path | None = None) -> None:
    """Refuse a run whose truth, training step or analysis would not fit, before anything is written (and, given the
    run folder, one whose files would not fit on its disk)."""
    t, s = cfg.train, cfg.sae
    check_fits(truth_bytes(cfg.truth), f"the truth (truth.d = {cfg.truth.d}, {cfg.truth.n_components} components)",
               "lower truth.d or the number of components")
    check_fits(train_bytes(cfg), f"training (train.seeds = {t.seeds} x sae.d_sae = {s.d_sae} x truth.d = {cfg.truth.d}, "
               f"train.batch_size = {t.batch_size})", "lower train.seeds, sae.d_sae or train.batch_size", device)
    if analysis:
        check_fits(analysis_bytes(cfg), f"the analysis (train.seeds = {t.seeds} x sae.d_sae = {s.d_sae})",
                   "lower train.seeds or sae.d_sae", device)
    if out is not None:
        check_disk(run_disk_bytes(cfg), f"the run (train.seeds = {t.seeds} x sae.d_sae = {s.d_sae} x truth.d = "
                   f"{cfg.truth.d}: seed folders, checkpoints, pooled dictionaries)", "free disk or pass another --out", out)


def free_disk_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system that holds `path` (its nearest existing parent; None when it cannot be told)."""
    import shutil

    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return int(shutil.disk_usage(p).free)
    except OSError:
        return None


def check_disk(need: int, what: str, advice: str, path: str | Path) -> None:
    """Raise DiskLimitError when `need` bytes exceed the free disk where `path` lives."""
    free = free_disk_bytes(path)
    if free is not None and need > free:
        raise DiskLimitError(f"{what} writes about {_size(need)} to {path} but {_size(free)} of disk is free there; "
                             f"{advice}")


def _size(n: float) -> str:
    """Bytes as GB (MB below 0.1 GB, so a small planted limit still reads as a number)."""
    return f"{n / GB:,.1f} GB" if n >= 0.1 * GB else f"{n / 1e6:,.1f} MB"
