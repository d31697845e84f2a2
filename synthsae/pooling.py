"""Pooled SAEs: merge the latents that several seeds agree on into one dictionary, then refit its encoder.

Recipe (docs/metrics.md, "Pooling"):
1. Gather the *live* latents of the pooled seeds: firing frequency > `live_threshold` (default 1e-5) on the
   held-out eval sample (a latent that never fires there carries nothing worth pooling).
2. Cluster them across seeds. Candidate links are pairs from different seeds whose unit decoder rows have
   cos >= tau; links are taken in descending cosine and merge two clusters only when (a) the clusters share no
   seed (so a cluster holds at most one latent per seed and its size is the number of distinct seeds it spans)
   and (b) the clusters' mean directions still have cos >= tau (no chaining drift across a subspace).
3. Score and keep: rule "coverage" ranks clusters by seed coverage, ties by cohesion (mean cosine of members to
   their centroid); "coverage_freq" by coverage, ties by mean firing frequency; "union" keeps every cluster
   (the full union of unique latents; its width is the number of clusters, not `width`).
4. Represent each kept cluster by the normalised mean of its unit decoder rows, the mean encoder column and
   the mean of the other per-latent parameters (b_enc, thresholds ...); b_dec is the mean over pooled seeds.
5. Refit encoder and biases with the decoder frozen: a short phase of the same trainer (loop.train_steps).

The result is an ordinary SAE (S = number of pools) saved in the SAELens layout, accepted by every command.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from synthsae.results import Bagging, PoolClusters, PoolInfo, PoolingResult, PoolVariant, SingleSeeds, Spread

RULES = ("coverage", "coverage_freq", "union")
LIVE_THRESHOLD = 1e-5
KNOWN_PER_LATENT = ("b_enc", "threshold", "log_threshold", "b_gate", "b_mag", "r_mag")  # [S, m] extras


# ----------------------------------------------------------------------------------------------- clustering


@dataclass
class Clusters:
    """Clusters of gathered latents. `members[c]` indexes the gathered list (seed_of / latent_of)."""

    seed_of: Int[Tensor, " N"]  # seed index (into the SAE's seed axis) of every gathered latent
    latent_of: Int[Tensor, " N"]  # latent index inside its seed
    labels: Int[Tensor, " N"]  # cluster id 0..C-1 of every gathered latent
    coverage: Int[Tensor, " C"]  # distinct seeds per cluster (= size: at most one latent per seed)
    cohesion: Float[Tensor, " C"]  # mean cosine of members to the normalised centroid
    freq: Float[Tensor, " C"]  # mean firing frequency of members
    centroid: Float[Tensor, "C d"]  # normalised mean decoder row

    @property
    def n_clusters(self) -> int:
        return int(self.coverage.numel())

    def members(self, c: int) -> Tensor:
        return torch.nonzero(self.labels == c).squeeze(1)


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def cluster_latents(
    dec: Float[Tensor, "N d"], seed_of: Int[Tensor, " N"], tau: float, chunk: int = 4096
) -> Int[Tensor, " N"]:
    """Seed-exclusive, drift-checked single linkage of latents from different seeds (see module docstring).

    Cosines are computed seed pair by seed pair in row chunks (never an N x N matrix).
    """
    from synthsae.metrics.matching import unit_rows

    D = unit_rows(dec.detach().float().cpu())
    seeds = seed_of.cpu()
    N = D.shape[0]
    uniq = torch.unique(seeds).tolist()
    rows_i, rows_j, vals = [], [], []
    for ai, a in enumerate(uniq):
        ia = torch.nonzero(seeds == a).squeeze(1)
        for b in uniq[ai + 1 :]:
            ib = torch.nonzero(seeds == b).squeeze(1)
            for s in range(0, ia.numel(), chunk):
                c = D[ia[s : s + chunk]] @ D[ib].T
                r, q = torch.nonzero(c >= tau, as_tuple=True)
                rows_i.append(ia[s + r])
                rows_j.append(ib[q])
                vals.append(c[r, q])
    parent = list(range(N))
    if vals:
        ei, ej, ev = torch.cat(rows_i).numpy(), torch.cat(rows_j).numpy(), torch.cat(vals).numpy()
        order = np.argsort(-ev, kind="stable")
        seed_np = seeds.numpy()
        mask = [1 << int(list(uniq).index(int(s))) for s in seed_np]  # seed bitmask per root
        csum = D.double().numpy().copy()  # sum of unit rows per root
        for e in order:
            ri, rj = _find(parent, int(ei[e])), _find(parent, int(ej[e]))
            if ri == rj or mask[ri] & mask[rj]:
                continue
            ci, cj = csum[ri], csum[rj]
            cos = float(ci @ cj) / (math.sqrt(float(ci @ ci) * float(cj @ cj)) + 1e-30)
            if cos < tau:
                continue
            parent[rj] = ri
            mask[ri] |= mask[rj]
            csum[ri] = ci + cj
    roots = torch.tensor([_find(parent, i) for i in range(N)], dtype=torch.long)
    _, labels = torch.unique(roots, return_inverse=True)
    return labels


def gather_and_cluster(
    dec: Float[Tensor, "S m d"],
    seeds: list[int],
    freq: Float[Tensor, "S m"],
    tau: float,
    live_threshold: float = LIVE_THRESHOLD,
) -> Clusters:
    """Gather the live latents of `seeds` (indices into the seed axis) and cluster them across seeds."""
    from synthsae.metrics.matching import unit_rows

    dec = dec.detach().float().cpu()
    freq = freq.detach().float().cpu()
    seed_of, latent_of = [], []
    for s in seeds:
        live = torch.nonzero(freq[s] > live_threshold).squeeze(1)
        seed_of.append(torch.full_like(live, s))
        latent_of.append(live)
    seed_of_t, latent_of_t = torch.cat(seed_of), torch.cat(latent_of)
    D = unit_rows(dec[seed_of_t, latent_of_t])
    labels = cluster_latents(D, seed_of_t, tau)
    C = int(labels.max()) + 1 if labels.numel() else 0
    coverage = torch.bincount(labels, minlength=C)
    csum = torch.zeros(C, D.shape[1]).index_add_(0, labels, D)
    centroid = unit_rows(csum)
    cohesion = torch.zeros(C).index_add_(0, labels, (D * centroid[labels]).sum(1)) / coverage.clamp_min(1)
    f = torch.zeros(C).index_add_(0, labels, freq[seed_of_t, latent_of_t]) / coverage.clamp_min(1)
    return Clusters(seed_of_t, latent_of_t, labels, coverage, cohesion, f, centroid)


def rank_clusters(cl: Clusters, rule: str = "coverage", width: int | None = None) -> Int[Tensor, " w"]:
    """Cluster ids in rank order, cut to `width` (rule "union" keeps every cluster)."""
    if rule not in RULES:
        raise ValueError(f"pooling rule {rule!r}: must be one of {', '.join(RULES)}")
    tie = cl.cohesion if rule == "coverage" else cl.freq
    # lexicographic: coverage first, then the tie-breaker, then cluster id (deterministic)
    order = np.lexsort((np.arange(cl.n_clusters), -tie.double().numpy(), -cl.coverage.numpy()))
    order = torch.from_numpy(order).long()
    if rule == "union" or width is None:
        return order
    return order[:width]


# ----------------------------------------------------------------------------------------------- pooled tensors


def pooled_state(sae, cl: Clusters, keep: Int[Tensor, " w"], seeds: list[int]) -> dict[str, Tensor]:
    """The pooled SAE's tensors (no seed axis): W_dec [w, d] (unit rows), W_enc [d, w], b_dec [d], per-latent extras.

    Per-latent tensors are averaged over each kept cluster's members; per-seed tensors ([S, d] or [S]) over
    the pooled seeds. Any other tensor is taken from the first pooled seed.
    """
    from synthsae.metrics.matching import unit_rows

    state = {k: v.detach().float().cpu() for k, v in sae.state_dict().items()}
    S, m, d = state["W_dec"].shape
    w = keep.numel()
    # member -> kept slot
    slot_of_cluster = torch.full((cl.n_clusters,), -1, dtype=torch.long)
    slot_of_cluster[keep] = torch.arange(w)
    slot = slot_of_cluster[cl.labels]
    use = slot >= 0
    s_of, l_of, slot = cl.seed_of[use], cl.latent_of[use], slot[use]
    count = torch.bincount(slot, minlength=w).clamp_min(1).float()

    def per_latent_mean(t: Tensor, axis: int = 1) -> Tensor:  # t: [S, m, ...] -> [w, ...]
        vals = t[s_of, l_of]  # [n, ...]
        acc = torch.zeros((w,) + vals.shape[1:]).index_add_(0, slot, vals)
        return acc / count.view(-1, *([1] * (vals.dim() - 1)))

    out: dict[str, Tensor] = {}
    sel = torch.tensor(seeds, dtype=torch.long)
    for name, t in state.items():
        if name == "W_dec":
            out[name] = unit_rows(per_latent_mean(unit_rows(t), 1))
        elif name == "W_enc":
            out[name] = per_latent_mean(t.transpose(1, 2), 1).T.contiguous()  # [S, d, m] -> [d, w]
        elif t.dim() == 2 and t.shape == (S, m) and (name in KNOWN_PER_LATENT or m != d):
            out[name] = per_latent_mean(t, 1)
        elif t.dim() >= 1 and t.shape[0] == S:
            out[name] = t[sel].mean(0)
        else:
            out[name] = t
    return out


def pooled_sae(sae_cfg, states: list[dict[str, Tensor]], d_in: int, device="cpu", dtype=torch.float32, init_seeds=None):
    """An SAE with one seed per pooled state (all of the same width) and its SAEConfig (d_sae = the width)."""
    from synthsae.sae import build_sae

    w = states[0]["W_dec"].shape[0]
    if any(s["W_dec"].shape[0] != w for s in states):
        raise ValueError("pooled states of one SAE must share a width")
    cfg = dataclasses.replace(sae_cfg, d_sae=w, k=min(sae_cfg.k, w))
    if w != sae_cfg.d_sae and getattr(cfg, "matryoshka_prefixes", None):
        cfg = dataclasses.replace(cfg, matryoshka_prefixes=[])
    init = list(init_seeds) if init_seeds is not None else list(range(len(states)))
    sae = build_sae(cfg, d_in, init, device, dtype)
    own = sae.state_dict()  # the module's own names (as select_seeds uses them), not the SAELens file names
    missing = [k for k in own if k not in states[0]]
    if missing:
        raise KeyError(f"pooled state lacks {', '.join(missing)}")
    sae.load_state_dict({k: torch.stack([st[k] for st in states]).to(v.device, v.dtype).reshape(v.shape) for k, v in own.items()})
    return sae, cfg


def refit(sae, batches, steps: int, train_cfg, progress: bool = False):
    """Refit encoder and biases with the decoder frozen: a short phase of the same trainer."""
    from synthsae.loop import train_steps

    if steps <= 0:
        return sae
    tcfg = dataclasses.replace(train_cfg, steps=steps, warmup_steps=min(train_cfg.warmup_steps, max(steps // 10, 1)))
    train_steps(sae, batches, steps, tcfg, freeze_decoder=True, progress=progress)
    return sae


# ----------------------------------------------------------------------------------------------- protocol


def match_scores(
    dec_a: Float[Tensor, "ma d"], dec_b: Float[Tensor, "mb d"], rule: str = "maxcos",
    enc_a: Float[Tensor, "d ma"] | None = None, enc_b: Float[Tensor, "d mb"] | None = None,
) -> Float[Tensor, " ma"]:
    """Match score of every latent of dictionary a in dictionary b (widths may differ), by synthsae.metrics rules."""
    from synthsae.metrics.matching import hungarian, maxcos, strict_match, unit_rows

    A, B = unit_rows(dec_a.detach().float().cpu()), unit_rows(dec_b.detach().float().cpu())
    if rule == "maxcos":
        return maxcos(A, B)[0]
    if rule == "hungarian":
        return hungarian(A, B)[1].float().nan_to_num(-1.0)
    if rule == "strict":
        if enc_a is None or enc_b is None:
            raise ValueError("match rule 'strict' needs encoders")
        Ea, Eb = unit_rows(enc_a.detach().float().cpu().T), unit_rows(enc_b.detach().float().cpu().T)
        return strict_match(A, B, Ea, Eb)[1].float()
    raise ValueError(f"match rule {rule!r}: must be one of maxcos, hungarian, strict")


def heldout_stability(
    dec: Float[Tensor, "m d"], others: list[Tensor], tau: float, rule: str = "maxcos",
    enc: Tensor | None = None, other_encs: list[Tensor] | None = None,
) -> Float[Tensor, " m"]:
    """Per latent of `dec`: the fraction of the `others` dictionaries in which it is matched at score >= tau."""
    hits = torch.zeros(dec.shape[0])
    for i, o in enumerate(others):
        oe = other_encs[i] if other_encs is not None else None
        hits += (match_scores(dec, o, rule, enc, oe) >= tau).float()
    return hits / max(len(others), 1)


@torch.no_grad()
def evaluate(sae, x: Tensor, batch_size: int = 4096) -> dict[str, Tensor]:
    """Per seed: EV = 1 - FVU, L0 (mean active latents per token), firing frequency [S, m]."""
    from synthsae.metrics.ablation import ablate, latent_stats

    freq, _ = latent_stats(sae, x, batch_size)
    none = torch.zeros(1, sae.n_seeds, sae.W_dec.shape[1], dtype=torch.bool, device=x.device)
    f = ablate(sae, x, none, None, batch_size)["fvu"][0]
    return {"ev": 1.0 - f, "l0": freq.sum(-1), "freq": freq}


def _spread(values) -> Spread:
    from synthsae.metrics.ablation import spread

    return spread(values)


def _seed_halves(S: int) -> tuple[list[int], list[int]]:
    h = S // 2
    return list(range(h)), list(range(h, 2 * h))


REFIT_BUFFER_TOKENS = 131_072


def _default_batches(truth, batch_size: int, seed: int, n_tokens: int = REFIT_BUFFER_TOKENS):
    """Endless [batch_size, d] batches from one buffer of `n_tokens` truth samples, reshuffled every epoch.

    Sampled once per study and shared by every refit, so all pools see the same data (and sampling does not
    dominate the short refits)."""
    from synthsae.truth import make_generator, sample

    gen = make_generator(seed, truth.device)
    buf = sample(truth, max(n_tokens, batch_size), gen, details=False).x
    perm_gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(buf.shape[0], generator=perm_gen).to(buf.device)
        for i in range(0, buf.shape[0] - batch_size + 1, batch_size):
            yield buf[perm[i : i + batch_size]]


@dataclass
class PoolPlan:
    """Which seeds go into which pool and which (rule, width) pooled SAEs are built; the primary is named first."""

    pools: dict[str, list[int]]  # "all" and, with halves, "A" / "B"
    variants: list[tuple[str, int | None]]  # (rule, width); width None = union
    primary: str  # variant name of the primary pooled SAE

    @property
    def halves(self) -> bool:
        return "A" in self.pools


def variant_name(rule: str, width: int | None) -> str:
    return f"{rule}_w{width}" if width is not None else rule


def make_plan(S: int, m: int, primary_rule: str, widths: list[int] | None, rules, halves: bool) -> PoolPlan:
    """The pools and variants of a study; the primary (primary_rule at the base width m) is always built."""
    for r in list(rules) + [primary_rule]:
        if r not in RULES:
            raise ValueError(f"pooling rule {r!r}: must be one of {', '.join(RULES)}")
    widths = list(widths) if widths else [m, 2 * m]
    primary = (primary_rule, None if primary_rule == "union" else m)
    variants = [primary] + [(r, w) for r in rules if r != "union" for w in widths if (r, w) != primary]
    if "union" in rules and primary_rule != "union":
        variants.append(("union", None))
    pools = {"all": list(range(S))}
    if halves and S >= 2:
        A, B = _seed_halves(S)
        pools.update({"A": A, "B": B})
    return PoolPlan(pools, variants, variant_name(*primary))


@dataclass
class Fitted:
    """One refitted pooled SAE: seed `index` of the batched `sae`, its kept clusters and its eval numbers."""

    sae: object
    index: int
    keep: Tensor
    ev: float
    l0: float
    freq: Tensor  # [width] firing frequency on the eval sample


# ----------------------------------------------------------------------------------------------- stages


def cluster_stage(dec, freq, plan: PoolPlan, tau: float, live_threshold: float = LIVE_THRESHOLD) -> dict[str, Clusters]:
    """Stage 1: cluster the live latents of every pool's seeds across seeds."""
    return {name: gather_and_cluster(dec, seeds, freq, tau, live_threshold) for name, seeds in plan.pools.items()}


def build_stage(sae, clusters: dict[str, Clusters], plan: PoolPlan) -> dict[tuple, tuple[Tensor, dict[str, Tensor]]]:
    """Stage 2: for every (rule, width, pool), the kept clusters and the pooled SAE's tensors (before refit)."""
    out = {}
    for rule, width in plan.variants:
        for name, seeds in plan.pools.items():
            keep = rank_clusters(clusters[name], rule, width)
            out[(rule, width, name)] = (keep, pooled_state(sae, clusters[name], keep, seeds))
    return out


def refit_stage(sae_cfg, train_cfg, built: dict, x: Tensor, data, refit_steps: int, progress: bool = False) -> dict[tuple, Fitted]:
    """Stage 3: refit every pooled SAE (decoder frozen), pools of equal width batched as seeds of one SAE."""
    from synthsae.progress import progress_bar as tqdm

    by_w: dict[int, list] = {}
    for key, (_, st) in built.items():
        by_w.setdefault(st["W_dec"].shape[0], []).append(key)
    fitted = {}
    for _, keys in tqdm(by_w.items(), desc="pooling refits", disable=not progress, leave=False):
        psae, _ = pooled_sae(sae_cfg, [built[k][1] for k in keys], x.shape[1], x.device, x.dtype,
                             init_seeds=list(range(len(keys))))
        refit(psae, data, refit_steps, train_cfg)
        ev = evaluate(psae, x)
        for i, k in enumerate(keys):
            fitted[k] = Fitted(psae, i, built[k][0], float(ev["ev"][i]), float(ev["l0"][i]), ev["freq"][i].cpu())
    return fitted


def _rotate(dec: Tensor, enc: Tensor | None, gen: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """A dictionary turned by a Haar-random rotation of the whole space (decoder rows and encoder columns [d, m])."""
    from synthsae.metrics.analyze import haar_rotation

    q = haar_rotation(dec.shape[1], gen)
    return dec @ q, (q.T @ enc if enc is not None else None)


def _between(dA, eA, liveA, dB, eB, liveB, tau, match, gen) -> tuple[list, list]:
    """Live-latent match rates A->B and B->A, and the same against a randomly rotated partner (the null)."""
    strict = match == "strict"
    real, null = [], []
    for (dp, ep, lp), (dq, eq) in (((dA, eA, liveA), (dB, eB)), ((dB, eB, liveB), (dA, eA))):
        if not lp.any():
            real.append(None)
            null.append(None)
            continue
        sc = match_scores(dp, dq, match, ep if strict else None, eq if strict else None)
        real.append(float((sc[lp] >= tau).float().mean()))
        rq, re = _rotate(dq, eq if strict else None, gen)
        sc0 = match_scores(dp, rq, match, ep if strict else None, re)
        null.append(float((sc0[lp] >= tau).float().mean()))
    return real, null


@torch.no_grad()
def _bag_eval(sae, x: Tensor, seeds: list[int], batch_size: int = 4096) -> float:
    """EV of the bag: the seeds' reconstructions averaged (= their dictionaries concatenated, decoders / n)."""
    sse = 0.0
    for xb in x.split(batch_size):
        xh = sae.decode(sae.encode(xb))[seeds].mean(0)
        sse += float(((xb - xh) ** 2).sum())
    return 1.0 - sse / float(((x - x.mean(0)) ** 2).sum())


def judge_stage(sae, x: Tensor, single: dict, plan: PoolPlan, fitted: dict[tuple, Fitted], tau: float, match: str,
                live_threshold: float, null_seed: int = 4243) -> tuple[SingleSeeds, Bagging | None, dict[str, PoolVariant]]:
    """Stage 4: single seeds, bagging and every pooled SAE judged the same way (EV, L0, stability between halves
    with its rotated null, stability against the other half's single seeds)."""
    gen = torch.Generator().manual_seed(null_seed)
    dec, enc = sae.W_dec.detach().float().cpu(), sae.W_enc.detach().float().cpu()
    live = (single["freq"] > live_threshold).cpu()
    strict = match == "strict"
    sing = SingleSeeds(ev=_spread(single["ev"].tolist()), l0=_spread(single["l0"].tolist()),
                       n_live=_spread(live.sum(-1).float().tolist()))
    bag = None
    if plan.halves:
        A, B = plan.pools["A"], plan.pools["B"]
        pair, pair0 = [], []
        for a in A:
            for b in B:
                r, n = _between(dec[a], enc[a], live[a], dec[b], enc[b], live[b], tau, match, gen)
                pair += r
                pair0 += n
        held = []
        for own, other in ((A, B), (B, A)):
            for a in own:
                st = heldout_stability(dec[a], [dec[b] for b in other], tau, match, enc[a] if strict else None,
                                       [enc[b] for b in other] if strict else None)
                held.append(float(st[live[a]].mean()) if live[a].any() else None)
        sing.stability_between_halves, sing.stability_null = _spread(pair), _spread(pair0)
        sing.stability_vs_heldout = _spread(held)

        def cat(seeds):
            return (torch.cat([dec[s] for s in seeds]), torch.cat([enc[s] for s in seeds], dim=1),
                    torch.cat([live[s] for s in seeds]))

        r, n = _between(*cat(A), *cat(B), tau, match, gen)
        bag = Bagging(width=len(A) * dec.shape[1], ev_halves=_spread([_bag_eval(sae, x, A), _bag_eval(sae, x, B)]),
                      l0_halves=_spread([float(single["l0"][A].sum()), float(single["l0"][B].sum())]),
                      stability_between_halves=_spread(r), stability_null=_spread(n))

    variants = {}
    for rule, width in plan.variants:
        name = variant_name(rule, width)
        f = {p: fitted[(rule, width, p)] for p in plan.pools}
        pdec = {p: v.sae.W_dec[v.index].detach().float().cpu() for p, v in f.items()}
        penc = {p: v.sae.W_enc[v.index].detach().float().cpu() for p, v in f.items()}
        plive = {p: v.freq > live_threshold for p, v in f.items()}
        row = PoolVariant(name=name, rule=rule, width=width, role="primary" if name == plan.primary else "secondary",
                          pools={p: PoolInfo(seeds=plan.pools[p], width=int(v.keep.numel()), ev=v.ev, l0=v.l0,
                                             n_live=int(plive[p].sum())) for p, v in f.items()})
        if plan.halves:
            r, n = _between(pdec["A"], penc["A"], plive["A"], pdec["B"], penc["B"], plive["B"], tau, match, gen)
            held = []
            for p, other in (("A", plan.pools["B"]), ("B", plan.pools["A"])):
                st = heldout_stability(pdec[p], [dec[b] for b in other], tau, match, penc[p] if strict else None,
                                       [enc[b] for b in other] if strict else None)
                held.append(float(st[plive[p]].mean()) if plive[p].any() else None)
            row.stability_pool_vs_pool, row.stability_null = _spread(r), _spread(n)
            row.stability_vs_heldout = _spread(held)
            row.ev_halves = _spread([f["A"].ev, f["B"].ev])
            row.l0_halves = _spread([f["A"].l0, f["B"].l0])
        variants[name] = row
    return sing, bag, variants


def save_stage(out_dir: Path, sae, clusters: dict[str, Clusters], plan: PoolPlan, fitted: dict[tuple, Fitted],
               variants: dict[str, PoolVariant], meta: dict) -> None:
    """Stage 5: every pooled SAE as an ordinary SAELens-layout folder out_dir/<variant>_<pool>/."""
    for rule, width in plan.variants:
        name = variant_name(rule, width)
        for p, seeds in plan.pools.items():
            f = fitted[(rule, width, p)]
            folder = Path(out_dir) / f"{name}_{p}"
            pooled = [sae.init_seeds[s] for s in seeds] if hasattr(sae, "init_seeds") else seeds
            save_pooled(folder, f.sae, f.index, {**meta, "rule": rule, "width": int(f.keep.numel()), "pooled_seeds": pooled},
                        f.freq)
            info = variants[name].pools[p]
            info.folder = str(folder)
            info.kept_coverage_hist = torch.bincount(clusters[p].coverage[f.keep], minlength=len(seeds) + 1)[1:].tolist()


@dataclass
class PoolConfig:
    """What a pooling study varies; None = the run's config (analysis.tau / match / pool_primary / eval_tokens /
    pool_refit_steps, widths 1x and 2x d_sae, its eval stream's seed)."""

    tau: float | None = None
    match: str | None = None
    widths: list[int] | None = None
    rules: tuple[str, ...] = RULES
    primary_rule: str | None = None
    halves: bool = True  # also pool disjoint seed halves and compare their stability
    refit_steps: int | None = None
    live_threshold: float = LIVE_THRESHOLD
    eval_tokens: int | None = None
    eval_seed: int | None = None
    refit_seed_offset: int = 7919
    progress: bool = True


def pooling_study(run, settings: PoolConfig | None = None, *, x: Tensor | None = None, batches=None,
                  out_dir: str | Path | None = None) -> PoolingResult:
    """Pool the seeds of a run and judge the pools against single seeds and bagging (a PoolingResult).

    `run` is a (RunConfig, SAE, Truth | None) triple (a Source's config, stacked SAEs and truth). Stages: cluster ->
    build -> refit -> judge -> save. The primary pooled SAE (config analysis.pool_primary, or `primary_rule`, at the
    base width) is named before anything is measured; every other (rule, width) is secondary. Pools are built from
    all seeds and, with `halves`, from each disjoint half, so their stability between halves can be compared with
    single seeds'. `batches(seed)` -> iterator of [B, d] replaces the truth's stream for the refit (the real side);
    `x` replaces the eval sample. Pooled SAEs go under `out_dir` (none saved without).
    """
    s = settings or PoolConfig()
    tau, match, widths, rules, primary_rule, halves = s.tau, s.match, s.widths, tuple(s.rules), s.primary_rule, s.halves
    live_threshold, eval_tokens, eval_seed, progress = s.live_threshold, s.eval_tokens, s.eval_seed, s.progress
    cfg = run[0]
    refit_steps = cfg.analysis.pool_refit_steps if s.refit_steps is None else s.refit_steps
    refit_seed_offset = s.refit_seed_offset
    from synthsae.metrics.ablation import eval_sample

    t0 = time.perf_counter()
    cfg, sae, truth = run
    dev = sae.W_dec.device
    given_x = x is not None  # the caller's own eval sample (the real side): no synthetic eval seed to name
    if eval_seed is None and not given_x:
        from synthsae.source import eval_data_seed

        eval_seed = eval_data_seed(cfg)
    tau = cfg.analysis.tau if tau is None else tau
    match = cfg.analysis.match if match is None else match
    primary_rule = primary_rule or getattr(cfg.analysis, "pool_primary", "coverage")
    S, m = sae.n_seeds, sae.W_dec.shape[1]
    plan = make_plan(S, m, primary_rule, widths, rules, halves)
    if x is None:
        if truth is None:
            raise ValueError("pooling_study needs an eval sample x or a truth")
        x = eval_sample(truth, eval_tokens or cfg.analysis.eval_tokens, eval_seed)
    x = x.to(dev, sae.W_dec.dtype)
    if batches is None:
        if truth is None and refit_steps > 0:
            raise ValueError("pooling_study needs refit batches or a truth to draw them from")
        batches = lambda seed: _default_batches(truth, cfg.train.batch_size, seed)  # noqa: E731

    single = evaluate(sae, x)
    clusters = cluster_stage(sae.W_dec, single["freq"], plan, tau, live_threshold)
    built = build_stage(sae, clusters, plan)
    fitted = refit_stage(cfg.sae, cfg.train, built, x, batches(cfg.train.data_seed + refit_seed_offset), refit_steps,
                         progress)
    sing, bag, variants = judge_stage(sae, x, single, plan, fitted, tau, match, live_threshold)
    if out_dir is not None:
        save_stage(Path(out_dir), sae, clusters, plan, fitted, variants,
                   {"tau": tau, "refit_steps": refit_steps, "live_threshold": live_threshold})
    return PoolingResult(
        tau=tau, match=match, live_threshold=live_threshold,
        live_rule=(f"firing frequency > {live_threshold:g} on the given eval sample ({int(x.shape[0])} tokens)" if given_x
                   else f"firing frequency > {live_threshold:g} on the eval sample (eval_seed {eval_seed})"),
        refit_steps=refit_steps, eval_tokens=int(x.shape[0]), base_width=m, primary=plan.primary,
        halves={k: plan.pools[k] for k in ("A", "B")} if plan.halves else None,
        single=sing, bagging=bag,
        clusters=[PoolClusters(pool=n, n_gathered=int(c.labels.numel()), n_clusters=c.n_clusters,
                               coverage_hist=torch.bincount(c.coverage, minlength=len(plan.pools[n]) + 1)[1:].tolist())
                  for n, c in clusters.items()],
        variants=variants, seconds=time.perf_counter() - t0)


def save_pooled(folder: str | Path, sae, s: int, metadata: dict, freq: Tensor | None = None) -> None:
    """Save seed s of a pooled SAE as an ordinary SAELens-layout folder (io.save_seed_folder)."""
    from synthsae.io import save_seed_folder

    sparsity = torch.log10(freq.detach().float().cpu().clamp_min(1e-10)) if freq is not None else None
    save_seed_folder(Path(folder), sae, s, metadata, sparsity)
