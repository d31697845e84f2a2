"""Activations given by the user (`--acts FILE`): one safetensors file, or a folder of safetensors shards (an
activation cache), holding [N, d_in] (or [..., d_in]) activations under one key."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from synthsae.io import RunFileError, read_tensors

KEYS = ("acts", "activations", "x")  # tried in this order when a file holds several tensors


def _pick(tensors: dict[str, Tensor], path: Path) -> Tensor:
    for k in KEYS:
        if k in tensors:
            return tensors[k]
    big = [k for k, t in tensors.items() if t.dim() >= 2 and t.is_floating_point()]
    if len(big) == 1:
        return tensors[big[0]]
    raise RunFileError(f"{path}: cannot tell which tensor holds the activations (has {', '.join(sorted(tensors)) or 'none'}; "
                       f"name it one of {', '.join(KEYS)})")


def read_activations(path: str | os.PathLike[str], d_in: int, max_tokens: int | None = None) -> Float[Tensor, "n d"]:
    """All activations of a file or a folder of shards (sorted by name) as float32 [n, d_in] on the CPU."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".safetensors" and p.is_file())
        if not files:
            raise RunFileError(f"{path}: --acts folder holds no .safetensors shards")
    elif path.is_file():
        files = [path]
    else:
        raise RunFileError(f"{path}: --acts: no such file or folder")
    parts, n = [], 0
    for f in files:
        t = _pick(read_tensors(f), f)
        if not t.is_floating_point():
            raise RunFileError(f"{f}: activations have dtype {t.dtype}; they must be floating point (float32, "
                               "float16 or bfloat16)")
        if t.dim() < 2 or t.shape[-1] != d_in:
            raise RunFileError(f"{f}: activations have shape {tuple(t.shape)}; the SAEs need [..., d_in = {d_in}]")
        t = t.reshape(-1, d_in).float()
        if not bool(torch.isfinite(t).all()):
            raise RunFileError(f"{f}: activations hold NaN or Inf values")
        parts.append(t)
        n += t.shape[0]
        if max_tokens is not None and n >= max_tokens:
            break
    x = torch.cat(parts)[:max_tokens] if max_tokens is not None else torch.cat(parts)
    if x.shape[0] < 2:
        raise RunFileError(f"{path}: --acts holds {x.shape[0]} activation vector(s); need at least 2")
    return x
