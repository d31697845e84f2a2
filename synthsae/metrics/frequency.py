"""Firing frequency per latent and its rank correlation with stability."""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from scipy.stats import spearmanr
from torch import Tensor


def firing_frequency(codes: Float[Tensor, "S B m"]) -> Float[Tensor, "S m"]:
    """Fraction of tokens on which each latent is non-zero."""
    return (codes != 0).float().mean(dim=1)


class FrequencyCounter:
    """Streaming firing counts over batches of codes [S, B, m] (so no [S, N, m] table is ever held)."""

    def __init__(self) -> None:
        self.counts: Tensor | None = None
        self.n = 0

    def update(self, codes: Float[Tensor, "S B m"]) -> None:
        c = (codes != 0).sum(dim=1).double().cpu()
        self.counts = c if self.counts is None else self.counts + c
        self.n += codes.shape[1]

    def frequency(self) -> Float[Tensor, "S m"]:
        return (self.counts / max(self.n, 1)).float()


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation (ties averaged); nan when either side is constant."""
    x, y = np.asarray(x.reshape(-1).double().cpu()), np.asarray(y.reshape(-1).double().cpu())
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def frequency_vs_stability(freq: Float[Tensor, "S m"], stab: Float[Tensor, "S m"], n_bins: int = 10) -> dict:
    """Spearman(log10 frequency, stability) over live latents, dead count, mean stability per frequency decile."""
    alive = freq > 0
    lf = torch.log10(freq.clamp_min(1e-12))
    bins = []
    if alive.any():
        v, s = lf[alive], stab[alive]
        edges = torch.quantile(v.double(), torch.linspace(0, 1, n_bins + 1, dtype=torch.float64))
        for i in range(n_bins):
            sel = (v >= edges[i]) & ((v <= edges[i + 1]) if i == n_bins - 1 else (v < edges[i + 1]))
            if sel.any():
                bins.append({"log10_freq_lo": float(edges[i]), "log10_freq_hi": float(edges[i + 1]),
                             "n": int(sel.sum()), "mean_stability": float(s[sel].mean())})
    return {
        "spearman_log_freq_stability": spearman(lf[alive], stab[alive]) if alive.sum() >= 3 else float("nan"),
        "n_dead": int((~alive).sum()),
        "frac_dead": float((~alive).float().mean()),
        "median_log10_freq": float(lf[alive].median()) if alive.any() else float("nan"),
        "by_decile": bins,
    }
