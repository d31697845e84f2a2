"""Every cross-seed metric for a set of S SAEs (+ optional truth) as one JSON-able dict.

Numbers that have a chance level are written {"value": x, "baseline": y}; `settings` records every knob used.
Per-latent arrays (stability, span reproducibility, labels) come back separately as tensors.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from synthsae.config import AnalysisConfig
from synthsae.metrics.frequency import FrequencyCounter, frequency_vs_stability
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
from synthsae.metrics.subspaces import (
    cluster_by_span,
    describe_clusters,
    random_points_null,
    rotation_null,
    span_reproducibility,
)

SCHEMA = "synthsae.analysis/1"
K_MAX = 4
CLUSTER_RHO = 0.9
N_ROTATIONS = 64


def vb(value: float, baseline: float | None) -> dict:
    """A number beside its chance level."""
    return {"value": value, "baseline": baseline}


def jsonable(obj):
    """Plain Python for json.dumps(allow_nan=False): tensors to lists, nan/inf to None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _mean(x: Tensor) -> float:
    return float(x.float().mean()) if x.numel() else float("nan")


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


def _truth_section(dec, stab, soft, span, unstable, truth, cfg: AnalysisConfig, labels_out: dict) -> dict:
    """Atom recovery, per-block recovery / stability / rotation null / span reproducibility."""
    S, m, d = dec.shape
    atoms = truth.atoms.float().cpu()
    bases = truth.subspaces.float().cpu()
    ranks = [int(r) for r in truth.ranks.tolist()]
    from synthsae.config import block_orthogonal_flags

    flags = block_orthogonal_flags(truth.cfg) if ranks else []
    na = atoms.shape[0]
    probs = truth.probs.float().cpu()

    # random-dictionary chance levels for atom recovery (same m, d)
    g = torch.Generator().manual_seed(12345)
    rand = torch.randn(m, d, generator=g)
    rnd = atom_recovery(rand, atoms) if na else None

    atom_rows, atom_label, block_label = [], [], []
    for s in range(S):
        if na:
            r = atom_recovery(dec[s], atoms)
            atom_rows.append(r)
            atom_label.append(atom_latents(dec[s], atoms))
        else:
            atom_label.append(torch.full((m,), -1, dtype=torch.long))
        if ranks:
            proj = block_projection(dec[s], bases)
            best = proj.argmax(dim=1)
            block_label.append(torch.where(proj.max(dim=1).values >= BLOCK_ASSIGN, best, torch.full_like(best, -1)))
        else:
            block_label.append(torch.full((m,), -1, dtype=torch.long))
    atom_label, block_label = torch.stack(atom_label), torch.stack(block_label)
    labels_out["atom_label"], labels_out["block_label"] = atom_label, block_label
    is_atom = (atom_label >= 0) & (block_label < 0)

    out: dict = {}
    if na:
        best_cos = torch.stack([r["best_cos"] for r in atom_rows])  # [S, na]
        # atoms ordered by firing probability: recovery of frequent vs rare atoms
        order = torch.argsort(probs[:na], descending=True)
        half = na // 2
        out["atoms"] = {
            "n_atoms": na,
            "mcc": vb(float(np.mean([r["mcc"] for r in atom_rows])), rnd["mcc"]),
            "mcc_per_seed": [r["mcc"] for r in atom_rows],
            "mean_best_cos": vb(float(best_cos.mean()), rnd["mean_best_cos"]),
            f"frac_recovered_{ATOM_RECOVERED}": vb(float(np.mean([r["frac_recovered"] for r in atom_rows])), rnd["frac_recovered"]),
            f"frac_recovered_{ATOM_RECOVERED}_frequent_half": float((best_cos[:, order[:half]] >= ATOM_RECOVERED).float().mean()),
            f"frac_recovered_{ATOM_RECOVERED}_rare_half": float((best_cos[:, order[half:]] >= ATOM_RECOVERED).float().mean()),
            "n_atom_latents_per_seed": is_atom.sum(dim=1).tolist(),
            "atom_latent_stability": _mean(stab[is_atom]),
            "atom_latent_soft_stability": _mean(soft[is_atom]),
            "atom_latent_frac_stable": _mean((stab[is_atom] >= cfg.stable_cutoff).float()),
            # recovered in some seeds but not all: competition among rare atoms for latents
            "frac_atoms_recovered_in_some_not_all_seeds": float(
                (((best_cos >= ATOM_RECOVERED).any(0)) & ~((best_cos >= ATOM_RECOVERED).all(0))).float().mean()),
        }

    blocks = []
    for b, r in enumerate(ranks):
        U = bases[b, :, :r]
        members = torch.stack([block_members(dec[s], bases[b : b + 1, :, :r])[:, 0] for s in range(S)])  # [S, m]
        n_per_seed = members.sum(dim=1).tolist()
        rec = [subspace_recovery(dec[s][members[s]], U) for s in range(S)]
        nulls = [rotation_null(dec[s][members[s]], U, cfg.tau, cfg.match if cfg.match != "strict" else "hungarian",
                               N_ROTATIONS, gen_seed=1000 * b + s) for s in range(S) if members[s].any()]
        w = np.array([n["n_latents"] for n in nulls], dtype=float)
        null = float(np.average([n["stability"] for n in nulls], weights=w)) if len(nulls) else float("nan")
        null_soft = float(np.average([n["soft_stability"] for n in nulls], weights=w)) if len(nulls) else float("nan")
        st = _mean(stab[members])
        n_typ = int(round(np.mean(n_per_seed))) if n_per_seed else 0
        blocks.append({
            "block": b,
            "rank": r,
            "orthogonal": bool(flags[b]),
            "prob": float(probs[na + b]),
            "n_assigned_per_seed": n_per_seed,
            "recovery": vb(float(np.mean(rec)), subspace_recovery_baseline(r, d)),
            "recovery_per_seed": rec,
            "stability": st,
            "soft_stability": _mean(soft[members]),
            "frac_unstable": _mean(unstable[members].float()),
            "rotation_null": null,
            "rotation_null_soft": null_soft,
            "stability_minus_rotation_null": st - null if math.isfinite(null) else float("nan"),
            "random_points_null": random_points_null(r, max(n_typ, 1), cfg.tau) if n_typ else float("nan"),
            "span_reproducibility": [_mean(span[..., k][members]) for k in range(span.shape[-1])],
        })
    if blocks:
        out["blocks"] = blocks
        by = {}
        for name, pick in (("orthogonal", True), ("superposed", False)):
            sel = [x for x in blocks if x["orthogonal"] == pick and math.isfinite(x["rotation_null"])]
            sel4 = [x for x in sel if x["rank"] >= 4]
            by[name] = {
                "n_blocks": len(sel),
                "mean_stability": float(np.mean([x["stability"] for x in sel])) if sel else None,
                "mean_rotation_null": float(np.mean([x["rotation_null"] for x in sel])) if sel else None,
                "mean_stability_rank_ge_4": float(np.mean([x["stability"] for x in sel4])) if sel4 else None,
                "mean_rotation_null_rank_ge_4": float(np.mean([x["rotation_null"] for x in sel4])) if sel4 else None,
                "mean_recovery": float(np.mean([x["recovery"]["value"] for x in sel])) if sel else None,
            }
        out["blocks_by_geometry"] = by
        in4 = torch.zeros_like(block_label, dtype=torch.bool)
        for b, r in enumerate(ranks):
            if r >= 4:
                in4 |= block_label == b
        out["block_latent_stability_rank_ge_4"] = _mean(stab[in4])
    return out


def analyze_with_latents(
    dec: Float[Tensor, "S m d"],
    enc: Float[Tensor, "S d m"] | None = None,
    freq: Float[Tensor, "S m"] | None = None,
    truth=None,
    cfg: AnalysisConfig | None = None,
    device: str | torch.device = "cpu",
    freq_source: str | None = None,
) -> tuple[dict, dict[str, Tensor]]:
    """The analysis dict (JSON-able) and the per-latent tensors behind it (stability, soft, span, labels)."""
    cfg = cfg or AnalysisConfig()
    t0 = time.perf_counter()
    dec = dec.detach().float().cpu()
    enc = enc.detach().float().cpu() if enc is not None else None
    S, m, d = dec.shape
    if S < 2:
        raise ValueError("analyze needs at least 2 seeds")
    scores, partner = pair_scores(dec, cfg.match, enc, device=device)
    stab, soft = stability(scores, cfg.tau), soft_stability(scores)
    cls = classify(stab, cfg.stable_cutoff, cfg.unstable_cutoff)
    chance = random_dictionary_baseline(m, d, cfg.tau, cfg.match, device=device)
    span = span_reproducibility(dec, K_MAX, device=device)  # [S, m, k]
    k = span.shape[-1]
    rand_span = span_reproducibility(torch.randn(2, m, d, generator=torch.Generator().manual_seed(7)), K_MAX, device=device)

    alive = freq > 0 if freq is not None else torch.ones(S, m, dtype=torch.bool)
    res: dict = {
        "schema": SCHEMA,
        "settings": {
            **asdict(cfg),
            "seeds": S, "d_sae": m, "d_in": d, "device": str(device), "k_max": K_MAX,
            "cluster_rho": CLUSTER_RHO, "n_rotations": N_ROTATIONS, "atom_recovered_cos": ATOM_RECOVERED,
            "block_assign_proj2": BLOCK_ASSIGN, "frequency_source": freq_source if freq is not None else None,
        },
        "stability": {
            "mean": vb(_mean(stab), chance["mean_stability"]),
            "mean_alive": vb(_mean(stab[alive]), chance["mean_stability"]),
            "soft_mean": vb(_mean(soft), chance["mean_soft_stability"]),
            "frac_stable": _mean(cls["stable"].float()),
            "frac_unstable": _mean(cls["unstable"].float()),
            "frac_stable_alive": _mean(cls["stable"][alive].float()),
            "frac_unstable_alive": _mean(cls["unstable"][alive].float()),
            "per_seed_mean": stab.mean(dim=1).tolist(),
            "sweep": threshold_sweep(scores, cfg.tau_sweep, cfg.stable_cutoff, cfg.unstable_cutoff),
        },
        "span_reproducibility": {
            "k": list(range(1, k + 1)),
            "all": [vb(_mean(span[..., j]), _mean(rand_span[..., j])) for j in range(k)],
            "stable": [_mean(span[..., j][cls["stable"]]) for j in range(k)],
            "unstable": [_mean(span[..., j][cls["unstable"]]) for j in range(k)],
        },
    }

    # clusters of unstable (live) latents across all seeds
    un = cls["unstable"] & alive
    seed_of = torch.arange(S)[:, None].expand(S, m)[un]
    vecs = unit_rows(dec)[un]
    labels = cluster_by_span(vecs, seed_of, K_MAX, CLUSTER_RHO)
    bases = [truth.block_basis(b).float().cpu() for b in range(truth.n_blocks)] if truth is not None else None
    clusters = describe_clusters(vecs, seed_of, labels, min_seeds=2, bases=bases or None)
    cluster_label = torch.full((S, m), -1, dtype=torch.long)
    cluster_label[un] = labels
    res["unstable_clusters"] = {
        "n_unstable_alive": int(un.sum()),
        "n_clusters_multi_seed": len(clusters),
        "frac_unstable_in_multi_seed_clusters": (sum(c["size"] for c in clusters) / max(int(un.sum()), 1)),
        "clusters": clusters,
    }
    if freq is not None:
        res["frequency"] = frequency_vs_stability(freq.float().cpu(), stab)
        res["frequency"]["spearman_log_freq_stability"] = vb(res["frequency"]["spearman_log_freq_stability"], 0.0)
    per_latent = {"stability": stab, "soft_stability": soft, "span_reproducibility": span, "cluster": cluster_label}
    if freq is not None:
        per_latent["frequency"] = freq.float().cpu()
    if truth is not None:
        res["truth"] = _truth_section(dec, stab, soft, span, cls["unstable"], truth, cfg, per_latent)
        if bases:
            res["truth"]["cluster_alignment"] = _cluster_alignment(clusters, res["truth"].get("blocks", []))
    res["seconds"] = time.perf_counter() - t0
    return jsonable(res), per_latent


def _cluster_alignment(clusters: list[dict], blocks: list[dict]) -> dict:
    """Do the multi-seed unstable clusters line up with planted blocks, with the right effective ranks?"""
    aligned = [c for c in clusters if c.get("best_block_overlap", 0) >= 0.8]
    per_block = []
    for bl in blocks:
        mine = [c for c in aligned if c["best_block"] == bl["block"]]
        big = max(mine, key=lambda c: c["size"]) if mine else None
        per_block.append({
            "block": bl["block"], "rank": bl["rank"], "orthogonal": bl["orthogonal"], "n_clusters": len(mine),
            "largest_cluster_size": big["size"] if big else 0,
            "largest_cluster_effective_rank": big["effective_rank"] if big else None,
            "largest_cluster_energy_rank_95": big["energy_rank_95"] if big else None,
            "largest_cluster_overlap": big["best_block_overlap"] if big else None,
        })
    n_lat = sum(c["size"] for c in clusters)
    return {
        "frac_clusters_aligned_0.8": len(aligned) / max(len(clusters), 1),
        "frac_clustered_latents_aligned_0.8": sum(c["size"] for c in aligned) / max(n_lat, 1),
        "per_block": per_block,
    }


def analyze(
    dec: Float[Tensor, "S m d"],
    enc: Float[Tensor, "S d m"] | None = None,
    freq: Float[Tensor, "S m"] | None = None,
    truth=None,
    cfg: AnalysisConfig | None = None,
    device: str | torch.device = "cpu",
    freq_source: str | None = None,
) -> dict:
    """Everything for S SAEs as a JSON-able dict (see analyze_with_latents for the per-latent tensors)."""
    return analyze_with_latents(dec, enc, freq, truth, cfg, device, freq_source)[0]
