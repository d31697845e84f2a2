"""Where tensors live: one place that turns 'auto' / 'cpu' / 'cuda:N' into a torch.device."""

from __future__ import annotations

import torch


def pick_device(name: str = "auto") -> torch.device:
    """'auto' = CUDA when available, else CPU; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from synthsae.config import ConfigError

        raise ConfigError(f"train.device = {name!r}: CUDA is not available on this machine; use cpu or auto")
    return dev
