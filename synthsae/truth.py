"""The planted ground truth: x = sum of active components + b + noise.

Components are rank-1 atoms (a * u), isotropic rank-r subspaces (a * U v, v uniform on the sphere, so no
basis inside the block is preferred: the planted basis ambiguity) and optional frames (n > r fixed unit
directions inside an r-dim block, one of which fires). Sampling is seeded, on-device and streaming.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from synthsae.config import TruthConfig, block_orthogonal_flags, validate_truth


@dataclass
class Truth:
    """The planted model's tensors (all on one device). Component order: atoms, subspaces, frames."""

    cfg: TruthConfig
    atoms: Float[Tensor, "n_atoms d"]
    subspaces: Float[Tensor, "n_blocks d r_max"]  # orthonormal columns; columns >= rank are zero
    ranks: Int[Tensor, " n_blocks"]
    frames: Float[Tensor, "n_frames f_max d"]  # frame directions; rows >= frame size are zero
    frame_bases: Float[Tensor, "n_frames d fr_max"]
    frame_sizes: Int[Tensor, " n_frames"]
    probs: Float[Tensor, " c"]  # firing probability per component (c = n_atoms + n_blocks + n_frames)
    group: Int[Tensor, " c"]  # co-firing group per component (-1 = independent)
    bias: Float[Tensor, " d"]
    W_head: Float[Tensor, "d C"]  # fixed random readout head standing in for next-token prediction
    # SynthSAEBench-style extras (None when the config leaves them off)
    draw_probs: Float[Tensor, " c"] | None = None  # per-component Bernoulli threshold before the hierarchy prunes
    hierarchy: Int[Tensor, " h"] | None = None  # component index of every tree node, breadth first
    parent: Int[Tensor, " c"] | None = None  # parent component (-1 = none)
    mag_median: Float[Tensor, " c"] | None = None  # per-component median magnitude (magnitude_mean_rare > 0)
    corr_factor: Float[Tensor, "c rc"] | None = None  # low-rank copula factor (corr_rank > 0)

    @property
    def d(self) -> int:
        return self.cfg.d

    @property
    def n_atoms(self) -> int:
        return self.atoms.shape[0]

    @property
    def n_blocks(self) -> int:
        return self.subspaces.shape[0]

    @property
    def n_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def n_components(self) -> int:
        return self.probs.shape[0]

    @property
    def device(self) -> torch.device:
        return self.atoms.device

    def block_basis(self, b: int) -> Float[Tensor, "d r"]:
        """Orthonormal basis of planted subspace b (its rank's columns only)."""
        return self.subspaces[b, :, : int(self.ranks[b])]

    def expected_l0(self) -> float:
        return float(self.probs.sum())

    def to(self, device: torch.device | str) -> "Truth":
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return Truth(**moved)

    def mean_magnitude(self) -> Float[Tensor, " c"]:
        """Expected magnitude of every component when it fires (log-normal: median * exp(sigma^2 / 2))."""
        med = self.mag_median if self.mag_median is not None else torch.full_like(self.probs, self.cfg.magnitude_mean)
        return med * math.exp(self.cfg.magnitude_log_std ** 2 / 2)

    def tensors(self) -> dict[str, Tensor]:
        """The tensors of truth.safetensors by name, plain arrays so it is readable without our code."""
        na, nb = self.n_atoms, self.n_blocks
        return {
            "atoms": self.atoms,
            "subspaces": self.subspaces,
            "ranks": self.ranks,
            "frames": self.frames,
            "frame_bases": self.frame_bases,
            "frame_sizes": self.frame_sizes,
            "atom_probs": self.probs[:na],
            "subspace_probs": self.probs[na : na + nb],
            "frame_probs": self.probs[na + nb :],
            "cofire_group": self.group,
            "bias": self.bias,
            "W_head": self.W_head,
            **{k: getattr(self, k) for k in ("draw_probs", "hierarchy", "parent", "mag_median", "corr_factor")
               if getattr(self, k) is not None},
        }


@dataclass
class Sample:
    """A batch of activations and what produced it."""

    x: Float[Tensor, "n d"]
    active: Bool[Tensor, "n c"]  # which components fired
    magnitude: Float[Tensor, "n c"] | None  # their amplitude a > 0 (0 where inactive); None if details=False
    block_coords: Float[Tensor, "n R"]  # a_b * v for every block, concatenated (R = sum of ranks)
    frame_choice: Int[Tensor, "n n_frames"]  # which direction of each frame fired (-1 = none)


# ----------------------------------------------------------------------------------------------- building


def _random_orthogonal(d: int, gen: torch.Generator) -> Float[Tensor, "d d"]:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # Haar-distributed


def _zipf_probs(weights: Tensor, target_l0: float, max_prob: float) -> Tensor:
    """Scale Zipf weights so that sum(min(c * w, max_prob)) = target_l0 (bisection on c)."""
    lo, hi = 0.0, max_prob / float(weights.min())
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float(torch.clamp(mid * weights, max=max_prob).sum()) < target_l0:
            lo = mid
        else:
            hi = mid
    return torch.clamp(hi * weights, max=max_prob)


def _frequency_ranks(cfg: TruthConfig, gen: torch.Generator) -> Tensor:
    """For every component, its position in the Zipf order (0 = most frequent)."""
    na, nb, nf = cfg.n_atoms, cfg.n_blocks, len(cfg.frame_ranks)
    c = na + nb + nf
    if nb == 0:
        slots_b = torch.empty(0, dtype=torch.long)
    elif cfg.subspace_frequency == "frequent":
        slots_b = torch.arange(nb)
    elif cfg.subspace_frequency == "rare":
        slots_b = torch.arange(c - nb, c)
    else:  # spread evenly over the order, from frequent to rare
        slots_b = torch.linspace(0, c - 1, nb + 2)[1:-1].round().long() if nb else torch.empty(0, dtype=torch.long)
        slots_b = torch.unique(slots_b)
        if slots_b.numel() < nb:  # collisions in a short list: fall back to the first free slots
            free = torch.tensor([i for i in range(c) if i not in set(slots_b.tolist())])
            slots_b = torch.cat([slots_b, free[: nb - slots_b.numel()]])
    taken = torch.zeros(c, dtype=torch.bool)
    taken[slots_b] = True
    rest = torch.nonzero(~taken).squeeze(1)
    rest = rest[torch.randperm(rest.numel(), generator=gen)]  # atoms and frames in random order
    ranks = torch.empty(c, dtype=torch.long)
    ranks[na : na + nb] = slots_b
    ranks[:na] = rest[:na]
    ranks[na + nb :] = rest[na:]
    return ranks


def build_truth(cfg: TruthConfig, device: torch.device | str = "cpu") -> Truth:
    """Draw the planted model from `cfg.seed` (built on the CPU in float64, so it is device-independent)."""
    validate_truth(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    d = cfg.d
    q = _random_orthogonal(d, gen)
    flags = block_orthogonal_flags(cfg)
    r_orth = sum(r for r, o in zip(cfg.subspace_ranks, flags) if o)
    orth_cols = q[:, :r_orth]  # orthogonal blocks live here ...
    free = q[:, r_orth:]  # ... everything else in the complement
    d_free = free.shape[1]

    def random_frame(r: int) -> Tensor:  # orthonormal [d, r] inside the free complement
        m, _ = torch.linalg.qr(torch.randn(d_free, r, generator=gen, dtype=torch.float64))
        return free @ m

    r_max = max(cfg.subspace_ranks, default=1)
    subspaces = torch.zeros(cfg.n_blocks, d, r_max, dtype=torch.float64)
    start = 0
    for b, (r, o) in enumerate(zip(cfg.subspace_ranks, flags)):
        if o:
            subspaces[b, :, :r] = orth_cols[:, start : start + r]
            start += r
        else:
            subspaces[b, :, :r] = random_frame(r)

    atoms = torch.randn(cfg.n_atoms, d_free, generator=gen, dtype=torch.float64) @ free.T
    atoms = atoms / atoms.norm(dim=1, keepdim=True).clamp_min(1e-12)

    nf = len(cfg.frame_ranks)
    f_max = max(cfg.frame_sizes, default=1)
    fr_max = max(cfg.frame_ranks, default=1)
    frames = torch.zeros(nf, f_max, d, dtype=torch.float64)
    frame_bases = torch.zeros(nf, d, fr_max, dtype=torch.float64)
    for f, (r, n) in enumerate(zip(cfg.frame_ranks, cfg.frame_sizes)):
        basis = random_frame(r)
        frame_bases[f, :, :r] = basis
        if r == 2:  # evenly spaced on a circle, like days of the week
            ang = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
            coords = torch.stack([ang.cos(), ang.sin()], dim=1)
        else:
            coords = torch.randn(n, r, generator=gen, dtype=torch.float64)
            coords = coords / coords.norm(dim=1, keepdim=True)
        frames[f, :n] = coords @ basis.T

    order = _frequency_ranks(cfg, gen)
    weights = (order.double() + 1.0) ** (-cfg.zipf_exponent)
    if cfg.zipf_min_prob > 0:  # SynthSAEBench: the Zipf curve rescaled to [zipf_min_prob, max_prob]
        weights = _minmax_probs(weights, cfg.zipf_min_prob, cfg.max_prob)
    if cfg.subspace_prob_per_dim:  # a rank-r block fires r times as often as an atom in its Zipf slot, so each of
        ranks_t = torch.tensor(cfg.subspace_ranks, dtype=torch.float64)  # its directions gets an atom's share of data
        weights[cfg.n_atoms : cfg.n_atoms + cfg.n_blocks] *= ranks_t
    if cfg.zipf_min_prob > 0:
        probs = weights.clamp(max=cfg.max_prob)
    else:
        probs = _zipf_probs(weights, cfg.target_l0, cfg.max_prob)

    c = cfg.n_components
    group = torch.full((c,), -1, dtype=torch.long)
    if cfg.cofire_groups > 0 and cfg.cofire_corr > 0:
        group = torch.randint(0, cfg.cofire_groups, (c,), generator=gen)

    bias = torch.randn(d, generator=gen, dtype=torch.float64)
    bias = bias / bias.norm() * cfg.bias_norm
    typical_norm = math.sqrt(cfg.target_l0) * cfg.magnitude_mean
    W_head = torch.randn(d, cfg.n_classes, generator=gen, dtype=torch.float64) * (cfg.head_scale / typical_norm)

    extras = _synthbench_extras(cfg, order, probs, gen)  # draws from gen only when those options are on
    f32 = dict(dtype=torch.float32, device=device)
    extras = {k: v.to(device=device, dtype=torch.float32 if v.is_floating_point() else torch.long)
              for k, v in extras.items()}
    if "probs" in extras:
        probs = extras.pop("probs")
    return Truth(
        cfg=cfg,
        atoms=atoms.to(**f32),
        subspaces=subspaces.to(**f32),
        ranks=torch.tensor(cfg.subspace_ranks, dtype=torch.long, device=device),
        frames=frames.to(**f32),
        frame_bases=frame_bases.to(**f32),
        frame_sizes=torch.tensor(cfg.frame_sizes, dtype=torch.long, device=device),
        probs=probs.to(**f32),
        group=group.to(device),
        bias=bias.to(**f32),
        W_head=W_head.to(**f32),
        **extras,
    )


def _minmax_probs(weights: Tensor, p_min: float, p_max: float) -> Tensor:
    """Zipf weights mapped linearly onto [p_min, p_max] (the most frequent gets p_max, the rarest p_min)."""
    lo, hi = float(weights.min()), float(weights.max())
    if hi == lo:
        return torch.full_like(weights, p_max)
    return p_min + (p_max - p_min) * (weights - lo) / (hi - lo)


def hierarchy_levels(cfg: TruthConfig) -> list[tuple[int, int]]:
    """(start, count) of every tree level inside the breadth-first node list."""
    levels, start, count = [], 0, cfg.hierarchy_roots
    for _ in range(cfg.hierarchy_depth + 1):
        levels.append((start, count))
        start, count = start + count, count * cfg.hierarchy_branching
    return levels


def _kept_given_parent(q: Float[Tensor, "g B"]) -> Float[Tensor, "g B"]:
    """P(child i fires | parent fires) when every sibling is drawn with prob q and one drawn sibling is kept,
    uniformly: q_i * E[1 / (1 + number of other drawn siblings)], by enumerating the others' outcomes."""
    g, B = q.shape
    out = torch.zeros_like(q)
    combos = torch.tensor([[(m >> j) & 1 for j in range(B - 1)] for m in range(2 ** (B - 1))], dtype=q.dtype)
    for i in range(B):
        others = torch.cat([q[:, :i], q[:, i + 1 :]], dim=1)  # [g, B-1]
        p = torch.where(combos[None].bool(), others[:, None], 1 - others[:, None]).prod(dim=2)  # [g, 2^(B-1)]
        out[:, i] = q[:, i] * (p / (1.0 + combos.sum(dim=1))[None]).sum(dim=1)
    return out


def _synthbench_extras(cfg: TruthConfig, order: Tensor, probs: Tensor, gen: torch.Generator) -> dict[str, Tensor]:
    """Hierarchy (nodes, parents, draw thresholds, marginal firing rates), per-component magnitudes, copula factor.

    Children's draw thresholds are raised to make up for firing only under their parent and (exclusive siblings)
    for losing to a sibling, capped at 1; `probs` becomes the resulting marginal rate of every component (exact
    without correlation), so the expected L0 stays sum(probs).
    """
    out: dict[str, Tensor] = {}
    c = probs.numel()
    if cfg.magnitude_mean_rare > 0:
        frac = order.double() / max(c - 1, 1)
        out["mag_median"] = cfg.magnitude_mean + (cfg.magnitude_mean_rare - cfg.magnitude_mean) * frac
    if cfg.hierarchy_roots > 0:
        na, B = cfg.n_atoms, cfg.hierarchy_branching
        nodes = torch.argsort(order[:na])[: cfg.n_hierarchy]  # atoms from most to least frequent, breadth first
        parent = torch.full((c,), -1, dtype=torch.long)
        q = probs.clone()
        eff = probs.clone()
        levels = hierarchy_levels(cfg)
        for (ps, pn), (cs, cn) in zip(levels[:-1], levels[1:]):
            par, kids = nodes[ps : ps + pn], nodes[cs : cs + cn].view(pn, B)
            parent[kids] = par[:, None].expand(pn, B)
            p_par, p_kid = probs[par][:, None], probs[kids]
            if cfg.hierarchy_exclusive:
                draw = p_kid / p_par * (1 + (p_kid.sum(dim=1, keepdim=True) - p_kid) / p_par)
                draw = draw.clamp(max=1.0)
                kept = _kept_given_parent(draw)
            else:
                draw = kept = (p_kid / p_par).clamp(max=1.0)
            q[kids] = draw
            eff[kids] = eff[par][:, None] * kept
        out.update(hierarchy=nodes, parent=parent, draw_probs=q, probs=eff)
    if cfg.corr_rank > 0:
        f = torch.randn(c, cfg.corr_rank, generator=gen, dtype=torch.float64) * cfg.corr_scale
        norm = f.norm(dim=1, keepdim=True)
        out["corr_factor"] = f * (0.95 / norm).clamp(max=1.0)  # shared variance below 1 for every component
    return out


# ----------------------------------------------------------------------------------------------- sampling


def _fire(truth: Truth, n: int, gen: torch.Generator) -> tuple[Bool[Tensor, "n c"], Tensor, Tensor]:
    """Bernoulli firing with the configured marginals; co-firing through a Gaussian copula per group.

    Returns the dense firing table and its entries (rows, cols) in row-major order (as torch.nonzero gives them).
    """
    c, dev = truth.n_components, truth.device
    if truth.hierarchy is not None:
        return _fire_hierarchy(truth, n, gen)
    if truth.corr_factor is not None or truth.draw_probs is not None:
        active = _draw_dense(truth, n, gen, torch.arange(c, device=dev))
    elif truth.cfg.cofire_corr <= 0 or truth.cfg.cofire_groups == 0:
        active = torch.rand(n, c, generator=gen, device=dev) < truth.probs
    else:
        rho = truth.cfg.cofire_corr
        shared = torch.randn(n, truth.cfg.cofire_groups, generator=gen, device=dev)
        own = torch.randn(n, c, generator=gen, device=dev)
        grouped = truth.group >= 0
        z = torch.where(grouped, math.sqrt(rho) * shared[:, truth.group.clamp_min(0)] + math.sqrt(1 - rho) * own, own)
        u = 0.5 * (1 + torch.erf(z / math.sqrt(2)))  # uniform marginals, correlated inside a group
        active = u < truth.probs
    rows, cols = torch.nonzero(active, as_tuple=True)
    return active, rows, cols


def _copula(truth: Truth) -> tuple[Tensor, Tensor, Tensor]:
    """Per component: the factor loadings F [c, rc], the own-noise scale sqrt(1 - |F|^2) and Phi^-1(threshold)."""
    F = truth.corr_factor
    thr = truth.draw_probs if truth.draw_probs is not None else truth.probs
    own = (1 - F.pow(2).sum(dim=1)).clamp_min(0).sqrt()
    z_thr = torch.erfinv((2 * thr.double() - 1).clamp(-1, 1)).mul(math.sqrt(2)).to(F.dtype)
    return F, own, z_thr


def _draw_dense(truth: Truth, n: int, gen: torch.Generator, cols: Tensor, factor: Tensor | None = None) -> Tensor:
    """[n, len(cols)] draws of the given components at their draw thresholds: with the low-rank copula (row
    factors `factor` [n, rc], drawn here if None) z = F g + sqrt(1 - |F|^2) e fires when z < Phi^-1(threshold)."""
    thr = truth.draw_probs if truth.draw_probs is not None else truth.probs
    dev = truth.device
    if truth.corr_factor is None:
        return torch.rand(n, cols.numel(), generator=gen, device=dev) < thr[cols]
    F, own, z_thr = _copula(truth)
    g = factor if factor is not None else torch.randn(n, F.shape[1], generator=gen, device=dev)
    z = torch.randn(n, cols.numel(), generator=gen, device=dev).mul_(own[cols]).add_(g @ F[cols].T)
    return z < z_thr[cols]  # N(0, 1) marginals: fires with probability thr, correlated through F


def _draw_sparse(truth: Truth, rows: Tensor, cols: Tensor, factor: Tensor | None, gen: torch.Generator) -> Tensor:
    """The same draw for a list of (row, component) entries only (O(entries), not O(n * c))."""
    thr = truth.draw_probs if truth.draw_probs is not None else truth.probs
    dev = truth.device
    if truth.corr_factor is None:
        return torch.rand(rows.numel(), generator=gen, device=dev) < thr[cols]
    F, own, z_thr = _copula(truth)
    z = torch.randn(rows.numel(), generator=gen, device=dev).mul_(own[cols]).add_((factor[rows] * F[cols]).sum(dim=1))
    return z < z_thr[cols]


def _fire_hierarchy(truth: Truth, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Top down: every component outside the trees and every root is drawn (densely, with the copula if any); then
    level by level, the children of each firing parent are drawn at their thresholds with the same row factor and,
    for exclusive siblings, one drawn sibling is kept (uniformly). A child can only fire under a firing parent, so
    drawing children only there is the same distribution as drawing every child and pruning, at O(n * L0) cost
    for the trees instead of O(n * tree size) (synthbench16k: 10,880 tree nodes, L0 ~ 34)."""
    cfg, nodes, B, dev = truth.cfg, truth.hierarchy, truth.cfg.hierarchy_branching, truth.device
    c = truth.n_components
    levels = hierarchy_levels(cfg)
    in_tree = torch.zeros(c, dtype=torch.bool, device=dev)
    in_tree[nodes[levels[1][0]:]] = True  # non-root tree nodes: only drawn under their parent
    free = torch.nonzero(~in_tree).squeeze(1)
    factor = None
    if truth.corr_factor is not None:
        factor = torch.randn(n, truth.corr_factor.shape[1], generator=gen, device=dev)
    r0, i0 = torch.nonzero(_draw_dense(truth, n, gen, free, factor), as_tuple=True)
    rows, cols = [r0], [free[i0]]
    pos = torch.full((c,), -1, dtype=torch.long, device=dev)  # position of a tree node inside its level
    for s, cnt in levels:
        pos[nodes[s : s + cnt]] = torch.arange(cnt, device=dev)
    is_root = torch.zeros(c, dtype=torch.bool, device=dev)
    is_root[nodes[: levels[0][1]]] = True
    pr, pc = r0[is_root[cols[0]]], cols[0][is_root[cols[0]]]  # firing roots
    for cs, _ in levels[1:]:
        if pr.numel() == 0:
            break
        kid = nodes[cs + pos[pc][:, None] * B + torch.arange(B, device=dev)]  # [firing parents, B]
        kr = pr[:, None].expand_as(kid)
        on = _draw_sparse(truth, kr.reshape(-1), kid.reshape(-1), factor, gen).view(kid.shape)
        if cfg.hierarchy_exclusive:
            score = torch.rand(kid.shape, generator=gen, device=dev).masked_fill_(~on, -1.0)
            on = on & (torch.arange(B, device=dev) == score.argmax(dim=1, keepdim=True))
        pr, pc = kr[on], kid[on]
        rows.append(pr)
        cols.append(pc)
    rows_t, cols_t = torch.cat(rows), torch.cat(cols)
    order = torch.argsort(rows_t * c + cols_t)  # row-major, as torch.nonzero orders a dense table
    rows_t, cols_t = rows_t[order], cols_t[order]
    active = torch.zeros(n, c, dtype=torch.bool, device=dev)
    active[rows_t, cols_t] = True
    return active, rows_t, cols_t


def _scale_children(truth: Truth, rows: Tensor, cols: Tensor, amp: Tensor) -> Tensor:
    """Multiply each firing child's magnitude by its parent's (already scaled) magnitude / the parent's mean,
    level by level from the roots down. Entries are sorted by (row, col), so a parent is found by bisection."""
    c = truth.n_components
    key = rows * c + cols
    mean = truth.mean_magnitude()
    nodes = truth.hierarchy
    level_of = torch.full((c,), -1, dtype=torch.long, device=amp.device)
    for lvl, (s, n) in enumerate(hierarchy_levels(truth.cfg)):
        level_of[nodes[s : s + n]] = lvl
    lv = level_of[cols]
    for lvl in range(1, truth.cfg.hierarchy_depth + 1):
        sel = torch.nonzero(lv == lvl).squeeze(1)
        if sel.numel() == 0:
            continue
        pcols = truth.parent[cols[sel]]
        pidx = torch.searchsorted(key, rows[sel] * c + pcols)
        amp[sel] = amp[sel] * amp[pidx] / mean[pcols]
    return amp


def _sparse_rows_matmul(rows: Tensor, cols: Tensor, vals: Tensor, n: int, dense: Tensor) -> Tensor:
    """sum_j vals_j * dense[cols_j] into row rows_j (rows sorted): CSR @ dense, O(nnz * d)."""
    counts = torch.bincount(rows, minlength=n)
    crow = torch.zeros(n + 1, dtype=torch.long, device=dense.device)
    crow[1:] = torch.cumsum(counts, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        m = torch.sparse_csr_tensor(crow, cols, vals, (n, dense.shape[0]), device=dense.device)
        return m @ dense


def sample(truth: Truth, n: int, gen: torch.Generator, details: bool = True) -> Sample:
    """Draw n activations on the truth's device; `gen` must live on that device.

    details=False skips the dense [n, c] magnitude table (training only needs x); x is identical either way.
    """
    dev, d = truth.device, truth.d
    na, nb, nf = truth.n_atoms, truth.n_blocks, truth.n_frames
    active, rows, cols = _fire(truth, n, gen)  # entries: O(n * L0) from here on, not O(n * c)
    cfg = truth.cfg
    amp = cfg.magnitude_mean * torch.exp(cfg.magnitude_log_std * torch.randn(rows.numel(), generator=gen, device=dev))
    if truth.mag_median is not None:
        amp = amp / cfg.magnitude_mean * truth.mag_median[cols]
    if truth.hierarchy is not None and cfg.hierarchy_scale_children:
        amp = _scale_children(truth, rows, cols, amp)
    magnitude = torch.zeros(n, truth.n_components, device=dev) if details else None
    if details:
        magnitude[rows, cols] = amp
    is_bf = cols >= na  # blocks and frames need their amplitudes densely (few columns)
    mag_bf = torch.zeros(n, nb + nf, device=dev)
    mag_bf[rows[is_bf], cols[is_bf] - na] = amp[is_bf]

    is_atom = cols < na  # atoms: a_i u_i, one sparse (CSR) matmul
    x = _sparse_rows_matmul(rows[is_atom], cols[is_atom], amp[is_atom], n, truth.atoms)

    ranks = [int(r) for r in truth.ranks.tolist()]
    total_r = sum(ranks)
    block_coords = torch.zeros(n, total_r, device=dev)
    if nb:
        r_max = truth.subspaces.shape[2]
        v = torch.randn(n, nb, r_max, generator=gen, device=dev)
        mask = torch.arange(r_max, device=dev) < truth.ranks[:, None]  # [nb, r_max]
        v = v * mask
        v = v / v.norm(dim=2, keepdim=True).clamp_min(1e-12)  # uniform on S^{r-1} inside each block
        coords = v * mag_bf[:, :nb, None]  # [n, nb, r_max]
        x = x + torch.einsum("nbr,bdr->nd", coords, truth.subspaces)
        block_coords = coords[:, mask]  # concatenated per block

    frame_choice = torch.full((n, nf), -1, dtype=torch.long, device=dev)
    if nf:
        u = torch.rand(n, nf, generator=gen, device=dev)
        choice = (u * truth.frame_sizes).long().clamp_max(truth.frame_sizes - 1)  # uniform direction
        f_active = active[:, na + nb :]
        dirs = truth.frames[torch.arange(nf, device=dev), choice]  # [n, nf, d]
        x = x + torch.einsum("nf,nfd->nd", mag_bf[:, nb:], dirs)
        frame_choice = torch.where(f_active, choice, frame_choice)

    x = x + truth.bias
    if cfg.noise_std > 0:
        x = x + cfg.noise_std * torch.randn(n, d, generator=gen, device=dev)
    return Sample(x=x, active=active, magnitude=magnitude, block_coords=block_coords, frame_choice=frame_choice)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator on `device` for a data stream."""
    return torch.Generator(device=device).manual_seed(seed)


def stream(truth: Truth, batch_size: int, seed: int):
    """Endless batches of activations x [batch_size, d] from one seeded stream."""
    gen = make_generator(seed, truth.device)
    while True:
        yield sample(truth, batch_size, gen, details=False).x


# ----------------------------------------------------------------------------------------------- describe


def describe(cfg: TruthConfig) -> dict:
    """What the truth holds: components by rank, expected L0, superposition ratio (total rank / d)."""
    truth = build_truth(cfg)
    na, nb = truth.n_atoms, truth.n_blocks
    by_rank: dict[int, dict] = {}

    def add(rank: int, kind: str, p: float) -> None:
        row = by_rank.setdefault(rank, {"rank": rank, "atoms": 0, "subspaces": 0, "frames": 0, "expected_l0": 0.0})
        row[kind] += 1
        row["expected_l0"] += p

    probs = truth.probs.tolist()
    for i in range(na):
        add(1, "atoms", probs[i])
    for b, r in enumerate(cfg.subspace_ranks):
        add(r, "subspaces", probs[na + b])
    for f, r in enumerate(cfg.frame_ranks):
        add(r, "frames", probs[na + nb + f])
    flags = block_orthogonal_flags(cfg)
    blocks = [
        {
            "block": b,
            "rank": r,
            "orthogonal": flags[b],
            "prob": probs[na + b],
            "frequency_rank": int(sorted(probs, reverse=True).index(probs[na + b])),
        }
        for b, r in enumerate(cfg.subspace_ranks)
    ]
    return {
        "d": cfg.d,
        "n_components": cfg.n_components,
        "total_rank": cfg.total_rank,
        "superposition_ratio": cfg.total_rank / cfg.d,
        "expected_l0": truth.expected_l0(),
        "target_l0": cfg.target_l0,
        "by_rank": [by_rank[r] for r in sorted(by_rank)],
        "blocks": blocks,
        "atom_prob_range": [min(probs[:na], default=0.0), max(probs[:na], default=0.0)],
    }
