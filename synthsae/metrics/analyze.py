"""Every cross-seed metric for a set of S SAEs (+ optional truth) as one typed `AnalysisResult`.

Chance levels come from the rotated-seeds null: each seed's dictionary is turned by its own Haar-random
rotation of the whole space and then goes through the same matching, classification, span and clustering
steps as the real seeds. The null keeps everything about a single dictionary (its geometry, its clumps, its
frequencies) and removes only what the seeds share, so "above the null" means "reproduced across seeds".
Summaries are over live latents (fired on held-out data) when frequencies exist, else over all latents.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from synthsae.config import AnalysisConfig
from synthsae.metrics.frequency import FrequencyCounter, always_on, decile_table, rarity_test, spearman
from synthsae.metrics.matching import unit_rows
from synthsae.metrics.recovery import (
    ATOM_RECOVERED,
    BLOCK_ASSIGN,
    atom_latents,
    atom_recovery,
    block_members,
    block_projection,
    subspace_recovery,
    subspace_recovery_baseline,
)
from synthsae.metrics.stability import (
    classify,
    pair_scores,
    random_dictionary_baseline,
    soft_stability,
    stability,
    threshold_sweep,
)
from synthsae.metrics.subspaces import cluster_by_span, describe_clusters, rotation_null, span_reproducibility
from synthsae.results import (
    AnalysisResult,
    AnalysisSettings,
    AtomResult,
    BlockAlignment,
    BlockResult,
    Chance,
    ClusterAlignment,
    ClusterResult,
    ClusterRow,
    FrequencyResult,
    GeometrySummary,
    SpanResult,
    StabilityResult,
    SweepRow,
    TruthResult,
)

SCHEMA = "synthsae.analysis/2"
K_MAX = 4
CLUSTER_RHO = 0.9
N_ROTATIONS = 64
NULL_SEED = 4242
ALIGNED_OVERLAP = 0.8  # a cluster lies in a planted block when its span overlaps the block by >= this


def _mean(x: Tensor) -> float | None:
    return float(x.float().mean()) if x.numel() else None


def _none_if_nan(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _null_spearman(lf: Tensor, nstab: Tensor) -> float | None:
    """Spearman of the frequencies with the null's stability; 0 when the null's stability is constant (no link)."""
    if nstab.numel() and bool((nstab == nstab.reshape(-1)[0]).all()):
        return 0.0
    return _none_if_nan(spearman(lf, nstab))


def measure_frequency(sae, truth, n_tokens: int, data_seed: int, batch: int = 4096) -> Float[Tensor, "S m"]:
    """Firing frequency of every latent on n_tokens fresh samples from the truth (its own data seed)."""
    from synthsae.truth import make_generator, sample

    gen = make_generator(data_seed, truth.device)
    counter = FrequencyCounter()
    with torch.no_grad():
        done = 0
        while done < n_tokens:
            b = min(batch, n_tokens - done)
            counter.update(sae.encode(sample(truth, b, gen, details=False).x))
            done += b
    return counter.frequency()


def haar_rotation(d: int, gen: torch.Generator) -> Float[Tensor, "d d"]:
    """A Haar-random orthogonal d x d matrix (QR of a Gaussian with the sign fix)."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def rotated_seeds(
    dec: Float[Tensor, "S m d"], enc: Float[Tensor, "S d m"] | None, seed: int = NULL_SEED
) -> tuple[Tensor, Tensor | None]:
    """The rotated-seeds null: every seed's decoder rows (and encoder columns) turned by its own random rotation."""
    g = torch.Generator().manual_seed(seed)
    qs = torch.stack([haar_rotation(dec.shape[-1], g) for _ in range(dec.shape[0])])  # [S, d, d]
    rdec = torch.einsum("smd,sed->sme", dec.float(), qs)
    renc = torch.einsum("sdm,sed->sem", enc.float(), qs) if enc is not None else None
    return rdec, renc


# ----------------------------------------------------------------------------------------------- pieces


def _cross_seed(dec, enc, cfg: AnalysisConfig, device) -> dict[str, Tensor]:
    """Scores, stability, soft stability, classes and span reproducibility of one set of seeds."""
    scores, _ = pair_scores(dec, cfg.match, enc if cfg.match == "strict" else None, device=device)
    stab = stability(scores, cfg.tau)
    cls = classify(stab, cfg.stable_cutoff, cfg.unstable_cutoff)
    return {"scores": scores, "stability": stab, "soft": soft_stability(scores), "stable": cls["stable"],
            "unstable": cls["unstable"], "span": span_reproducibility(dec, K_MAX, device=device)}


def _clusters(dec, unstable_live: Bool[Tensor, "S m"], bases=None) -> tuple[list[dict], Tensor]:
    """Multi-seed clusters of the given latents and the per-latent cluster label [S, m] (-1 outside)."""
    S, m, _ = dec.shape
    seed_of = torch.arange(S)[:, None].expand(S, m)[unstable_live]
    vecs = unit_rows(dec)[unstable_live]
    labels = cluster_by_span(vecs, seed_of, K_MAX, CLUSTER_RHO)
    clusters = describe_clusters(vecs, seed_of, labels, min_seeds=2, bases=bases)
    label = torch.full((S, m), -1, dtype=torch.long)
    label[unstable_live] = labels
    return clusters, label


def _frac_clustered(clusters: list[dict], n: int) -> float | None:
    return sum(c["size"] for c in clusters) / n if n else None


def _mean_overlap(clusters: list[dict]) -> float | None:
    return float(np.mean([c["cross_seed_overlap"] for c in clusters])) if clusters else None


def _cluster_row(c: dict) -> ClusterRow:
    return ClusterRow(size=c["size"], n_seeds=c["n_seeds"], effective_rank=c["effective_rank"],
                      energy_rank_95=c["energy_rank_95"], cross_seed_overlap=c["cross_seed_overlap"],
                      cross_seed_overlap_baseline=c["cross_seed_overlap_baseline"], best_block=c.get("best_block"),
                      best_block_rank=c.get("best_block_rank"), best_block_overlap=c.get("best_block_overlap"))


# ----------------------------------------------------------------------------------------------- truth


def _atoms(dec, stab, is_atom, truth, cfg: AnalysisConfig) -> AtomResult | None:
    S, m, d = dec.shape
    atoms = truth.atoms.float().cpu()
    na = atoms.shape[0]
    if not na:
        return None
    rnd = atom_recovery(torch.randn(m, d, generator=torch.Generator().manual_seed(12345)), atoms)
    rows = [atom_recovery(dec[s], atoms) for s in range(S)]
    best = torch.stack([r["best_cos"] for r in rows])  # [S, na]
    hit = best >= ATOM_RECOVERED
    order = torch.argsort(truth.probs.float().cpu()[:na], descending=True)
    half = na // 2
    return AtomResult(
        n_atoms=na,
        mcc=Chance(float(np.mean([r["mcc"] for r in rows])), rnd["mcc"]),
        mcc_per_seed=[r["mcc"] for r in rows],
        mean_best_cos=Chance(float(best.mean()), rnd["mean_best_cos"]),
        frac_recovered=Chance(float(hit.float().mean()), rnd["frac_recovered"]),
        frac_recovered_frequent_half=float(hit[:, order[:half]].float().mean()) if half else 0.0,
        frac_recovered_rare_half=float(hit[:, order[half:]].float().mean()),
        frac_recovered_in_some_not_all_seeds=float((hit.any(0) & ~hit.all(0)).float().mean()),
        n_atom_latents_per_seed=is_atom.sum(dim=1).tolist(),
        atom_latent_stability=_mean(stab[is_atom]),
        atom_latent_frac_stable=_mean((stab[is_atom] >= cfg.stable_cutoff).float()),
    )


def _blocks(dec, stab, span, unstable, truth, cfg: AnalysisConfig) -> list[BlockResult]:
    from synthsae.config import block_orthogonal_flags

    S, m, d = dec.shape
    bases = truth.subspaces.float().cpu()
    ranks = [int(r) for r in truth.ranks.tolist()]
    flags = block_orthogonal_flags(truth.cfg) if ranks else []
    probs = truth.probs.float().cpu()
    na = truth.atoms.shape[0]
    null_rule = cfg.match if cfg.match != "strict" else "hungarian"
    out = []
    for b, r in enumerate(ranks):
        U = bases[b, :, :r]
        members = torch.stack([block_members(dec[s], bases[b : b + 1, :, :r])[:, 0] for s in range(S)])  # [S, m]
        rec = [subspace_recovery(dec[s][members[s]], U) for s in range(S)]
        nulls = [rotation_null(dec[s][members[s]], U, cfg.tau, null_rule, N_ROTATIONS, gen_seed=1000 * b + s)
                 for s in range(S) if members[s].any()]
        w = np.array([n["n_latents"] for n in nulls], dtype=float)
        null = float(np.average([n["stability"] for n in nulls], weights=w)) if nulls else None
        st = _mean(stab[members])
        out.append(BlockResult(
            block=b, rank=r, orthogonal=bool(flags[b]), prob=float(probs[na + b]),
            n_assigned_per_seed=members.sum(dim=1).tolist(),
            recovery=Chance(float(np.mean(rec)), subspace_recovery_baseline(r, d)), recovery_per_seed=rec,
            stability=st, rotation_null=null,
            stability_minus_rotation_null=st - null if st is not None and null is not None else None,
            frac_unstable=_mean(unstable[members].float()),
            span_reproducibility=[_mean(span[..., k][members]) for k in range(span.shape[-1])],
        ))
    return out


def _by_geometry(blocks: list[BlockResult]) -> list[GeometrySummary]:
    out = []
    for name, pick in (("orthogonal", True), ("superposed", False)):
        sel = [b for b in blocks if b.orthogonal == pick]
        if not sel:
            continue
        has = [b for b in sel if b.stability is not None and b.rotation_null is not None]
        out.append(GeometrySummary(
            geometry=name, n_blocks=len(sel), n_blocks_with_latents=len(has),
            mean_recovery=float(np.mean([b.recovery.value for b in sel])),
            mean_stability=float(np.mean([b.stability for b in has])) if has else None,
            mean_rotation_null=float(np.mean([b.rotation_null for b in has])) if has else None))
    return out


def _alignment(clusters: list[dict], blocks: list[BlockResult]) -> ClusterAlignment:
    aligned = [c for c in clusters if (c.get("best_block_overlap") or 0.0) >= ALIGNED_OVERLAP]
    per_block = []
    for bl in blocks:
        mine = [c for c in aligned if c["best_block"] == bl.block]
        big = max(mine, key=lambda c: c["size"]) if mine else None
        er = big["energy_rank_95"] if big else None
        per_block.append(BlockAlignment(block=bl.block, rank=bl.rank, orthogonal=bl.orthogonal, n_clusters=len(mine),
                                        largest_cluster_size=big["size"] if big else 0,
                                        largest_cluster_energy_rank_95=er,
                                        rank_right=er is not None and abs(er - bl.rank) <= 1))
    n_lat = sum(c["size"] for c in clusters)
    return ClusterAlignment(
        frac_clustered_latents_aligned=sum(c["size"] for c in aligned) / n_lat if n_lat else 0.0,
        frac_blocks_rank_right=(sum(p.rank_right for p in per_block) / len(per_block)) if per_block else 0.0,
        per_block=per_block)


def _truth(dec, real: dict, truth, cfg: AnalysisConfig, clusters: list[dict], per_latent: dict) -> TruthResult:
    S, m, _ = dec.shape
    atoms = truth.atoms.float().cpu()
    bases = truth.subspaces.float().cpu()
    atom_label = torch.stack([atom_latents(dec[s], atoms) if atoms.shape[0] else torch.full((m,), -1) for s in range(S)])
    block_label = torch.full((S, m), -1, dtype=torch.long)
    if truth.n_blocks:
        for s in range(S):
            proj = block_projection(dec[s], bases)
            v, i = proj.max(dim=1)
            block_label[s] = torch.where(v >= BLOCK_ASSIGN, i, torch.full_like(i, -1))
    per_latent["atom_label"], per_latent["block_label"] = atom_label, block_label
    stab, span = real["stability"], real["span"]
    blocks = _blocks(dec, stab, span, real["unstable"], truth, cfg)
    in4 = torch.zeros(S, m, dtype=torch.bool)
    for b in blocks:
        if b.rank >= 4:
            in4 |= block_label == b.block
    return TruthResult(
        atoms=_atoms(dec, stab, (atom_label >= 0) & (block_label < 0), truth, cfg),
        blocks=blocks, by_geometry=_by_geometry(blocks), block_latent_stability_rank_ge_4=_mean(stab[in4]),
        cluster_alignment=_alignment(clusters, blocks) if blocks else None)


# ----------------------------------------------------------------------------------------------- entry points


def analyze_with_latents(
    dec: Float[Tensor, "S m d"],
    enc: Float[Tensor, "S d m"] | None = None,
    freq: Float[Tensor, "S m"] | None = None,
    truth=None,
    cfg: AnalysisConfig | None = None,
    device: str | torch.device = "cpu",
    freq_source: str | None = None,
) -> tuple[AnalysisResult, dict[str, Tensor]]:
    """The typed analysis and the per-latent tensors behind it (stability, null stability, span, labels).

    `freq` [S, m] are firing frequencies measured on held-out data (0 = dead); without them every latent counts
    as live and the summaries say so.
    """
    cfg = cfg or AnalysisConfig()
    t0 = time.perf_counter()
    dec = dec.detach().float().cpu()
    enc = enc.detach().float().cpu() if enc is not None else None
    S, m, d = dec.shape
    if S < 2:
        raise ValueError(f"analysis needs at least 2 seeds, got {S}")
    real = _cross_seed(dec, enc, cfg, device)
    ndec, nenc = rotated_seeds(dec, enc)
    null = _cross_seed(ndec, nenc, cfg, device)
    live = freq > 0 if freq is not None else torch.ones(S, m, dtype=torch.bool)
    over = "live" if freq is not None else "all"
    n_live = int(live.sum())

    def frac(mask: Tensor) -> float | None:
        return _mean(mask[live].float())

    stab, nstab = real["stability"], null["stability"]
    stability_res = StabilityResult(
        over=over, n_latents=n_live,
        mean=Chance(_mean(stab[live]), _mean(nstab[live])),
        soft_mean=Chance(_mean(real["soft"][live]), _mean(null["soft"][live])),
        frac_stable=Chance(frac(real["stable"]), frac(null["stable"])),
        frac_unstable=Chance(frac(real["unstable"]), frac(null["unstable"])),
        per_seed_mean=[_mean(stab[s][live[s]]) for s in range(S)],
        sweep=[SweepRow(**r) for r in threshold_sweep(real["scores"], cfg.tau_sweep, cfg.stable_cutoff,
                                                      cfg.unstable_cutoff, mask=live)],
        random_dictionary_mean=random_dictionary_baseline(m, d, cfg.tau, cfg.match, device=device)["mean_stability"],
    )
    span, nspan = real["span"], null["span"]
    k = span.shape[-1]
    rand_span = span_reproducibility(torch.randn(2, m, d, generator=torch.Generator().manual_seed(7)), K_MAX, device=device)
    un, nun = real["unstable"] & live, null["unstable"] & live
    span_res = SpanResult(
        over=over, k=list(range(1, k + 1)),
        all=[Chance(_mean(span[..., j][live]), _mean(nspan[..., j][live])) for j in range(k)],
        stable=[_mean(span[..., j][real["stable"] & live]) for j in range(k)],
        unstable=[Chance(_mean(span[..., j][un]), _mean(nspan[..., j][nun])) for j in range(k)],
        random_dictionary=[_mean(rand_span[..., j]) for j in range(k)],
    )
    bases = [truth.block_basis(b).float().cpu() for b in range(truth.n_blocks)] if truth is not None else None
    clusters, cluster_label = _clusters(dec, un, bases or None)
    nclusters, _ = _clusters(ndec, nun)
    cluster_res = ClusterResult(
        n_unstable=int(un.sum()), n_clusters_multi_seed=len(clusters),
        frac_in_multi_seed=Chance(_frac_clustered(clusters, int(un.sum())), _frac_clustered(nclusters, int(nun.sum()))),
        mean_cross_seed_overlap=Chance(_mean_overlap(clusters), _mean_overlap(nclusters)),
        null_n_unstable=int(nun.sum()), clusters=[_cluster_row(c) for c in clusters])

    per_latent = {"stability": stab, "null_stability": nstab, "soft_stability": real["soft"], "span_reproducibility": span,
                  "cluster": cluster_label}
    freq_res = None
    if freq is not None:
        freq = freq.float().cpu()
        per_latent["frequency"] = freq
        lf = torch.log10(freq.clamp_min(1e-12))
        ss, su = real["stable"] & live, un
        rar = rarity_test(lf[live], ss[live], su[live])
        aon = always_on(freq, real["stable"])
        freq_res = FrequencyResult(
            source=freq_source or "given", dead_rule="no firing on the held-out sample (frequency 0)",
            n_dead=int((~live).sum()), frac_dead=float((~live).float().mean()), n_live=n_live,
            spearman=Chance(_none_if_nan(spearman(lf[live], stab[live])) if n_live >= 3 else None,
                            _null_spearman(lf[live], nstab[live]) if n_live >= 3 else None),
            # numpy medians (mean of the two middle values), as in the rarity check that quotes them
            median_freq_stable=float(np.median(freq[ss].double().numpy())) if ss.any() else None,
            median_freq_unstable=float(np.median(freq[su].double().numpy())) if su.any() else None,
            median_log10_freq=float(lf[live].median()) if live.any() else None,
            by_decile=decile_table(lf[live], stab[live]),
            rarity=Chance(rar["diff"], rar["q05"]), rarity_null_draws=rar["draws"], always_on_cutoff=aon["cutoff"],
            always_on_per_seed=aon["per_seed"], always_on_stable=aon["stable"])
    truth_res = _truth(dec, real, truth, cfg, clusters, per_latent) if truth is not None else None
    filt, budget = _questions(dec, truth, live, real, null, cfg, per_latent)
    a = asdict(cfg)
    settings = AnalysisSettings(
        tau=a["tau"], match=a["match"], stable_cutoff=a["stable_cutoff"], unstable_cutoff=a["unstable_cutoff"],
        tau_sweep=list(a["tau_sweep"]), seeds=S, d_sae=m, d_in=d, device=str(device), k_max=K_MAX,
        cluster_rho=CLUSTER_RHO, n_rotations=N_ROTATIONS, null_seed=NULL_SEED, atom_recovered_cos=ATOM_RECOVERED,
        block_assign_proj2=BLOCK_ASSIGN, frequency_source=freq_source if freq is not None else None)
    res = AnalysisResult(schema=SCHEMA, settings=settings, stability=stability_res, span_reproducibility=span_res,
                         unstable_clusters=cluster_res, frequency=freq_res, truth=truth_res,
                         seconds=time.perf_counter() - t0, truth_filter=filt, seed_budget=budget)
    return res, per_latent


def _questions(dec, truth, live, real: dict, null: dict, cfg: AnalysisConfig, per_latent: dict):
    """Does stability mark true features (planted truth only), and how many seeds are enough (S >= 3)."""
    from synthsae.metrics.seed_budget import seed_budget
    from synthsae.metrics.truth_filter import truth_filter

    filt = None
    if truth is not None:
        filt, true = truth_filter(dec, truth, live, real["stability"], real["soft"], null["stability"], null["soft"],
                                  cfg.stable_cutoff)
        per_latent["true_feature"] = true.to(torch.uint8)
    return filt, seed_budget(real["scores"], cfg.tau, live, cfg.stable_cutoff)


def analyze(
    dec: Float[Tensor, "S m d"],
    enc: Float[Tensor, "S d m"] | None = None,
    freq: Float[Tensor, "S m"] | None = None,
    truth=None,
    cfg: AnalysisConfig | None = None,
    device: str | torch.device = "cpu",
    freq_source: str | None = None,
) -> AnalysisResult:
    """Everything for S SAEs as an AnalysisResult (see analyze_with_latents for the per-latent tensors)."""
    return analyze_with_latents(dec, enc, freq, truth, cfg, device, freq_source)[0]
