"""Reproducible subspaces: overlap of spans, span reproducibility, clusters of unstable latents, rotation null."""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from synthsae.metrics.matching import DEFAULT_CHUNK, topk_cos, unit_rows


def orthonormal_basis(x: Float[Tensor, "d p"], rank: int | None = None, tol: float = 1e-6) -> Float[Tensor, "d q"]:
    """Orthonormal basis of the column span of x (its top `rank` left singular vectors, or all above tol)."""
    u, s, _ = torch.linalg.svd(x.double(), full_matrices=False)
    if rank is None:
        rank = int((s > tol * s.max().clamp_min(1e-30)).sum())
    return u[:, : max(0, min(rank, u.shape[1]))].to(x.dtype)


def subspace_overlap(a: Float[Tensor, "d p"], b: Float[Tensor, "d q"]) -> float:
    """||A^T B||_F^2 / min(p, q) for orthonormal bases: 1 = one contains the other, ~max(p,q)/d by chance."""
    p, q = a.shape[1], b.shape[1]
    if p == 0 or q == 0:
        return float("nan")
    return float((a.T.double() @ b.double()).pow(2).sum() / min(p, q))


def overlap_baseline(p: int, q: int, d: int) -> float:
    """Expected subspace_overlap of two independent uniformly random subspaces of dims p and q in R^d."""
    return max(p, q) / d


def effective_rank(x: Float[Tensor, "n d"]) -> float:
    """Roy & Vetterli's effective rank exp(H(s / sum s)) of the singular values of the rows of x."""
    if x.shape[0] == 0:
        return 0.0
    s = torch.linalg.svdvals(x.double())
    p = s / s.sum().clamp_min(1e-30)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def energy_rank(x: Float[Tensor, "n d"], frac: float = 0.95) -> int:
    """Fewest singular directions holding `frac` of the squared norm of the rows of x."""
    if x.shape[0] == 0:
        return 0
    s2 = torch.linalg.svdvals(x.double()).pow(2)
    c = torch.cumsum(s2, 0) / s2.sum().clamp_min(1e-30)
    return int((c < frac - 1e-9).sum()) + 1


# ----------------------------------------------------------------------------------------------- span reproducibility


def span_projection(
    x: Float[Tensor, "m d"], ref: Float[Tensor, "n d"], k_max: int = 4, chunk: int = DEFAULT_CHUNK
) -> Float[Tensor, "m k"]:
    """Norm of the projection of each unit row of x onto the span of its k nearest unit rows of ref, for
    k = 1..k_max (column k-1). Nearest by |cos|: a span has no sign, so an anti-aligned row counts as near."""
    k_max = min(k_max, ref.shape[0])
    out = torch.empty(x.shape[0], k_max, device=x.device, dtype=x.dtype)
    _, idx = topk_cos(x, ref, k_max, chunk, absolute=True)
    for s in range(0, x.shape[0], chunk):
        nb = ref[idx[s : s + chunk]]  # [c, k, d]
        q, _ = torch.linalg.qr(nb.transpose(1, 2).double())  # [c, d, k]; first j columns span the first j rows
        coef = torch.einsum("cdk,cd->ck", q, x[s : s + chunk].double())
        out[s : s + chunk] = coef.pow(2).cumsum(dim=1).sqrt().to(x.dtype)
    return out


def span_reproducibility(
    dec: Float[Tensor, "S m d"], k_max: int = 4, chunk: int = DEFAULT_CHUNK, device: str | torch.device | None = None,
    batched: bool | None = None,
) -> Float[Tensor, "S m k"]:
    """Per latent, the mean over the other seeds of its span projection for k = 1..k_max (k=1 is the best |cos|).
    Small dictionaries take the batched path (a block of seeds per call; batched=False forces the pair loop)."""
    S, m, d = dec.shape
    dev = torch.device(device) if device is not None else dec.device
    D = unit_rows(dec.to(dev, torch.float32))
    k_max = min(k_max, m)
    total = torch.zeros(S, m, k_max)
    per = _seeds_per_block(m, d, k_max)
    from synthsae.metrics import stability

    if per >= 2 and (stability.BATCHED if batched is None else batched):
        for a in range(S):
            others = [b for b in range(S) if b != a]
            for i in range(0, len(others), per):
                total[a] += _span_projection_block(D[a], D[others[i : i + per]], k_max).sum(1).cpu()
        return total / max(S - 1, 1)
    for a in range(S):
        for b in range(S):
            if a != b:
                total[a] += span_projection(D[a], D[b], k_max, chunk).cpu()
    return total / max(S - 1, 1)


def _seeds_per_block(m: int, d: int, k: int) -> int:
    """Seeds of a block in _span_projection_block: the cosines [m, n, m] and the float64 neighbour bases
    [m, n, d, k] each stay under BLOCK_ELEMS entries."""
    from synthsae.metrics.matching import BLOCK_ELEMS

    return max(1, min(BLOCK_ELEMS // max(m * m, 1), BLOCK_ELEMS // max(2 * m * d * k, 1)))


def _span_projection_block(x: Float[Tensor, "m d"], refs: Float[Tensor, "n m2 d"], k_max: int) -> Float[Tensor, "m n k"]:
    """span_projection of the unit rows x against n seeds at once: one matmul, one top-k and one batched QR for
    the block instead of n calls (the same numbers; the per-pair Python work was what made many seeds slow)."""
    n, m2, d = refs.shape
    c = (x @ refs.reshape(-1, d).T).view(x.shape[0], n, m2).abs()
    _, idx = c.topk(k_max, dim=2)  # [m, n, k]
    nb = refs[torch.arange(n, device=x.device)[None, :, None], idx].double()  # [m, n, k, d]
    xd = x.double()[:, None, :]
    qs, coef = [], []
    for j in range(k_max):  # Gram-Schmidt (twice, for float64 accuracy): the first j+1 columns of QR's Q
        v = nb[:, :, j]
        for _ in range(2):
            for q in qs:
                v = v - (v * q).sum(-1, keepdim=True) * q
        norm = v.norm(dim=-1, keepdim=True)
        q = torch.where(norm > 1e-12, v / norm.clamp_min(1e-300), torch.zeros_like(v))
        qs.append(q)
        coef.append((q * xd).sum(-1))
    return torch.stack(coef, dim=2).pow(2).cumsum(dim=2).sqrt().to(x.dtype)


# ----------------------------------------------------------------------------------------------- unstable clusters


def cluster_by_span(
    vecs: Float[Tensor, "N d"], seed_of: Int[Tensor, " N"], k_max: int = 4, rho: float = 0.9, chunk: int = DEFAULT_CHUNK
) -> Int[Tensor, " N"]:
    """Connected components of the graph linking each latent to the fewest (k <= k_max) nearest latents of
    every other seed whose span holds it with projection norm >= rho. Returns a cluster label per latent."""
    N = vecs.shape[0]
    if N == 0:
        return torch.zeros(0, dtype=torch.long)
    X = unit_rows(vecs.float())
    seeds = torch.unique(seed_of).tolist()
    src, dst = [np.arange(N)], [np.arange(N)]
    for b in seeds:
        cols = torch.nonzero(seed_of == b).squeeze(1)
        rows = torch.nonzero(seed_of != b).squeeze(1)
        if rows.numel() == 0 or cols.numel() == 0:
            continue
        kk = min(k_max, cols.numel())
        proj = span_projection(X[rows], X[cols], kk, chunk)  # [r, kk]
        _, idx = topk_cos(X[rows], X[cols], kk, chunk, absolute=True)  # the neighbours span_projection used
        ok = proj >= rho
        has = ok.any(dim=1)
        first = torch.where(has, ok.float().argmax(dim=1), torch.full_like(has, -1, dtype=torch.long))  # smallest k
        for j in range(kk):
            sel = has & (first >= j)
            src.append(rows[sel].cpu().numpy())
            dst.append(cols[idx[sel, j]].cpu().numpy())
    s, t = np.concatenate(src), np.concatenate(dst)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(s)), (s, t)), shape=(N, N))
    _, labels = connected_components(graph, directed=False)
    return torch.as_tensor(labels, dtype=torch.long)


def describe_clusters(
    vecs: Float[Tensor, "N d"], seed_of: Int[Tensor, " N"], labels: Int[Tensor, " N"], min_seeds: int = 2,
    bases: list[Tensor] | None = None,
) -> list[dict]:
    """Per cluster spanning >= min_seeds seeds: size, seeds, effective rank, cross-seed overlap (with chance
    baseline) and, given planted bases, the best-overlapping block."""
    X = unit_rows(vecs.float())
    d = X.shape[1]
    out = []
    for c in torch.unique(labels).tolist():
        mem = labels == c
        seeds_c = torch.unique(seed_of[mem]).tolist()
        if len(seeds_c) < min_seeds:
            continue
        Xc = X[mem]
        erank = effective_rank(Xc)
        r = max(1, round(erank))
        per_seed = {s: Xc[seed_of[mem] == s] for s in seeds_c}
        ovs, base = [], []
        for i, s1 in enumerate(seeds_c):
            for s2 in seeds_c[i + 1 :]:
                A = orthonormal_basis(per_seed[s1].T, min(r, per_seed[s1].shape[0]))
                B = orthonormal_basis(per_seed[s2].T, min(r, per_seed[s2].shape[0]))
                ovs.append(subspace_overlap(A, B))
                base.append(overlap_baseline(A.shape[1], B.shape[1], d))
        row = {
            "size": int(mem.sum()),
            "n_seeds": len(seeds_c),
            "effective_rank": erank,
            "energy_rank_95": energy_rank(Xc),
            "cross_seed_overlap": float(np.mean(ovs)),
            "cross_seed_overlap_baseline": float(np.mean(base)),
        }
        if bases:
            span = orthonormal_basis(Xc.T, r)
            ov = [subspace_overlap(span, U.to(span)) for U in bases]
            best = int(np.argmax(ov))
            row.update({"best_block": best, "best_block_rank": int(bases[best].shape[1]), "best_block_overlap": ov[best],
                        "best_block_overlap_baseline": overlap_baseline(span.shape[1], bases[best].shape[1], d)})
        out.append(row)
    out.sort(key=lambda r: -r["size"])
    return out


# ----------------------------------------------------------------------------------------------- rotation null


def random_rotation_in(basis: Float[Tensor, "d r"], gen: torch.Generator) -> Float[Tensor, "d d"]:
    """A Haar-random rotation acting inside span(basis) and as the identity on its complement."""
    r = basis.shape[1]
    q, rr = torch.linalg.qr(torch.randn(r, r, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(rr))
    U = basis.double().cpu()
    return torch.eye(U.shape[0], dtype=torch.float64) + U @ (q - torch.eye(r, dtype=torch.float64)) @ U.T


def rotation_null(
    latents: Float[Tensor, "n d"], basis: Float[Tensor, "d r"], tau: float = 0.7, rule: str = "maxcos",
    n_rot: int = 64, gen_seed: int = 0,
) -> dict:
    """Stability of a block's latents against a random rotation of themselves inside the block (mean over
    n_rot rotations): the expected stability if seeds differed by an exact rotation of the block.

    With R = I + U (Q - I) U^T, the cosines X (X R^T)^T = G + C (Q - I) C^T (G = X X^T, C = X U): O(n^2 r) each.
    """
    from scipy.optimize import linear_sum_assignment

    n = latents.shape[0]
    if n == 0:
        return {"stability": float("nan"), "soft_stability": float("nan"), "n_latents": 0}
    X = unit_rows(latents.double().cpu())
    U = basis.double().cpu()
    r = U.shape[1]
    G, C = X @ X.T, X @ U
    g = torch.Generator().manual_seed(gen_seed)
    hits, soft = 0.0, 0.0
    eye = torch.eye(r, dtype=torch.float64)
    for _ in range(n_rot):
        q, rr = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(rr))  # Haar
        cos = G + C @ (q - eye) @ C.T  # [n latents, n rotated latents]
        if rule == "maxcos":
            v = cos.max(dim=1).values
        else:  # hungarian / strict (the encoder rotates with the decoder, so strict reduces to hungarian here)
            ri, ci = linear_sum_assignment(cos.numpy(), maximize=True)
            v = cos[torch.as_tensor(ri), torch.as_tensor(ci)]
        hits += float((v >= tau).double().mean())
        soft += float(v.mean())
    return {"stability": hits / n_rot, "soft_stability": soft / n_rot, "n_latents": n, "n_rotations": n_rot}


def random_points_null(r: int, n: int, tau: float = 0.7, trials: int = 256, gen_seed: int = 0) -> float:
    """P(a random unit direction in R^r matches one of n others at cos >= tau): the chance table in docs/metrics.md."""
    g = torch.Generator().manual_seed(gen_seed)
    a = unit_rows(torch.randn(trials, n, r, generator=g, dtype=torch.float64))
    b = unit_rows(torch.randn(trials, n, r, generator=g, dtype=torch.float64))
    best = torch.einsum("tir,tjr->tij", a, b).amax(dim=2)
    return float((best >= tau).double().mean())

