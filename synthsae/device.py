"""Which torch device a run uses: 'auto' picks CUDA when present; an explicit CUDA request on a machine without
one is refused in one line (before any folder is touched)."""

from __future__ import annotations

import torch

from synthsae.config import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    """'auto' = CUDA when available, else CPU; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r}: CUDA is not available on this machine; use cpu or auto")
    return dev


def resolve_device(device: str | None) -> torch.device:
    """None / 'auto' = CUDA when available, else CPU (pick_device, which also rejects absent CUDA)."""
    return pick_device(device or "auto")
