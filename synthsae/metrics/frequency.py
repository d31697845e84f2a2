"""Firing frequency per latent and its rank correlation with stability."""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
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
    from scipy.stats import spearmanr  # scipy.stats takes ~0.6 s to import: only when a correlation is asked for

    return float(spearmanr(x, y).statistic)


LOG10_FLOOR = -10.0  # sparsity.safetensors stores log10(freq + 1e-10) (SAELens); at the floor = never fired


def frequency_from_log10(log10_freq: Tensor, floor: float = LOG10_FLOOR) -> Tensor:
    """Firing frequency from a stored log10 frequency; values at the floor (within 1e-3) read back as dead (0)."""
    x = log10_freq.double()
    return torch.where(x <= floor + 1e-3, torch.zeros_like(x), torch.pow(10.0, x)).float()


def decile_table(log10_freq: Float[Tensor, " n"], stab: Float[Tensor, " n"], n_bins: int = 10) -> list:
    """Mean stability per equal-count bin of log10 frequency (the latents given: pass live ones only)."""
    from synthsae.results import DecileRow

    rows = []
    if log10_freq.numel() == 0:
        return rows
    v, s = log10_freq.double(), stab.double()
    edges = torch.quantile(v, torch.linspace(0, 1, n_bins + 1, dtype=torch.float64))
    for i in range(n_bins):
        sel = (v >= edges[i]) & ((v <= edges[i + 1]) if i == n_bins - 1 else (v < edges[i + 1]))
        if sel.any():
            rows.append(DecileRow(float(edges[i]), float(edges[i + 1]), int(sel.sum()), float(s[sel].mean())))
    return rows


def frequency_vs_stability(freq: Float[Tensor, "S m"], stab: Float[Tensor, "S m"], n_bins: int = 10) -> dict:
    """Spearman(log10 frequency, stability) over live latents (frequency > 0), dead count, deciles."""
    alive = freq > 0
    lf = torch.log10(freq.clamp_min(1e-12))
    return {
        "spearman_log_freq_stability": spearman(lf[alive], stab[alive]) if alive.sum() >= 3 else float("nan"),
        "n_dead": int((~alive).sum()),
        "frac_dead": float((~alive).float().mean()),
        "by_decile": decile_table(lf[alive], stab[alive], n_bins),
    }


ALWAYS_ON = 0.99  # a latent firing on at least this share of held-out tokens is "always on" (a bias, not a feature)
RARITY_DRAWS = 200  # random disjoint splits of the live latents in the rarity null


def rarity_test(log10_freq: Float[Tensor, " n"], stable: Tensor, unstable: Tensor, draws: int = RARITY_DRAWS,
                seed: int = 0) -> dict:
    """'Unstable latents fire less often', once: median log10 frequency of the unstable minus the stable latents
    (the latents given: pass live ones), and the 5% / 50% / 95% quantiles of the same difference for random disjoint
    groups of the same sizes drawn from all of them (what a split that ignores stability gives)."""
    v = np.asarray(log10_freq.double().cpu())
    st, un = np.asarray(stable.cpu()).astype(bool), np.asarray(unstable.cpu()).astype(bool)
    ns, nu, n = int(st.sum()), int(un.sum()), v.size
    out = {"diff": None, "q05": None, "q50": None, "q95": None, "n_stable": ns, "n_unstable": nu, "draws": draws}
    if ns < 1 or nu < 1:
        return out
    out["diff"] = float(np.median(v[un]) - np.median(v[st]))
    if ns + nu > n:
        return out
    rng = np.random.default_rng(seed)
    d = np.empty(draws)
    for i in range(draws):
        p = rng.permutation(n)
        d[i] = np.median(v[p[:nu]]) - np.median(v[p[nu : nu + ns]])
    out["q05"], out["q50"], out["q95"] = (float(q) for q in np.quantile(d, [0.05, 0.5, 0.95]))
    return out


def always_on(freq: Float[Tensor, "S m"], stable: Tensor, cutoff: float = ALWAYS_ON) -> dict:
    """Latents firing on >= cutoff of the tokens: how many per seed, and how many of them are stable."""
    on = freq >= cutoff
    return {"per_seed": on.sum(1).tolist(), "stable": int((on & stable).sum()), "cutoff": cutoff}
