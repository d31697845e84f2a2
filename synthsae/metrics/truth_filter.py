"""Does stability mark true features? Per-latent stability as a score for "this latent is a planted feature".

A live latent is *true* when its decoder row matches a planted atom (cos >= TRUE_ATOM_COS) or lies in a planted
block (squared projection >= TRUE_BLOCK_PROJ2); every other live latent is *not true*. The AUROC of stability
(and of soft stability) for that label says how well ranking by stability separates the two; precision and recall
of "stable" (stability >= stable_cutoff) say what the usual filter keeps. The null is the rotated-seeds null's
stability with the same labels: it went through the same matching, so its AUROC is what chance gives (about 0.5).
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from synthsae.metrics.recovery import atom_latents, block_projection
from synthsae.results import Chance, TruthFilterResult

TRUE_ATOM_COS = 0.9  # a latent is a planted atom at cos >= this
TRUE_BLOCK_PROJ2 = 0.9  # ... or lies in a planted block at ||U_b^T d||^2 >= this
LABEL_RULE = (f"true: cos >= {TRUE_ATOM_COS} with a planted atom or squared projection >= {TRUE_BLOCK_PROJ2} into a "
              "planted block; not true: every other live latent")


def auroc(score: Float[Tensor, " n"], label: Bool[Tensor, " n"]) -> float | None:
    """Area under the ROC curve of `score` for `label` (Mann-Whitney, ties count one half); None without both classes."""
    s = np.asarray(score.detach().cpu().double())
    y = np.asarray(label.detach().cpu().bool())
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties (1-based)
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def true_labels(dec: Float[Tensor, "S m d"], truth) -> tuple[Bool[Tensor, "S m"], Bool[Tensor, "S m"]]:
    """(on an atom, in a block) for every latent of every seed, by the rule of LABEL_RULE."""
    S, m, _ = dec.shape
    atoms = truth.atoms.float().cpu()
    bases = truth.subspaces.float().cpu()
    on_atom = torch.zeros(S, m, dtype=torch.bool)
    in_block = torch.zeros(S, m, dtype=torch.bool)
    for s in range(S):
        if atoms.shape[0]:
            on_atom[s] = atom_latents(dec[s], atoms, TRUE_ATOM_COS) >= 0
        if truth.n_blocks:
            in_block[s] = block_projection(dec[s], bases).max(dim=1).values >= TRUE_BLOCK_PROJ2
    return on_atom, in_block


def detector(stab: Tensor, label: Tensor, cutoff: float) -> tuple[float | None, float | None]:
    """Precision and recall of "stability >= cutoff" as a detector of `label` (None where undefined)."""
    kept = stab >= cutoff
    n_kept, n_true = int(kept.sum()), int(label.sum())
    precision = float((kept & label).sum()) / n_kept if n_kept else None
    recall = float((kept & label).sum()) / n_true if n_true else None
    return precision, recall


def truth_filter(
    dec: Float[Tensor, "S m d"], truth, live: Bool[Tensor, "S m"], stab: Tensor, soft: Tensor,
    null_stab: Tensor, null_soft: Tensor, stable_cutoff: float,
) -> tuple[TruthFilterResult, Bool[Tensor, "S m"]]:
    """The truth-filter numbers over live latents, and the per-latent true label [S, m]."""
    on_atom, in_block = true_labels(dec.detach().float().cpu(), truth)
    true = on_atom | in_block
    y = true[live]
    prec, rec = detector(stab[live], y, stable_cutoff)
    nprec, nrec = detector(null_stab[live], y, stable_cutoff)
    atoms_vs_rest = live & ~(in_block & ~on_atom)  # block-only latents left out
    blocks_vs_rest = live & ~(on_atom & ~in_block)
    n_live = int(live.sum())
    res = TruthFilterResult(
        label_rule=LABEL_RULE, stable_cutoff=stable_cutoff, n_live=n_live, n_true=int(y.sum()),
        n_true_atom=int((on_atom & live).sum()), n_true_block=int((in_block & live).sum()),
        base_rate=float(y.float().mean()) if n_live else None,
        auroc=Chance(auroc(stab[live], y), auroc(null_stab[live], y)),
        auroc_soft=Chance(auroc(soft[live], y), auroc(null_soft[live], y)),
        precision=Chance(prec, nprec), recall=Chance(rec, nrec),
        frac_stable=float((stab[live] >= stable_cutoff).float().mean()) if n_live else None,
        auroc_atoms=auroc(stab[atoms_vs_rest], true[atoms_vs_rest]),
        auroc_blocks=auroc(stab[blocks_vs_rest], true[blocks_vs_rest]),
        mean_stability_true=float(stab[live & true].mean()) if bool((live & true).any()) else None,
        mean_stability_not_true=float(stab[live & ~true].mean()) if bool((live & ~true).any()) else None,
    )
    return res, true
