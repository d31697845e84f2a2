"""A cross-seed feature atlas: features at the level where they are identifiable (rules in docs/atlas.md).

Every live latent of S seeds ends in exactly one place. The live latents are clustered by span
(`cluster_by_span`); a component found in >= min_seeds seeds becomes a feature whose rank the energy rule sets
(rank 1 = a stable latent direction, higher = a reproducible subspace). Chains (rank above max_rank, more than
max_rank latents per seed, or over-tiled and unheld) are re-clustered at a stricter rho; what does not split keeps only its rank-1 cross-seed matches. Everything else is the
irreproducible remainder. A seed *holds* a feature of rank r with basis U when the top-r span G of its latents
lying mostly in U has principal-angle overlap ||U^T G||_F^2 / r >= `overlap` (rank 1: a latent at signed
cos >= sqrt(overlap)). Feature stability = the fraction of the other seeds that hold it (mean over its seeds)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from synthsae.metrics.matching import unit_rows
from synthsae.metrics.subspaces import cluster_by_span, orthonormal_basis

RANK1_BLOCK_BYTES = 1 << 28  # float64 cosines formed at once by the chain fallback (256 MB)
SCHEMA = "synthsae.atlas/2"  # 2: typed AtlasResult (synthsae.results), also metrics.json key "atlas"
MAX_RHO = 0.99  # chained components are re-clustered at rho 0.95, 0.975, 0.9875, 0.99375, then given up
CHAIN_TILING = 4  # an unheld component with more than this many latents per seed per span dimension is a chain:
# on SmolLM2 (576 latents in 576 dims) one component of 1,301 latents (325 per seed) had energy rank 23, under
# max_rank, and took 56% of the latents to the remainder as one unheld 'subspace'


@dataclass
class AtlasConfig:
    """Cut-offs of the atlas (docs/atlas.md)."""

    overlap: float = 0.9  # principal-angle overlap (mean squared cosine) at which a seed holds a span
    rho: float = 0.9  # cluster_by_span: projection norm of a latent onto its neighbours' span
    k_max: int = 4  # cluster_by_span: at most this many neighbours per other seed
    energy: float = 0.5  # energy rule: keep the directions spanned by >= this share of the feature's seeds
    seed_energy: float = 0.01  # ... where a seed spans the directions holding >= this share of its members' energy
    member_share: float = 0.5  # holding test: a seed's latent counts when >= this share of it lies in the span
    min_seeds: int = 0  # a feature is found in >= this many seeds; 0 = max(2, ceil(S / 2))
    max_rank: int = 0  # a span of higher rank is a chained cluster, not a feature (left in the remainder); 0 = d // 4

    def resolved_max_rank(self, d: int) -> int:
        return self.max_rank if self.max_rank > 0 else max(1, d // 4)

    def resolved_min_seeds(self, S: int) -> int:
        return self.min_seeds if self.min_seeds > 0 else max(2, math.ceil(S / 2))


@dataclass
class Feature:
    """One atlas feature: an orthonormal basis [d, r] and where it came from."""

    kind: str  # "stable" (rank-1 latents matched across seeds) or "subspace" (span-merged unstable latents)
    basis: Float[Tensor, "d r"]
    members: list[tuple[int, int]]  # (seed position, latent) of every latent merged into it
    stability: float = float("nan")
    frequency: float = float("nan")  # mean over its seeds of the fraction of tokens on which any member fires
    ev_share: float = float("nan")  # mean over all seeds of the share of that seed's explained variance it carries
    holders: int = 0  # how many of the atlas's seeds hold its span

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    @property
    def seeds(self) -> list[int]:
        return sorted({s for s, _ in self.members})


@dataclass
class Atlas:
    """Features of S seeds plus what is left over; `label[s, j]` = feature of latent j of seed s (-1 remainder,
    -2 dead)."""

    features: list[Feature]
    label: Int[Tensor, "S m"]
    n_seeds: int
    d: int
    settings: dict = field(default_factory=dict)
    remainder_ev_share: float = float("nan")
    dead_ev_share: float = float("nan")

    @property
    def n_remainder(self) -> int:
        return int((self.label == -1).sum())


# ----------------------------------------------------------------------------------------------- holding test


def holding_overlap(basis: Float[Tensor, "d r"], dec: Float[Tensor, "m d"], member_share: float = 0.5,
                    alive: Tensor | None = None) -> float:
    """Principal-angle overlap of `basis` with the best span a dictionary holds (1 = it holds exactly that span).

    Rank 1: the best signed cosine squared (0 if negative). Rank r: the latents with >= member_share of their
    squared norm inside span(basis); their top-r left singular span G; ||U^T G||_F^2 / r (missing dims count 0)."""
    U = basis.double()
    D = unit_rows(dec.double())
    if alive is not None:
        D = D[alive]
    if D.shape[0] == 0:
        return 0.0
    r = U.shape[1]
    P = D @ U  # [m, r]
    if r == 1:
        c = float(P[:, 0].max())
        return max(c, 0.0) ** 2
    cand = P.pow(2).sum(1) >= member_share
    if not bool(cand.any()):
        return 0.0
    G = orthonormal_basis(D[cand].T, min(r, int(cand.sum())))
    return float((U.T @ G).pow(2).sum() / r)


def feature_holders(basis: Tensor, dec: Float[Tensor, "S m d"], cfg: AtlasConfig, alive: Tensor | None = None) -> list[bool]:
    """Which of the S dictionaries hold the feature (holding_overlap >= cfg.overlap)."""
    return [holding_overlap(basis, dec[s], cfg.member_share, None if alive is None else alive[s]) >= cfg.overlap - 1e-9
            for s in range(dec.shape[0])]


# ----------------------------------------------------------------------------------------------- building


def energy_basis(vecs: Float[Tensor, "n d"], seed_of: Int[Tensor, " n"], energy: float,
                 seed_energy: float = 0.01) -> Float[Tensor, "d r"]:
    """The energy rule (docs/atlas.md): each seed's span = the directions of its members' unit rows holding >=
    seed_energy of their energy; C = the mean over seeds of the projectors onto those spans (eigenvalue mu_i = the
    share of seeds spanning direction i); rank = #{mu_i >= energy}, basis = those eigenvectors."""
    X = unit_rows(vecs.double())
    seeds = torch.unique(seed_of).tolist()
    C = torch.zeros(X.shape[1], X.shape[1], dtype=torch.float64)
    for s in seeds:
        u, sv, _ = torch.linalg.svd(X[seed_of == s].T, full_matrices=False)
        e = sv.pow(2) / sv.pow(2).sum().clamp_min(1e-30)
        Us = u[:, e >= seed_energy]
        C += Us @ Us.T
    C /= len(seeds)
    lam, vec = torch.linalg.eigh(C)
    lam, vec = lam.flip(0), vec.flip(1)
    r = max(1, int((lam >= energy - 1e-9).sum()))
    U = vec[:, :r]
    if r == 1 and float((X @ U[:, 0]).sum()) < 0:  # a rank-1 feature is a signed direction: point it at its members
        U = -U
    return U


def _rank1_groups(Df: Tensor, mem: Tensor, m: int, tau: float, min_seeds: int,
                  block_bytes: int | None = None) -> list[Tensor]:
    """Components of latents (among `mem`) linked to their best partner of each other seed at signed cos >= tau,
    found in >= min_seeds seeds. The float64 cosines are formed a block of rows at a time (at most block_bytes, default
    RANK1_BLOCK_BYTES): a chain of 80k latents would need 51 GB as one matrix."""
    X = Df[mem].double()
    seed = mem // m
    n = X.shape[0]
    rows = max(1, (block_bytes or RANK1_BLOCK_BYTES) // (8 * max(n, 1)))
    src, dst = [], []
    for t in torch.unique(seed).tolist():
        other = torch.nonzero(seed == t).squeeze(1)
        Xo = X[other]
        v = torch.empty(n, dtype=torch.float64)
        j = torch.empty(n, dtype=torch.long)
        for r0 in range(0, n, rows):
            v[r0 : r0 + rows], j[r0 : r0 + rows] = (X[r0 : r0 + rows] @ Xo.T).max(dim=1)
        ok = (v >= tau) & (seed != t)
        src.append(torch.nonzero(ok).squeeze(1).numpy())
        dst.append(other[j[ok]].numpy())
    comp = _components(len(mem), src, dst)
    out = []
    for c in np.unique(comp):
        sel = torch.as_tensor(np.nonzero(comp == c)[0])
        if torch.unique(seed[sel]).numel() >= min_seeds:
            out.append(mem[sel])
    return out


def _components(n: int, src: list[np.ndarray], dst: list[np.ndarray]) -> np.ndarray:
    s, t = np.concatenate(src) if src else np.zeros(0, int), np.concatenate(dst) if dst else np.zeros(0, int)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(s)), (s, t)), shape=(n, n))
    return connected_components(g, directed=False)[1]


def build_atlas(dec: Float[Tensor, "S m d"], alive: Tensor | None = None, cfg: AtlasConfig | None = None) -> Atlas:
    """Features of S dictionaries (decoder rows, any order of seeds and latents) without data statistics."""
    cfg = cfg or AtlasConfig()
    S, m, d = dec.shape
    if S < 2:
        raise ValueError("an atlas needs at least 2 seeds")
    min_seeds = cfg.resolved_min_seeds(S)
    D = unit_rows(dec.detach().float().cpu())
    alive = torch.ones(S, m, dtype=torch.bool) if alive is None else alive.cpu().bool()
    features: list[Feature] = []
    label = torch.full((S * m,), -1, dtype=torch.long)
    label[~alive.reshape(-1)] = -2
    Df = D.reshape(S * m, d)
    # one span clustering of every live latent: a latent links to the fewest (<= k_max) latents of each other seed
    # whose span holds it at projection >= rho; components found in >= min_seeds seeds are features, their rank
    # set by the energy rule (rank 1 = a stable latent direction)
    rest = torch.nonzero(label == -1).squeeze(1)
    max_rank, n_chained = cfg.resolved_max_rank(d), 0
    todo = [(rest, cfg.rho)] if rest.numel() else []
    while todo:  # a component of too high rank is a chain: split it by clustering its latents at a stricter rho
        idx, rho = todo.pop()
        labels = cluster_by_span(Df[idx], idx // m, cfg.k_max, rho)
        for c in torch.unique(labels).tolist():
            mem = idx[labels == c]
            if torch.unique(mem // m).numel() < min_seeds:
                continue
            U = energy_basis(Df[mem], mem // m, cfg.energy, cfg.seed_energy)
            per_seed = mem.numel() / torch.unique(mem // m).numel()
            over_tiled = per_seed > CHAIN_TILING * U.shape[1] and sum(feature_holders(U.float(), D, cfg, alive)) < min_seeds
            too_big = per_seed > max_rank  # bounded size: no feature holds more than max_rank latents per seed
            if U.shape[1] > max_rank or over_tiled or too_big:
                if rho < MAX_RHO:
                    todo.append((mem, 1 - (1 - rho) / 2))
                else:  # a chain that does not split: keep only its rank-1 directions matched across seeds
                    n_chained += 1
                    for sub in _rank1_groups(Df, mem, m, math.sqrt(cfg.overlap), min_seeds):
                        U1 = energy_basis(Df[sub], sub // m, cfg.energy, cfg.seed_energy)
                        if U1.shape[1] == 1:
                            features.append(Feature("stable", U1.float(), [(int(i) // m, int(i) % m) for i in sub]))
                            label[sub] = len(features) - 1
                continue
            features.append(Feature("stable" if U.shape[1] == 1 else "subspace", U.float(),
                                    [(int(i) // m, int(i) % m) for i in mem]))
            label[mem] = len(features) - 1
    label = label.view(S, m)
    for f in features:
        f.stability = _stability(f, D, cfg, alive)
    features, label = _absorb_rank1(features, label, D, cfg, alive)
    # a span that fewer than min_seeds seeds hold is not reproducible, however its latents clustered
    n_unheld = sum(1 for f in features if f.holders < min_seeds)
    features, label = _keep(features, label, [f.holders >= min_seeds for f in features])
    # canonical order (independent of seed and latent order): most seeds, then rank, then stability
    order = sorted(range(len(features)), key=lambda i: (-len(features[i].seeds), features[i].rank, -features[i].stability,
                                                          -float(features[i].basis.abs().max())))
    remap = torch.full((len(features) + 2,), -1, dtype=torch.long)
    for new, old in enumerate(order):
        remap[old] = new
    remap[-2], remap[-1] = -2, -1  # indices -2, -1 keep their meaning
    label = torch.where(label >= 0, remap[label.clamp_min(0)], label)
    features = [features[i] for i in order]
    return Atlas(features, label, S, d, settings={"schema": SCHEMA, **asdict(cfg), "min_seeds_resolved": min_seeds,
                                                        "max_rank_resolved": max_rank, "n_chained_clusters_rejected": n_chained,
                                                        "n_unheld_clusters_rejected": n_unheld})


def _stability(f: Feature, D: Tensor, cfg: AtlasConfig, alive: Tensor) -> float:
    """Mean over the feature's own seeds of the fraction of the other seeds holding it (sets f.holders too)."""
    hold = feature_holders(f.basis, D, cfg, alive)
    S = D.shape[0]
    f.holders = int(sum(hold))
    return float(np.mean([(sum(hold) - hold[s]) / (S - 1) for s in f.seeds]))


def _keep(features: list[Feature], label: Tensor, keep: list[bool]) -> tuple[list[Feature], Tensor]:
    """Features where keep is True, relabelled; the latents of the others go to the remainder (-1)."""
    new_label = torch.where(label == -2, -2, -1)
    out = []
    for f, k in zip(features, keep):
        if k:
            for s, j in f.members:
                new_label[s, j] = len(out)
            out.append(f)
    return out, new_label


def _absorb_rank1(features: list[Feature], label: Tensor, D: Tensor, cfg: AtlasConfig, alive: Tensor):
    """A rank-1 feature lying inside a reproducible subspace (containment >= overlap) that is less stable than the
    subspace is a chance alignment of the subspace's latents: its latents join the subspace (basis recomputed)."""
    subs = [i for i, f in enumerate(features) if f.rank > 1]
    drop = set()
    for i, f in enumerate(features):
        if f.rank != 1 or not subs:
            continue
        cont = [float((features[j].basis.double().T @ f.basis.double()).pow(2).sum()) for j in subs]
        j = subs[int(np.argmax(cont))]
        if max(cont) >= cfg.overlap and f.stability < features[j].stability:
            features[j].members += f.members
            drop.add(i)
    if not drop:
        return features, label
    m = label.shape[1]
    for j in subs:
        f = features[j]
        idx = torch.tensor([s * m + l for s, l in f.members])
        f.basis = energy_basis(D.reshape(-1, D.shape[2])[idx], idx // m, cfg.energy, cfg.seed_energy).float()
        f.stability = _stability(f, D, cfg, alive)
    return _keep(features, label, [i not in drop for i in range(len(features))])


# ----------------------------------------------------------------------------------------------- data statistics


@torch.no_grad()
def attach_stats(atlas: Atlas, sae, x: Float[Tensor, "n d"], batch_size: int = 4096) -> dict:
    """Firing frequency and EV share of every feature from codes of `x` (the SAE's seeds in atlas order).

    EV attribution: with r = x - b_dec and y = x_hat - b_dec, latent j gets a_j w_j . (2r - y), its Shapley value
    in the game v(T) = ||r||^2 - ||r - y_T||^2; shares sum to 1 per seed. Returns per-seed totals."""
    S, m = atlas.label.shape
    F = len(atlas.features)
    lab = atlas.label.to(sae.device)
    col = torch.where(lab >= 0, lab, torch.where(lab == -1, F, F + 1))  # F = remainder, F+1 = dead
    contrib = torch.zeros(S, F + 2, dtype=torch.float64, device=sae.device)
    fires = torch.zeros(S, F + 2, dtype=torch.float64, device=sae.device)
    n = 0
    for xb in x.split(batch_size):
        acts = sae.encode(xb)  # [S, B, m]
        y = acts @ sae.W_dec  # [S, B, d]
        r = xb.unsqueeze(0) - sae.b_dec.unsqueeze(1)
        z = (2 * r - y) @ sae.W_dec.transpose(1, 2)  # [S, B, m]
        c = (acts * z).sum(1).double()  # [S, m]
        contrib.scatter_add_(1, col, c)
        on = torch.zeros(S, xb.shape[0], F + 2, device=sae.device).scatter_add_(2, col.unsqueeze(1).expand(-1, xb.shape[0], -1),
                                                                                (acts != 0).float())
        fires += (on > 0).sum(1).double()
        n += xb.shape[0]
    share = ev_shares(contrib).cpu()
    freq = (fires / max(n, 1)).cpu()
    for i, f in enumerate(atlas.features):
        f.ev_share = _nanmean(share[:, i])
        f.frequency = float(freq[f.seeds, i].mean())
    atlas.remainder_ev_share = _nanmean(share[:, F])
    atlas.dead_ev_share = _nanmean(share[:, F + 1])
    return {"ev_share_features_per_seed": share[:, :F].sum(1).tolist(), "ev_share_remainder_per_seed": share[:, F].tolist()}


def ev_shares(contrib: Float[Tensor, "S k"]) -> Float[Tensor, "S k"]:
    """Each part's share of its seed's explained variance; NaN for a seed that explains none (total <= 0).

    A seed whose reconstruction is no better than its decoder bias (a random dictionary) has a total of zero or
    below: dividing by it (or by a clamp of it) would give shares of any size and sign, so it has no shares."""
    total = contrib.sum(1, keepdim=True)
    scale = contrib.abs().sum(1, keepdim=True)
    ok = total > 1e-9 * scale.clamp_min(1e-300)
    return torch.where(ok, contrib / torch.where(ok, total, torch.ones_like(total)), torch.full_like(contrib, float("nan")))


def _nanmean(v: Tensor) -> float:
    """Mean over the seeds that have a value (NaN when none has)."""
    v = v[~torch.isnan(v)]
    return float(v.mean()) if v.numel() else float("nan")


def attach_sparsity(atlas: Atlas, freq: Float[Tensor, "S m"]) -> None:
    """Without data: feature frequency from per-latent frequencies (sum over a seed's members, capped at 1)."""
    for f in atlas.features:
        per = {}
        for s, j in f.members:
            per[s] = per.get(s, 0.0) + float(freq[s, j])
        f.frequency = float(np.mean([min(1.0, v) for v in per.values()]))


# ----------------------------------------------------------------------------------------------- judging


def heldout_stability(atlas: Atlas, dec_other: Float[Tensor, "T m d"], alive_other: Tensor | None = None) -> list[float]:
    """Per feature: the fraction of other (held-out) dictionaries that hold it."""
    cfg = AtlasConfig(**{k: v for k, v in atlas.settings.items() if k in AtlasConfig.__dataclass_fields__})
    D = unit_rows(dec_other.detach().float().cpu())
    return [float(np.mean(feature_holders(f.basis, D, cfg, alive_other))) for f in atlas.features]


def match_blocks(atlas: Atlas, bases: list[Float[Tensor, "d r"]]) -> list[dict]:
    """Each planted block against the atlas: the feature of largest overlap ||B^T U||^2 / max(r_B, r_U) (1 only for
    the same span), its rank, and how many features lie inside the block (containment >= 0.9)."""
    out = []
    for b, B in enumerate(bases):
        B = B.double().cpu()
        rb = B.shape[1]
        best, best_ov, inside = -1, 0.0, 0
        for i, f in enumerate(atlas.features):
            M = (B.T @ f.basis.double()).pow(2).sum()
            ov = float(M / max(rb, f.rank))
            if float(M / min(rb, f.rank)) >= 0.9:
                inside += 1
            if ov > best_ov:
                best, best_ov = i, ov
        row = {"block": b, "rank": rb, "best_feature": best, "overlap": best_ov, "features_inside": inside}
        if best >= 0:
            f = atlas.features[best]
            row.update({"feature_rank": f.rank, "rank_right": f.rank == rb, "feature_stability": f.stability,
                        "feature_kind": f.kind})
        out.append(row)
    return out


def group_stability(dec: Float[Tensor, "S m d"], sizes: list[int], overlap: float = 0.9,
                    alive: Tensor | None = None) -> dict:
    """Group-level stability of a block-sparse SAE: per group of each seed, the fraction of other seeds with a
    group whose span overlaps it at ||U_g^T U_h||^2 / max(r_g, r_h) >= overlap."""
    S, m, d = dec.shape
    r_max = max(sizes)
    bases = torch.zeros(S, len(sizes), d, r_max, dtype=torch.float64)
    ranks = torch.tensor(sizes, dtype=torch.float64)
    a = 0
    for gi, g in enumerate(sizes):
        for s in range(S):
            bases[s, gi, :, :g] = orthonormal_basis(dec[s, a : a + g].detach().double().cpu().T, g)
        a += g
    galive = torch.ones(S, len(sizes), dtype=torch.bool)
    if alive is not None:
        gid = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        galive = torch.stack([torch.zeros(len(sizes)).index_add_(0, gid, alive[s].cpu().float()) > 0 for s in range(S)])
    denom = torch.maximum(ranks.view(-1, 1), ranks.view(1, -1))
    hits = torch.zeros(S, len(sizes))
    for s in range(S):
        for t in range(S):
            if s == t:
                continue
            ov = torch.einsum("gdr,hdq->ghrq", bases[s], bases[t]).pow(2).sum((2, 3)) / denom
            ov = ov.masked_fill(~galive[t].view(1, -1), 0.0)
            hits[s] += (ov.max(1).values >= overlap - 1e-9).float()
    stab = hits / max(S - 1, 1)
    return {"stability": stab, "mean": float(stab[galive].mean()) if galive.any() else float("nan"),
            "n_live_groups": int(galive.sum())}


# ----------------------------------------------------------------------------------------------- files


def atlas_tensors(atlas: Atlas) -> dict[str, Tensor]:
    """atlas.safetensors: bases [F, d, r_max] zero padded, ranks, stability, frequency, ev_share, n_seeds."""
    F = len(atlas.features)
    r_max = max((f.rank for f in atlas.features), default=1)
    bases = torch.zeros(F, atlas.d, r_max)
    for i, f in enumerate(atlas.features):
        bases[i, :, : f.rank] = f.basis.float()
    vec = lambda a: torch.tensor([getattr(f, a) for f in atlas.features], dtype=torch.float32)  # noqa: E731
    return {"bases": bases, "ranks": torch.tensor([f.rank for f in atlas.features], dtype=torch.int64),
            "stability": vec("stability"), "frequency": vec("frequency"), "ev_share": vec("ev_share"),
            "n_seeds": torch.tensor([len(f.seeds) for f in atlas.features], dtype=torch.int64),
            "latent_feature": atlas.label.to(torch.int64)}


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def feature_latents(atlas: Atlas) -> Bool[Tensor, "S m"]:
    """Latents of each seed merged into some feature (the members of every feature): label >= 0."""
    return atlas.label >= 0


def feature_rows(atlas: Atlas) -> list:
    """One AtlasFeatureRow per feature (atlas.json's `features`)."""
    from synthsae.results import AtlasFeatureRow

    return [AtlasFeatureRow(id=i, kind=f.kind, rank=f.rank, seeds=f.seeds, n_latents=len(f.members), holders=f.holders,
                            stability=_num(f.stability), frequency=_num(f.frequency), ev_share=_num(f.ev_share))
            for i, f in enumerate(atlas.features)]


def _kind(kind: str, feats: list[Feature], n_latents: int, ev: float | None):
    from synthsae.results import AtlasKind

    stab = [f.stability for f in feats]
    w = [f.ev_share for f in feats]
    ews = None
    if feats and ev is not None and all(math.isfinite(x) for x in w) and sum(w) > 0:
        ews = _num(float(np.dot(w, stab) / sum(w)))
    return AtlasKind(kind=kind, n_features=len(feats), n_latents=n_latents, ev_share=ev,
                     mean_stability=_num(float(np.mean(stab))) if feats else None, ev_weighted_stability=ews)


def atlas_summary(atlas: Atlas):
    """The typed description of an atlas (an AtlasResult without source, judging sections and CE)."""
    from synthsae.results import AtlasResult, AtlasSettings, AtlasSource

    feats = atlas.features
    ranks = [f.rank for f in feats]
    ev = [f.ev_share for f in feats]
    have_ev = math.isfinite(atlas.remainder_ev_share)  # set by attach_stats (data), even with no features
    stab = np.array([f.stability for f in feats]) if feats else np.zeros(0)
    settings = AtlasSettings(**{k: v for k, v in atlas.settings.items() if k in AtlasSettings.__dataclass_fields__})
    stable = [f for f in feats if f.rank == 1]
    subs = [f for f in feats if f.rank > 1]
    evsum = lambda fs: _num(float(sum(f.ev_share for f in fs))) if have_ev else None  # noqa: E731
    n_dead = int((atlas.label == -2).sum())
    return AtlasResult(
        schema=SCHEMA, settings=settings, source=AtlasSource(), n_seeds=atlas.n_seeds, d=atlas.d,
        d_sae=int(atlas.label.shape[1]), n_features=len(feats), n_stable_rank1=len(stable), n_subspaces=len(subs),
        rank_histogram={str(r): ranks.count(r) for r in sorted(set(ranks))},
        n_remainder_latents=atlas.n_remainder, n_dead_latents=n_dead,
        mean_feature_stability=_num(float(stab.mean())) if len(stab) else None,
        ev_share_features=_num(float(sum(ev))) if have_ev else None,
        ev_share_remainder=_num(atlas.remainder_ev_share), ev_share_dead=_num(atlas.dead_ev_share),
        ev_weighted_feature_stability=(_num(float(np.dot(ev, stab) / max(sum(ev), 1e-30))) if have_ev and feats else None),
        kinds=[_kind("stable", stable, sum(len(f.members) for f in stable), evsum(stable)),
               _kind("subspace", subs, sum(len(f.members) for f in subs), evsum(subs)),
               _kind("remainder", [], atlas.n_remainder, _num(atlas.remainder_ev_share)),
               _kind("dead", [], n_dead, _num(atlas.dead_ev_share))],
    )
