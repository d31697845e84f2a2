"""What each latent fires on: its top token, the share of its activation mass on that token, token entropy, frequency.

surface-form score of latent i = (activation mass of i on its top token) / (all activation mass of i), where the
top token is the token id carrying the most mass; 1 = fires on one token only. Token entropy (bits) is the
entropy of the token ids of its firings, weighted by count. Latents that never fire get NaN.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor


@torch.no_grad()
def latent_token_stats(
    sae, x: Float[Tensor, "n d"], token_ids: Int[Tensor, " n"], batch_size: int = 4096, top_rows: int = 3
) -> dict[str, Tensor]:
    """Per seed and latent: frequency, surface_score, token_entropy, top_token, and its top_rows strongest rows."""
    S, m = sae.W_dec.shape[0], sae.W_dec.shape[1]
    n = x.shape[0]
    lat_l, tok_l, val_l, row_l = [[] for _ in range(S)], [[] for _ in range(S)], [[] for _ in range(S)], [[] for _ in range(S)]
    for a in range(0, n, batch_size):
        acts = sae.encode(x[a : a + batch_size].to(sae.W_dec.device)).cpu()  # [S, b, m]
        for s in range(S):
            r, lat = torch.nonzero(acts[s] > 0, as_tuple=True)
            lat_l[s].append(lat)
            row_l[s].append(r + a)
            tok_l[s].append(token_ids[r + a])
            val_l[s].append(acts[s][r, lat])
    out = {k: torch.full((S, m), float("nan")) for k in ("surface_score", "token_entropy")}
    out["frequency"] = torch.zeros(S, m)
    out["top_token"] = torch.full((S, m), -1, dtype=torch.long)
    out["top_rows"] = torch.full((S, m, top_rows), -1, dtype=torch.long)
    for s in range(S):
        lat = torch.cat(lat_l[s]).numpy()
        tok = torch.cat(tok_l[s]).numpy().astype(np.int64)
        val = torch.cat(val_l[s]).double().numpy()
        row = torch.cat(row_l[s]).numpy()
        if lat.size == 0:
            continue
        V = int(tok.max()) + 1
        key = lat.astype(np.int64) * V + tok
        uk, inv = np.unique(key, return_inverse=True)
        mass = np.bincount(inv, weights=val)
        cnt = np.bincount(inv).astype(np.float64)
        ul = uk // V
        ut = uk % V
        total_mass = np.bincount(ul, weights=mass, minlength=m)
        total_cnt = np.bincount(ul, weights=cnt, minlength=m)
        # top token per latent: the (latent, token) pair with most mass
        order = np.lexsort((-mass, ul))
        first = np.ones(order.size, dtype=bool)
        first[1:] = ul[order][1:] != ul[order][:-1]
        top = order[first]
        fired = total_cnt > 0
        surf = np.full(m, np.nan)
        surf[ul[top]] = mass[top] / total_mass[ul[top]]
        toptok = np.full(m, -1, dtype=np.int64)
        toptok[ul[top]] = ut[top]
        p = cnt / total_cnt[ul]
        ent = np.zeros(m)
        np.add.at(ent, ul, -p * np.log2(p))
        ent[~fired] = np.nan
        out["surface_score"][s] = torch.from_numpy(surf).float()
        out["token_entropy"][s] = torch.from_numpy(ent).float()
        out["frequency"][s] = torch.from_numpy(total_cnt / n).float()
        out["top_token"][s] = torch.from_numpy(toptok)
        o2 = np.lexsort((-val, lat))
        l_sorted = lat[o2]
        starts = np.searchsorted(l_sorted, np.arange(m))
        ends = np.searchsorted(l_sorted, np.arange(m), side="right")
        tr = out["top_rows"][s]
        for j in range(top_rows):
            has = starts + j < ends
            idx = np.where(has)[0]
            tr[idx, j] = torch.from_numpy(row[o2[starts[idx] + j]].astype(np.int64))
    return out


_SHOWN = {" ": "␣", "\n": "⏎", "\t": "⇥", "\r": "␍"}


def visible_token(text: str) -> str:
    """A token's text as printed in an example: whitespace-only tokens made visible (space ␣, newline ⏎, tab ⇥, other
    whitespace as its escape), everything else as it is."""
    if text.strip():
        return text
    return "".join(_SHOWN.get(ch, repr(ch)[1:-1]) for ch in text) or "∅"


def context_snippet(tokenizer, window: Int[Tensor, " T"], pos: int, before: int = 10, after: int = 3) -> str:
    """The text around position `pos` of a window with the token itself marked as [[token]] (whitespace made
    visible: a bare space is [[␣]], a newline [[⏎]]); newlines in the context print as ⏎."""
    dec = lambda ids: tokenizer.decode([int(i) for i in ids])  # noqa: E731
    left = dec(window[max(0, pos - before) : pos])
    mid = visible_token(dec(window[pos : pos + 1]))
    right = dec(window[pos + 1 : pos + 1 + after])
    return (left + "[[" + mid + "]]" + right).replace("\n", "⏎")


def same_contexts_note(seen: dict, rows: tuple, label: str) -> str:
    """' (the same N strongest contexts as <earlier latent>...)' when an example latent's strongest firings are those of
    one shown before (say why two latents show identical contexts), else ''; records `label` for these rows."""
    note = (f" (the same {len(rows)} strongest contexts as {seen[rows]}: both fire hardest on these tokens)"
            if rows and rows in seen else "")
    seen.setdefault(rows, label)
    return note


EXAMPLE_SEED = 0  # random choice of the example latents


def pick_examples(stab: np.ndarray, freq: np.ndarray, cutoffs: tuple[float, float], n: int = 4,
                  seed: int = EXAMPLE_SEED) -> dict[str, np.ndarray]:
    """Example latents of one seed: n drawn at random (numpy seed `seed`, sorted) among the stable (stability >=
    cutoffs[0]) and among the unstable (<= cutoffs[1]) live latents, always-on latents (frequency >= ALWAYS_ON)
    left out: a fair sample of each group, not its most frequent members."""
    from synthsae.metrics.frequency import ALWAYS_ON

    rng = np.random.default_rng(seed)
    ok = (freq > LIVE_FREQ) & (freq < ALWAYS_ON)
    out = {}
    for name, sel in (("stable", stab >= cutoffs[0]), ("unstable", stab <= cutoffs[1])):
        idx = np.nonzero(sel & ok)[0]
        out[name] = np.sort(rng.choice(idx, size=min(n, idx.size), replace=False)) if idx.size else idx
    return out


TRIGGER_STATS = ("surface_score", "token_entropy", "frequency")
NULL_DRAWS = 200  # random splits of the live latents in the trigger null
LIVE_FREQ = 1e-5  # a latent is live at frequency > this (as in the ablation)


def _group_row(st: dict[str, np.ndarray], g: np.ndarray) -> dict:
    """n, mean and median of each trigger statistic over the latents in g, and the share with surface score >= 0.5."""
    row: dict = {"n": int(g.sum())}
    for key in TRIGGER_STATS:
        v = st[key][g]
        v = v[np.isfinite(v)]
        row[f"{key}_mean"] = float(v.mean()) if v.size else None
        row[f"{key}_median"] = float(np.median(v)) if v.size else None
    sv = st["surface_score"][g]
    sv = sv[np.isfinite(sv)]
    row["frac_surface_ge_0.5"] = float((sv >= 0.5).mean()) if sv.size else None
    return row


def split_null(st: dict[str, np.ndarray], live: np.ndarray, n_stable: int, n_unstable: int,
               draws: int = NULL_DRAWS, seed: int = 0) -> dict:
    """The stable / unstable comparison with the groups replaced by random disjoint groups of the same sizes drawn
    from the live latents (every seed pooled, as the groups are): per statistic, the 5% / 50% / 95% quantiles over
    draws of median(random 'unstable') - median(random 'stable'). What a split that ignores stability gives."""
    ok = live & np.isfinite(st["surface_score"]) & np.isfinite(st["token_entropy"])
    pool = {k: st[k][ok].astype(np.float64) for k in TRIGGER_STATS}
    n = int(ok.sum())
    out: dict = {"draws": draws, "seed": seed, "n_pool": n, "n_stable": n_stable, "n_unstable": n_unstable,
                 "what": "median(random group of n_unstable live latents) - median(disjoint random group of n_stable)"}
    if n_stable < 1 or n_unstable < 1 or n_stable + n_unstable > n:
        return out
    rng = np.random.default_rng(seed)
    diffs = {k: np.empty(draws) for k in TRIGGER_STATS}
    for i in range(draws):
        perm = rng.permutation(n)
        u, s = perm[:n_unstable], perm[n_unstable : n_unstable + n_stable]
        for k in TRIGGER_STATS:
            diffs[k][i] = np.median(pool[k][u]) - np.median(pool[k][s])
    for k in TRIGGER_STATS:
        q05, q50, q95 = np.quantile(diffs[k], [0.05, 0.5, 0.95])
        out[f"{k}_median_diff"] = {"q05": float(q05), "q50": float(q50), "q95": float(q95)}
    return out


def trigger_summary(st: dict[str, np.ndarray], stab: np.ndarray, stable_cutoff: float, unstable_cutoff: float,
                    eval_tokens: int, draws: int = NULL_DRAWS) -> dict:
    """metrics.json's "triggers": stable and unstable live latents' trigger statistics, and the random-split null."""
    live = st["frequency"] > LIVE_FREQ
    res: dict = {"eval_tokens": int(eval_tokens),
                 "definition": "surface_score = activation mass on the latent's top token / all its mass; "
                               "token_entropy in bits over the token ids of its firings"}
    for name, g in (("stable", stab >= stable_cutoff), ("unstable", stab <= unstable_cutoff)):
        res[name] = _group_row(st, g & live)
    res["null"] = split_null(st, live, res["stable"]["n"], res["unstable"]["n"], draws)
    return res
