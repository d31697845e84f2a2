"""Matching latents between two dictionaries: best cosine (maxcos), one-to-one (Hungarian), strict enc+dec.

All cosine work is chunked over rows so that an m x n cosine matrix is never held for large m.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

DEFAULT_CHUNK = 4096  # rows per cosine block, capped so a block holds at most BLOCK_ELEMS entries
BLOCK_ELEMS = 1 << 26  # 64M floats = 256 MB per [rows, n] cosine block
SPARSE_HUNGARIAN_FROM = 16384  # m at which `hungarian` switches to the sparse candidate graph


def unit_rows(w: Float[Tensor, "*b m d"], eps: float = 1e-12) -> Float[Tensor, "*b m d"]:
    """Rows scaled to unit norm (cosines are between unit-normalised decoder rows)."""
    return w / w.norm(dim=-1, keepdim=True).clamp_min(eps)


def cos_chunks(a: Float[Tensor, "m d"], b: Float[Tensor, "n d"], chunk: int = DEFAULT_CHUNK) -> Iterator[tuple[int, Tensor]]:
    """Yield (row offset, cos[rows, n]) blocks of the cosine matrix of unit rows a and b."""
    chunk = max(1, min(chunk, BLOCK_ELEMS // max(b.shape[0], 1)))
    for s in range(0, a.shape[0], chunk):
        yield s, a[s : s + chunk] @ b.T


def maxcos(
    a: Float[Tensor, "m d"], b: Float[Tensor, "n d"], chunk: int = DEFAULT_CHUNK
) -> tuple[Float[Tensor, " m"], Int[Tensor, " m"]]:
    """For each (unit) row of a, its best signed cosine in b and the index of that row."""
    vals = torch.empty(a.shape[0], device=a.device, dtype=a.dtype)
    idx = torch.empty(a.shape[0], device=a.device, dtype=torch.long)
    for s, c in cos_chunks(a, b, chunk):
        v, i = c.max(dim=1)
        vals[s : s + len(v)], idx[s : s + len(v)] = v, i
    return vals, idx


def maxcos_both(
    a: Float[Tensor, "m d"], b: Float[Tensor, "n d"], chunk: int = DEFAULT_CHUNK
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """maxcos in both directions from one pass over the chunks: (a->b vals, idx, b->a vals, idx)."""
    va = torch.empty(a.shape[0], device=a.device, dtype=a.dtype)
    ia = torch.empty(a.shape[0], device=a.device, dtype=torch.long)
    vb = torch.full((b.shape[0],), -float("inf"), device=a.device, dtype=a.dtype)
    ib = torch.zeros(b.shape[0], device=a.device, dtype=torch.long)
    for s, c in cos_chunks(a, b, chunk):
        v, i = c.max(dim=1)
        va[s : s + len(v)], ia[s : s + len(v)] = v, i
        cv, ci = c.max(dim=0)
        better = cv > vb
        vb = torch.where(better, cv, vb)
        ib = torch.where(better, ci + s, ib)
    return va, ia, vb, ib


def topk_cos(
    a: Float[Tensor, "m d"], b: Float[Tensor, "n d"], k: int, chunk: int = DEFAULT_CHUNK, absolute: bool = False
) -> tuple[Float[Tensor, "m k"], Int[Tensor, "m k"]]:
    """For each row of a, its k best cosines in b (descending; by |cos| when absolute) and their indices."""
    k = min(k, b.shape[0])
    vals = torch.empty(a.shape[0], k, device=a.device, dtype=a.dtype)
    idx = torch.empty(a.shape[0], k, device=a.device, dtype=torch.long)
    for s, c in cos_chunks(a, b, chunk):
        v, i = (c.abs() if absolute else c).topk(k, dim=1)
        vals[s : s + len(v)], idx[s : s + len(v)] = v, i
    return vals, idx


def hungarian_dense(
    a: Float[Tensor, "m d"], b: Float[Tensor, "n d"], absolute: bool = False
) -> tuple[Int[Tensor, " m"], Float[Tensor, " m"]]:
    """One-to-one assignment maximising total cosine (|cos| when absolute; scipy linear_sum_assignment).

    Returns partner[m] (-1 where a row is left unmatched because n < m) and the matched cosine (nan there).
    """
    c = (a @ b.T).double().cpu().numpy()
    if absolute:
        c = np.abs(c)
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(c, maximize=True)
    return _pack(rows, cols, c[rows, cols], a.shape[0], a.device)


def hungarian_sparse(
    a: Float[Tensor, "m d"], b: Float[Tensor, "n d"], k: int = 32, chunk: int = DEFAULT_CHUNK, absolute: bool = False
) -> tuple[Int[Tensor, " m"], Float[Tensor, " m"]]:
    """One-to-one assignment on a sparse candidate graph (top-k partners of every row in both directions).

    The diagonal pairs (i, i) are always added so that a full matching exists; edge cost is 2 - cos > 0, and
    scipy's min_weight_full_bipartite_matching solves it. Exact whenever the optimum uses candidate edges only
    (always when k >= n). Requires m <= n (swap the arguments otherwise). absolute=True matches on |cos|.
    """
    m, n = a.shape[0], b.shape[0]
    if m > n:
        pb, cb = hungarian_sparse(b, a, k, chunk, absolute)
        partner = torch.full((m,), -1, dtype=torch.long, device=a.device)
        cosv = torch.full((m,), float("nan"), device=a.device)
        ok = pb >= 0
        partner[pb[ok]] = torch.nonzero(ok).squeeze(1)
        cosv[pb[ok]] = cb[ok].to(cosv.dtype)
        return partner, cosv
    va, ia = topk_cos(a, b, k, chunk, absolute)  # row candidates
    vb, ib = topk_cos(b, a, min(k, m), chunk, absolute)  # column candidates (b rows choose a rows)
    diag = (a * b[:m]).sum(dim=1)
    diag = diag.abs() if absolute else diag
    rows = torch.cat([torch.arange(m, device=a.device).repeat_interleave(va.shape[1]), ib.reshape(-1),
                      torch.arange(m, device=a.device)])
    cols = torch.cat([ia.reshape(-1), torch.arange(n, device=a.device).repeat_interleave(vb.shape[1]),
                      torch.arange(m, device=a.device)])
    vals = torch.cat([va.reshape(-1), vb.reshape(-1), diag])
    r, c_, v = rows.cpu().numpy(), cols.cpu().numpy(), vals.double().cpu().numpy()
    key = r.astype(np.int64) * n + c_  # deduplicate edges (the same pair may come from both sides)
    _, first = np.unique(key, return_index=True)
    r, c_, v = r[first], c_[first], v[first]
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    graph = csr_matrix((2.0 - v + 1e-9, (r, c_)), shape=(m, n))
    rows_i, match = min_weight_full_bipartite_matching(graph)  # row rows_i[j] -> column match[j]
    rows_i, match = np.asarray(rows_i, dtype=np.int64), np.asarray(match, dtype=np.int64)
    ti, tm = torch.from_numpy(rows_i).to(a.device), torch.from_numpy(match).to(a.device)
    cos_m = (a[ti] * b[tm]).sum(dim=1)
    cos_m = (cos_m.abs() if absolute else cos_m).double().cpu().numpy()
    return _pack(rows_i, match, cos_m, m, a.device)


def _pack(rows: np.ndarray, cols: np.ndarray, cos: np.ndarray, m: int, device: torch.device) -> tuple[Tensor, Tensor]:
    partner = torch.full((m,), -1, dtype=torch.long)
    cosv = torch.full((m,), float("nan"))
    partner[torch.as_tensor(rows, dtype=torch.long)] = torch.as_tensor(cols, dtype=torch.long)
    cosv[torch.as_tensor(rows, dtype=torch.long)] = torch.as_tensor(cos, dtype=torch.float32)
    return partner.to(device), cosv.to(device)


def hungarian(
    a: Float[Tensor, "m d"], b: Float[Tensor, "n d"], sparse: bool | None = None, k: int = 32, absolute: bool = False
) -> tuple[Int[Tensor, " m"], Float[Tensor, " m"]]:
    """One-to-one matching of unit rows (on |cos| when absolute): dense solver for small m, sparse from m >= 16k."""
    if sparse is None:
        sparse = max(a.shape[0], b.shape[0]) >= SPARSE_HUNGARIAN_FROM
    return hungarian_sparse(a, b, k, absolute=absolute) if sparse else hungarian_dense(a, b, absolute)


def strict_match(
    dec_a: Float[Tensor, "m d"], dec_b: Float[Tensor, "n d"], enc_a: Float[Tensor, "m d"], enc_b: Float[Tensor, "n d"],
    sparse: bool | None = None,
) -> tuple[Int[Tensor, " m"], Float[Tensor, " m"]]:
    """Paulo & Belrose (2025): Hungarian on decoder rows and on encoder columns separately; a pair counts when
    both assign the same partner. Score = min(decoder cos, encoder cos) there, 0 elsewhere (so score >= tau
    means both cosines >= tau). Returns (decoder partner, score)."""
    pd, cd = hungarian(dec_a, dec_b, sparse)
    pe, _ = hungarian(enc_a, enc_b, sparse)
    ok = (pd >= 0) & (pd == pe)
    ce = torch.zeros_like(cd)
    if ok.any():
        ce[ok] = (enc_a[ok] * enc_b[pd[ok]]).sum(dim=1).to(ce.dtype)
    score = torch.where(ok, torch.minimum(cd, ce), torch.zeros_like(cd))
    return pd, score
