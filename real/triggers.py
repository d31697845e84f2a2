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


def context_snippet(tokenizer, window: Int[Tensor, " T"], pos: int, before: int = 10, after: int = 3) -> str:
    """The text around position `pos` of a window with the token itself marked as [[token]]."""
    dec = lambda ids: tokenizer.decode([int(i) for i in ids])  # noqa: E731
    left = dec(window[max(0, pos - before) : pos])
    mid = dec(window[pos : pos + 1])
    right = dec(window[pos + 1 : pos + 1 + after])
    return (left + "[[" + mid + "]]" + right).replace("\n", "⏎")
