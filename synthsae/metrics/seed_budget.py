"""How many seeds are enough? The stability numbers of n < S seeds against those of all S seeds.

A latent's stability is the fraction of the other seeds in which it is matched at score >= tau, and every match
is decided seed pair by seed pair (`stability.pair_scores`), so the stability of a latent of seed a among a subset
T of the seeds is read off the same [S, S, m] table: the mean over b in T, b != a, of the hit (a, b). For every
n = 2 .. S-1 and every subset of n seeds (or `max_subsets` of them drawn with a fixed seed when there are more),
this module compares the subset's stable share, mean stability and per-latent stabilities with the all-S values.
At n = S the only subset is all seeds (spread 0 by construction), so n = S is not reported. The spread is against
the all-S value, which shares seeds with every subset: for n close to S it understates how far n fresh seeds
would land, and it is the most honest for n <= S / 2.
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from synthsae.results import SeedBudgetResult, SeedBudgetRow

MAX_SUBSETS = 200  # all subsets when there are at most this many, else this many drawn at random
SAMPLE_SEED = 2024
TARGET = 0.05  # the smallest n from which the stable share is within +- this (95%) is named
QUANTILE = 0.95


def subsets(S: int, n: int, max_subsets: int = MAX_SUBSETS, seed: int = SAMPLE_SEED) -> tuple[list[tuple[int, ...]], bool]:
    """Every n-subset of range(S) when there are at most max_subsets, else max_subsets distinct ones drawn at
    random (seeded); the flag says whether the list is complete."""
    total = math.comb(S, n)
    if total <= max_subsets:
        return list(itertools.combinations(range(S), n)), True
    rng = random.Random(seed * 1_000_003 + S * 1009 + n)
    seen: set[tuple[int, ...]] = set()
    while len(seen) < max_subsets:
        seen.add(tuple(sorted(rng.sample(range(S), n))))
    return sorted(seen), False


def subset_stability(hit: Bool[Tensor, "S S m"], seeds: tuple[int, ...]) -> Float[Tensor, "n m"]:
    """Per-latent stability of the latents of `seeds` among `seeds` only (the diagonal of hit must be False)."""
    idx = torch.tensor(seeds)
    sub = hit[idx][:, idx]
    return sub.sum(dim=1).float() / (len(seeds) - 1)


def _q(x: np.ndarray) -> float | None:
    return float(np.quantile(x, QUANTILE)) if x.size else None


def seed_budget(
    scores: Float[Tensor, "S S m"], tau: float, live: Bool[Tensor, "S m"], stable_cutoff: float,
    max_subsets: int = MAX_SUBSETS, seed: int = SAMPLE_SEED, target: float = TARGET,
) -> SeedBudgetResult | None:
    """The spread of the stable share, mean stability and per-latent stability at every n = 2 .. S-1 (None: S < 3)."""
    S = scores.shape[0]
    if S < 3:
        return None
    hit = scores >= tau  # nan (diagonal, unmatched) compares False
    full = hit.sum(dim=1).float() / (S - 1)
    ref_share = float((full[live] >= stable_cutoff).float().mean()) if live.any() else float("nan")
    ref_mean = float(full[live].mean()) if live.any() else float("nan")
    rows = []
    for n in range(2, S):
        sets, complete = subsets(S, n, max_subsets, seed)
        shares, means, dev = [], [], []
        for T in sets:
            st = subset_stability(hit, T)
            lv = live[list(T)]
            if not lv.any():
                continue
            v = st[lv]
            shares.append(float((v >= stable_cutoff).float().mean()))
            means.append(float(v.mean()))
            dev.append((v - full[list(T)][lv]).abs().numpy())
        sh, mn = np.array(shares), np.array(means)
        dv = np.concatenate(dev) if dev else np.zeros(0)
        rows.append(SeedBudgetRow(
            n=n, n_subsets=len(sets), all_subsets=complete,
            stable_share_mean=float(sh.mean()) if sh.size else None,
            stable_share_std=float(sh.std()) if sh.size else None,
            stable_share_within=_q(np.abs(sh - ref_share)),
            mean_stability_mean=float(mn.mean()) if mn.size else None,
            mean_stability_within=_q(np.abs(mn - ref_mean)),
            latent_within=_q(dv), latent_mean_abs_dev=float(dv.mean()) if dv.size else None))
    first = smallest_n(rows, target)
    return SeedBudgetResult(
        seeds=S, tau=tau, stable_cutoff=stable_cutoff, max_subsets=max_subsets, sample_seed=seed,
        quantile=QUANTILE, target=target, stable_share_all=ref_share, mean_stability_all=ref_mean, rows=rows,
        smallest_n_within_target=first)


def smallest_n(rows: list[SeedBudgetRow], target: float) -> int | None:
    """The smallest n from which every reported n gives the stable share within +- target. The stable cut-off needs
    ceil(cutoff (n-1)) matches, a step function of n, so the spread is not monotone in n and one lucky n says little."""
    ok = [r.stable_share_within is not None and r.stable_share_within <= target for r in rows]
    first = None
    for r, good in zip(reversed(rows), reversed(ok)):
        if not good:
            break
        first = r.n
    return first


def budget_sentence(sb: SeedBudgetResult, n: int | None = None) -> str:
    """'n seeds give the stable share to within +-x (95%)' for the given n (default: the smallest reported)."""
    rows = {r.n: r for r in sb.rows}
    r = rows.get(n if n is not None else min(rows)) if rows else None
    if r is None or r.stable_share_within is None:
        return "no subsets of fewer seeds to compare with"
    return (f"{r.n} seeds give the stable share to within +-{r.stable_share_within:.3f} ({sb.quantile:.0%}) of the "
            f"{sb.seeds}-seed value {sb.stable_share_all:.3f}")
