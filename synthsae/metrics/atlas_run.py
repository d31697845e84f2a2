"""The atlas of a run folder or of SAE folders: data statistics, held-out judgement, planted blocks, files.

The result is a typed `AtlasResult` (synthsae.results): stored as the "atlas" stage of metrics.json (the reports
read it there) and, for readers without synthsae, as `atlas.json` (the same plus one row per feature) beside
`atlas.safetensors` (bases and the latent -> feature map). Real runs add the spliced CE (real/atlas.py).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from synthsae.fileio import atomic_save_safetensors, atomic_write_json
from synthsae.metrics.atlas import (
    AtlasConfig, Atlas, atlas_summary, atlas_tensors, attach_sparsity, attach_stats, build_atlas, feature_rows,
    group_stability, heldout_stability, match_blocks,
)
from synthsae.results import (
    AtlasBlockMatch, AtlasGoal, AtlasGroupBlock, AtlasGroupStability, AtlasHalf, AtlasHeldout, AtlasHeldoutMean,
    AtlasResamples,
    AtlasLatentHeldout, AtlasPooled, AtlasResult, AtlasSource,
)
from synthsae.metrics.matching import maxcos, unit_rows

ATLAS_FILE = "atlas.safetensors"
ATLAS_JSON = "atlas.json"
FEATURE_GOAL = 0.9  # issue 15: atlas features should reproduce in >= 90% of held-out seeds
EV_GOAL = 0.95  # ... while carrying >= 95% of the seeds' explained variance


def _validate(cfg: AtlasConfig) -> None:
    from synthsae.config import ConfigError

    for name in ("overlap", "rho", "member_share"):
        v = getattr(cfg, name)
        if not (isinstance(v, float) and 0.0 < v <= 1.0):
            raise ConfigError(f"atlas.{name} = {v!r}: must be a number in (0, 1]")
    if not (isinstance(cfg.energy, float) and 0.0 < cfg.energy <= 1.0):
        raise ConfigError(f"atlas.energy = {cfg.energy!r}: must be a number in (0, 1]")
    if not (isinstance(cfg.k_max, int) and cfg.k_max >= 1):
        raise ConfigError(f"atlas.k_max = {cfg.k_max!r}: must be an integer >= 1")
    if not (isinstance(cfg.max_rank, int) and cfg.max_rank >= 0):
        raise ConfigError(f"atlas.max_rank = {cfg.max_rank!r}: must be an integer >= 0 (0 = d // 4)")
    if not (isinstance(cfg.min_seeds, int) and cfg.min_seeds >= 0):
        raise ConfigError(f"atlas.min_seeds = {cfg.min_seeds!r}: must be an integer >= 0 (0 = half the seeds, at least 2)")


def _latent_ev_share(sae, x: Tensor, batch_size: int = 4096) -> Tensor:
    """[S, m] Shapley share of each latent in its seed's explained variance (see atlas.attach_stats)."""
    S, m = sae.n_seeds, sae.d_sae
    c = torch.zeros(S, m, dtype=torch.float64)
    with torch.no_grad():
        for xb in x.split(batch_size):
            acts = sae.encode(xb)
            y = acts @ sae.W_dec
            z = (2 * (xb.unsqueeze(0) - sae.b_dec.unsqueeze(1)) - y) @ sae.W_dec.transpose(1, 2)
            c += (acts * z).sum(1).double().cpu()
    from synthsae.metrics.atlas import ev_shares

    return ev_shares(c)  # NaN rows: seeds that explain no variance


def _latent_heldout(dec_a: Tensor, dec_b: Tensor, live_a: Tensor, tau: float, weight: Tensor | None) -> AtlasLatentHeldout:
    """Latent-level stability of seeds a against held-out seeds b (maxcos >= tau), plain and EV-weighted."""
    A, B = unit_rows(dec_a.float()), unit_rows(dec_b.float())
    hits = torch.zeros(A.shape[0], A.shape[1])
    for s in range(A.shape[0]):
        for t in range(B.shape[0]):
            hits[s] += (maxcos(A[s], B[t])[0] >= tau).float()
    st = hits / B.shape[0]
    out = AtlasLatentHeldout(mean=_num(float(st[live_a].mean())))
    if weight is not None and bool(torch.isfinite(weight).all()):
        w = weight.float() * live_a
        out.ev_weighted = _num(float((st * w).sum() / w.sum())) if float(w.sum()) > 0 else None
    return out


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _pooled_heldout(run_dir: Path | None, width: int) -> AtlasPooled | None:
    """The pooled SAE's held-out stability from a pooling study in metrics.json, when there is one."""
    from synthsae.metrics_file import MetricsError, read_metrics

    if run_dir is None or not (run_dir / "metrics.json").is_file():
        return None
    try:
        pool = read_metrics(run_dir / "metrics.json").pooling
    except MetricsError:
        return None
    name = f"coverage_w{width}"
    row = pool.variants.get(name) if pool is not None else None
    if row is None or row.stability_vs_heldout is None:
        return None
    return AtlasPooled(variant=name, stability_vs_heldout=row.stability_vs_heldout, ev_halves=row.ev_halves, tau=pool.tau)


def _halves(S: int) -> tuple[list[int], list[int]]:
    h = S // 2
    return list(range(h)), list(range(h, 2 * h))


def _judge_heldout(sae, x: Tensor | None, alive: Tensor, ev_lat: Tensor | None, cfg: AtlasConfig, tau: float,
                   run_dir: Path | None) -> AtlasHeldout:
    """Atlas of one half of the seeds judged on the other half (both directions), beside latent stability."""
    S = sae.n_seeds
    A, B = _halves(S)
    dec = sae.W_dec.detach().float().cpu()
    rows = []
    for own, other in ((A, B), (B, A)):
        atlas = build_atlas(dec[own], alive[own], cfg)
        if x is not None:
            attach_stats(atlas, sae.select_seeds(own), x)
        held = heldout_stability(atlas, dec[other], alive[other])
        ev = np.array([f.ev_share for f in atlas.features])
        h = np.array(held)
        row = AtlasHalf(
            build_seeds=own, judge_seeds=other, n_features=len(held),
            n_subspaces=sum(1 for f in atlas.features if f.rank > 1),
            feature_stability_heldout=_num(float(h.mean())) if len(h) else None,
            feature_stability_in_sample=_num(float(np.mean([f.stability for f in atlas.features]))) if held else None,
            latent_stability_heldout=_latent_heldout(dec[own], dec[other], alive[own], tau,
                                                     None if ev_lat is None else ev_lat[own]),
            latent_stability_heldout_at_sqrt_overlap=_latent_heldout(dec[own], dec[other], alive[own],
                                                                     math.sqrt(cfg.overlap), None).mean)
        if x is not None and len(h) and not np.isfinite(ev).all():  # these seeds explain no variance: no EV shares
            row.ev_share_features = row.feature_stability_heldout_ev_weighted = None
            row.ev_share_features_heldout_ge_goal = None
        elif x is not None:  # no feature at all: nothing of the EV reproduces
            row.ev_share_features = float(ev.sum()) if len(h) else 0.0
            row.feature_stability_heldout_ev_weighted = (_num(float((ev * h).sum() / ev.sum())) if ev.sum() > 0 else None) if len(h) else 0.0
            row.ev_share_features_heldout_ge_goal = float(ev[h >= FEATURE_GOAL - 1e-9].sum()) if len(h) else 0.0
        rows.append(row)

    def mean(get) -> float | None:
        vals = [get(r) for r in rows]
        return None if any(v is None for v in vals) else float(np.mean(vals))

    mn = AtlasHeldoutMean(
        feature_stability_heldout=mean(lambda r: r.feature_stability_heldout),
        feature_stability_heldout_ev_weighted=mean(lambda r: r.feature_stability_heldout_ev_weighted),
        ev_share_features=mean(lambda r: r.ev_share_features),
        ev_share_features_heldout_ge_goal=mean(lambda r: r.ev_share_features_heldout_ge_goal),
        latent_stability_heldout=mean(lambda r: r.latent_stability_heldout.mean),
        latent_stability_heldout_ev_weighted=mean(lambda r: r.latent_stability_heldout.ev_weighted))
    goal = None
    if mn.feature_stability_heldout_ev_weighted is not None and mn.ev_share_features is not None:
        goal = AtlasGoal(feature_stability_goal=FEATURE_GOAL, ev_goal=EV_GOAL,
                         feature_stability_ev_weighted=mn.feature_stability_heldout_ev_weighted,
                         ev_share_features=mn.ev_share_features,
                         held=bool(mn.feature_stability_heldout_ev_weighted >= FEATURE_GOAL and mn.ev_share_features >= EV_GOAL))
    return AtlasHeldout(halves=rows, mean=mn, latent_tau=tau, goal=goal, pooled=_pooled_heldout(run_dir, sae.d_sae))


def atlas_resamples(sae, x: Tensor | None, alive: Tensor, cfg: AtlasConfig) -> AtlasResamples:
    """The atlas of every leave-one-seed-out resample of the seeds (with EV shares when x is given): how much the
    number of subspaces, the remainder and the features' EV share move when one seed is swapped out."""
    from synthsae.metrics.ablation import spread

    S = sae.n_seeds
    dec = sae.W_dec.detach().float().cpu()
    res = AtlasResamples(method=f"leave one seed out ({S} resamples of {S - 1} seeds)")
    for s in range(S):
        keep = [t for t in range(S) if t != s]
        atlas = build_atlas(dec[keep], alive[keep], cfg)
        n_live = max(int(alive[keep].sum()), 1)
        res.left_out.append(s)
        res.n_features.append(len(atlas.features))
        res.n_subspaces.append(sum(1 for f in atlas.features if f.rank > 1))
        res.n_remainder_latents.append(atlas.n_remainder)
        res.largest_feature_share.append(max((len(f.members) for f in atlas.features), default=0) / n_live)
        if x is not None:
            attach_stats(atlas, sae.select_seeds(keep), x)
            res.ev_share_features.append(_num(float(sum(f.ev_share for f in atlas.features))))
    res.n_subspaces_spread = spread([float(v) for v in res.n_subspaces])
    if res.ev_share_features:
        res.ev_share_features_spread = spread(res.ev_share_features)
    return res


def eval_frequency(sae, x: Tensor, batch_size: int = 4096) -> Tensor:
    """[S, m] firing frequency of every latent on x."""
    from synthsae.metrics.frequency import FrequencyCounter

    counter = FrequencyCounter()
    with torch.no_grad():
        for xb in x.split(batch_size):
            counter.update(sae.encode(xb))
    return counter.frequency()


def atlas_result(sae, cfg: AtlasConfig, *, x: Tensor | None = None, freq: Tensor | None = None, tau: float = 0.7,
                 variant: str | None = None, sae_cfg=None, truth=None, run_dir: Path | None = None,
                 heldout: bool = True, resamples: bool = True) -> tuple[AtlasResult, Atlas]:
    """Atlas of the seeds of `sae` (decoder rows), with data statistics from x (else frequencies from freq), the
    held-out judgement (>= 4 seeds), its leave-one-seed-out spread (>= 3 seeds), planted blocks (truth) and group
    stability (blocktopk)."""
    t0 = time.perf_counter()
    _validate(cfg)
    if sae.n_seeds < 2:
        from synthsae.config import ConfigError

        raise ConfigError("atlas: one SAE is one seed; give a run with >= 2 seeds or >= 2 SAE folders")
    if x is not None:
        freq = eval_frequency(sae, x)
    alive = (freq.cpu() > 1e-9) if freq is not None else torch.ones(sae.n_seeds, sae.d_sae, dtype=torch.bool)
    dec = sae.W_dec.detach().float().cpu()
    atlas = build_atlas(dec, alive, cfg)
    ev_lat = None
    if x is not None:
        attach_stats(atlas, sae, x)
        ev_lat = _latent_ev_share(sae, x)
    elif freq is not None:
        attach_sparsity(atlas, freq.cpu())
    res = atlas_summary(atlas)
    res.source = AtlasSource(variant=variant, run_dir=str(run_dir) if run_dir else None)
    if truth is not None and truth.n_blocks:
        from synthsae.config import block_orthogonal_flags

        flags = block_orthogonal_flags(truth.cfg)
        blocks = match_blocks(atlas, [truth.block_basis(b).float().cpu() for b in range(truth.n_blocks)])
        res.planted_blocks = [AtlasBlockMatch(orthogonal=bool(o), **row) for row, o in zip(blocks, flags)]
    if variant == "blocktopk":
        from synthsae.sae.blocktopk import group_sizes

        gs = group_stability(dec, group_sizes(sae_cfg), cfg.overlap, alive)
        res.group_stability = AtlasGroupStability(mean=_num(gs["mean"]), n_live_groups=gs["n_live_groups"], overlap=cfg.overlap,
                                                  per_seed_mean=gs["stability"].mean(1).tolist())
        if truth is not None and truth.n_blocks:
            res.group_stability.per_block = _groups_per_block(dec, sae_cfg, gs["stability"], truth)
    if heldout and sae.n_seeds >= 4:
        res.heldout = _judge_heldout(sae, x, alive, ev_lat, cfg, tau, run_dir)
    if resamples and sae.n_seeds >= 3:
        res.resamples = atlas_resamples(sae, x, alive, cfg)
    res.seconds = time.perf_counter() - t0
    return res, atlas


def atlas_of(paths: list[Path], cfg: AtlasConfig | None = None, device: str | None = None,
             heldout: bool = True, fmt: str | None = None) -> tuple[AtlasResult, Atlas]:
    """Atlas of a synthetic run folder (one path; data from its truth) or of SAE folders of any format that
    `analyze` reads (frequencies where the library stores them, no EV)."""
    from synthsae.device import resolve_device
    from synthsae.metrics.run_analysis import EVAL_DATA_SEED_OFFSET, is_run_dir, seed_sparsity

    cfg = cfg or AtlasConfig()
    _validate(cfg)
    dev = resolve_device(device)
    run_dir = paths[0] if len(paths) == 1 and is_run_dir(paths[0]) else None
    truth, x, tau, variant, sae_cfg, freq, folders = None, None, 0.7, None, None, None, None
    if run_dir is not None:
        from synthsae.io import load_run, seed_folders

        run_cfg, sae, truth = load_run(run_dir)
        tau, variant, sae_cfg = run_cfg.analysis.tau, run_cfg.sae.variant, run_cfg.sae
        if truth is not None:
            from synthsae.truth import make_generator, sample

            truth = truth.to(dev)
            gen = make_generator(run_cfg.train.data_seed + EVAL_DATA_SEED_OFFSET, truth.device)
            x = sample(truth, run_cfg.analysis.eval_tokens, gen, details=False).x
        else:
            freq, _ = seed_sparsity(seed_folders(run_dir))
    else:
        from synthsae.loaders import load_stack

        folders = paths
        st = load_stack(paths, fmt)
        sae, freq = st.sae, st.frequency
        sae_cfg, variant = sae.cfg, sae.variant
    res, atlas = atlas_result(sae.to(dev), cfg, x=x, freq=freq, tau=tau, variant=variant, sae_cfg=sae_cfg, truth=truth,
                              run_dir=run_dir, heldout=heldout)
    res.source.folders = [str(p) for p in folders] if folders else None
    res.source.data = ("fresh truth samples" if x is not None else
                       "stored firing frequency (frequency only; no EV)" if freq is not None else "none")
    return res, atlas


def _groups_per_block(dec: Tensor, sae_cfg, stab: Tensor, truth) -> list[AtlasGroupBlock]:
    """For each planted block: the groups lying inside it (containment >= 0.9) and their mean stability."""
    from synthsae.metrics.subspaces import orthonormal_basis
    from synthsae.sae.blocktopk import group_slices

    out = []
    for b in range(truth.n_blocks):
        U = truth.block_basis(b).double().cpu()
        st = []
        for s in range(dec.shape[0]):
            for gi, (a, e) in enumerate(group_slices(sae_cfg)):
                G = orthonormal_basis(dec[s, a:e].double().T, e - a)
                if float((U.T @ G).pow(2).sum() / G.shape[1]) >= 0.9:
                    st.append(float(stab[s, gi]))
        out.append(AtlasGroupBlock(block=b, rank=int(U.shape[1]), n_groups_inside=len(st),
                                   mean_group_stability=float(np.mean(st)) if st else None))
    return out


def atlas_json(res: AtlasResult, atlas: Atlas) -> dict:
    """atlas.json: the serialised result plus one row per feature (readable without synthsae)."""
    from synthsae.serialize import to_json

    return {**to_json(res), "features": to_json(feature_rows(atlas))}


def read_atlas_json(path: Path) -> tuple[AtlasResult, list]:
    """(AtlasResult, feature rows) of an atlas.json."""
    from synthsae.fileio import read_json_object
    from synthsae.results import AtlasFeatureRow
    from synthsae.serialize import from_json

    raw = read_json_object(path)
    return from_json(AtlasResult, raw, "atlas"), from_json(list[AtlasFeatureRow], raw.get("features", []), "features")


def write_atlas(out_dir: Path, res: AtlasResult, atlas: Atlas, metrics: Path | None = None) -> tuple[Path, Path]:
    """atlas.safetensors + atlas.json in out_dir, and the "atlas" stage of `metrics` (default out_dir/metrics.json);
    each written atomically."""
    from synthsae.metrics_file import write_stage

    out_dir.mkdir(parents=True, exist_ok=True)
    t = out_dir / ATLAS_FILE
    atomic_save_safetensors(atlas_tensors(atlas), t, metadata={"schema": res.schema})
    j = out_dir / ATLAS_JSON
    atomic_write_json(j, atlas_json(res, atlas))
    write_stage(metrics or out_dir / "metrics.json", "atlas", res)
    return t, j


# ----------------------------------------------------------------------------------------------- verdict


def _n(v) -> str:
    return "-" if v is None else f"{v:.3f}"


ATLAS = ("Feature atlas: features that reproduce across seeds",
         f"An atlas built from half of the seeds gives features that the other half holds (EV-weighted stability "
         f">= {FEATURE_GOAL}) and that carry >= {EV_GOAL:.0%} of the seeds' explained variance.")


def atlas_verdict(res: AtlasResult | None):
    """Whether the atlas gives features that reproduce: held-out seeds hold them (EV-weighted stability >= 0.9) and
    they carry >= 95% of the EV (core); they beat latent-level stability, and every orthogonal planted block is one
    feature of the right rank (supporting)."""
    from synthsae.results import Check, Verdict
    from synthsae.verdicts import decide

    title, claim = ATLAS
    rule = ("core: held-out EV-weighted feature stability >= 0.9 and EV share of the features >= 0.95 (mean of both "
            "halves); supporting: held-out feature stability above held-out latent stability, every orthogonal "
            "planted block matched by one feature of its rank at overlap >= 0.9")
    h = res.heldout if res is not None else None
    mean = h.mean if h is not None else None
    if mean is None or mean.feature_stability_heldout_ev_weighted is None or mean.ev_share_features is None:
        return Verdict(title, claim, rule, "not measured",
                       "needs >= 4 seeds and data (truth samples or a real run's activations) for the held-out halves")
    fs, ev = mean.feature_stability_heldout_ev_weighted, mean.ev_share_features
    fsm, lsm = mean.feature_stability_heldout, mean.latent_stability_heldout
    checks = [
        Check("held-out EV-weighted feature stability >= 0.9", fs >= FEATURE_GOAL, True, f"{fs:.3f}"),
        Check("EV share of the features >= 0.95", ev >= EV_GOAL, True, f"{ev:.3f}"),
        Check("feature stability above latent stability (held out)",
              fsm is not None and lsm is not None and fsm > lsm, False,
              f"{_n(fsm)} vs {_n(lsm)} (tau {h.latent_tau})"),
    ]
    orth = [b for b in res.planted_blocks if b.orthogonal]
    if orth:
        ok = [b for b in orth if b.overlap >= 0.9 and b.rank_right]
        checks.append(Check("every orthogonal planted block is one feature of its rank", len(ok) == len(orth), False,
                            f"{len(ok)} of {len(orth)}"))
    why = f"held-out EV-weighted feature stability {fs:.3f}, EV share of features {ev:.3f}"
    return Verdict(title, claim, rule, decide(checks), why, checks)
