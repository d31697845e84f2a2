"""What every format loader shares: the result of loading one folder, file readers with one-line errors, and
building one of our single-seed SAEs from canonical tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from synthsae.config import SAEConfig
from synthsae.io import RunFileError, read_tensors
from synthsae.sae import get_variant
from synthsae.sae.base import SAE


@dataclass
class Provenance:
    """Where one seed came from: enough for a reader of the report to find and re-load it."""

    path: str
    format: str  # saelens | sparsify | dictionary_learning
    library: str  # the library that wrote the files
    version: str | None  # that library's version as recorded in the files (None when the files do not say)
    architecture: str  # the architecture as the files name it
    variant: str  # our variant it was loaded as
    d_in: int
    d_sae: int
    details: dict[str, Any] = field(default_factory=dict)  # format-specific facts (hook name, k, trainer seed ...)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class LoadedSAE:
    """One folder loaded: a single-seed SAE (S = 1), its stored firing frequency and where it came from."""

    sae: SAE
    frequency: Float[Tensor, " m"] | None  # plain frequencies in [0, 1] (dead = 0); None = the files hold none
    frequency_source: str | None
    provenance: Provenance
    init_seed: int | None = None  # the training seed when the files record one


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file on the CPU (one-line RunFileError when missing or damaged)."""
    return read_tensors(path)


def need_int(cfg: dict[str, Any], key: str, where: Path) -> int:
    from synthsae.io import MAX_DIM, short_repr

    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_DIM:
        raise RunFileError(f"{where}: field {key!r} missing or not an integer 1..{MAX_DIM} (found {short_repr(v)})")
    return v


def need_tensor(tensors: dict[str, Tensor], key: str, shape: tuple[int, ...], where: Path) -> Tensor:
    """tensors[key] with exactly `shape` and finite values, as float32 (one-line error otherwise)."""
    if key not in tensors:
        raise RunFileError(f"{where}: tensor {key!r} missing (has {', '.join(sorted(tensors)) or 'none'})")
    t = tensors[key]
    if tuple(t.shape) != tuple(shape):
        raise RunFileError(f"{where}: tensor {key!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if not t.is_floating_point():
        raise RunFileError(f"{where}: tensor {key!r} has dtype {t.dtype}; weights must be floating point")
    if not bool(torch.isfinite(t).all()):
        raise RunFileError(f"{where}: tensor {key!r} holds NaN or Inf values")
    return t.detach().to(torch.float32)


def need_scalar(tensors: dict[str, Tensor], key: str, where: Path) -> float:
    """The single finite value of tensors[key] (a 0-d or one-element tensor)."""
    if key not in tensors:
        raise RunFileError(f"{where}: tensor {key!r} missing (has {', '.join(sorted(tensors)) or 'none'})")
    t = tensors[key].reshape(-1)
    if t.numel() != 1 or not bool(torch.isfinite(t.float()).all()):
        raise RunFileError(f"{where}: tensor {key!r} must hold one finite value (has {t.numel()})")
    return float(t[0])


def build_sae(variant: str, d_in: int, d_sae: int, tensors: dict[str, Tensor], *, k: int = 1,
              apply_b_dec_to_input: bool = True, where: Path) -> SAE:
    """Our single-seed SAE of `variant` from tensors in our own per-seed names (io.seed_tensors' names)."""
    cfg = SAEConfig(variant=variant, d_sae=d_sae, k=k, apply_b_dec_to_input=apply_b_dec_to_input)
    cls = get_variant(variant)
    sae = cls.empty_like(cfg, d_in, [0], device="cpu", dtype=torch.float32)
    try:
        sae.load_seed_tensors([tensors])
    except (KeyError, RuntimeError) as exc:
        raise RunFileError(f"{where}: cannot build a {variant} SAE from these tensors ({exc})") from None
    return sae
