"""Truth recovery on synthetic data: planted atoms (best cosine, MCC) and planted subspaces (assigned latents)."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from synthsae.metrics.matching import hungarian, maxcos, unit_rows
from synthsae.metrics.subspaces import orthonormal_basis

ATOM_RECOVERED = 0.9  # an atom is recovered when some latent has cos >= this with it
BLOCK_ASSIGN = 0.5  # a latent belongs to block b when ||U_b^T d_i||^2 >= this


def atom_recovery(dec: Float[Tensor, "m d"], atoms: Float[Tensor, "n d"], threshold: float = ATOM_RECOVERED) -> dict:
    """Per-atom best cosine over latents, MCC (mean Hungarian-matched cosine, unmatched atoms count 0) and the
    fraction of atoms recovered at best cosine >= threshold."""
    D, A = unit_rows(dec.float()), unit_rows(atoms.to(dec).float())
    best, best_latent = maxcos(A, D)
    partner, cos = hungarian(A, D)
    return {
        "best_cos": best,
        "best_latent": best_latent,
        "partner": partner,
        "mcc": float(cos.nan_to_num(0.0).mean()),
        "mean_best_cos": float(best.mean()),
        "frac_recovered": float((best >= threshold).float().mean()),
    }


def matched_mcc(dec: Float[Tensor, "m d"], atoms: Float[Tensor, "n d"]) -> float:
    """SynthSAEBench's MCC: one-to-one Hungarian matching of latents and atoms on |cos|, mean over the
    min(m, n) matched pairs (a dictionary narrower than the truth is not charged for the atoms it has no
    latent for, unlike `atom_recovery`'s mcc, which averages over every atom)."""
    D, A = unit_rows(dec.float()), unit_rows(atoms.to(dec).float())
    _, cos = hungarian(D, A, absolute=True)
    cos = cos[~torch.isnan(cos)]
    return float(cos.mean()) if cos.numel() else float("nan")


def atom_latents(dec: Float[Tensor, "m d"], atoms: Float[Tensor, "n d"], threshold: float = ATOM_RECOVERED) -> Int[Tensor, " m"]:
    """For each latent, the atom it recovers (best atom cosine >= threshold), else -1."""
    v, i = maxcos(unit_rows(dec.float()), unit_rows(atoms.to(dec).float()))
    return torch.where(v >= threshold, i, torch.full_like(i, -1))


def block_projection(dec: Float[Tensor, "m d"], bases: Float[Tensor, "n_blocks d r_max"]) -> Float[Tensor, "m n_blocks"]:
    """||U_b^T d_i||^2 of every unit latent in every planted block (zero-padded basis columns add nothing)."""
    D = unit_rows(dec.float())
    return torch.einsum("md,bdr->mbr", D, bases.to(D)).pow(2).sum(dim=2)


def block_members(dec: Float[Tensor, "m d"], bases: Float[Tensor, "n_blocks d r_max"], threshold: float = BLOCK_ASSIGN) -> Bool[Tensor, "m n_blocks"]:
    """The latents assigned to each block: ||U_b^T d_i||^2 >= threshold (docs/metrics.md, "Truth recovery"; a latent may sit in two)."""
    return block_projection(dec, bases) >= threshold


def subspace_recovery(latents: Float[Tensor, "n d"], basis: Float[Tensor, "d r"]) -> float:
    """||U^T Q||_F^2 / r, Q = the top-r singular directions of the latents (fewer latents than r count as missing)."""
    r = basis.shape[1]
    if latents.shape[0] == 0:
        return 0.0
    Q = orthonormal_basis(unit_rows(latents.float()).T, min(r, latents.shape[0]))
    return float((basis.double().T @ Q.double()).pow(2).sum() / r)


def subspace_recovery_baseline(r: int, d: int) -> float:
    """Expected subspace_recovery of a random r-dim span: r / d."""
    return r / d
