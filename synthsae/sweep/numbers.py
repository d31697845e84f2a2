"""Each cell's verdicts and deciding numbers, read back only from its own files (metrics.json, the analysis'
per-latent tensors) through the claims registry; verdicts and numbers are looked up by claim key, never by position.

Deciding number per claim (value, its null, one value per seed where the files allow it):
stability: share of live latents that are stable (null: the rotated-seeds null's share);
frequency: Spearman(log10 frequency, stability) over live latents (null: the same with the null's stability);
clusters: share of unstable live latents in multi-seed clusters (null: the same for the null);
ablation: stable latents' share of the cost (CE/prediction when measured, else FVU; null: the frequency-matched
random group's share); pooling: pooled-minus-single stability between halves (single seeds are its control, so no
further null; spread over the two pools A and B); triggers (real): median surface-form score of unstable minus
stable latents (null: random splits; per seed from triggers.safetensors).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthsae.results import Verdict

DECIDING = {"stability": "stable share of live latents", "frequency": "Spearman(log frequency, stability)",
            "clusters": "share of unstable latents in multi-seed clusters",
            "ablation": "stable latents' share of the cost", "pooling": "pooled minus single-seed stability",
            "triggers": "surface-form gap (unstable - stable median score)"}


@dataclass
class Number:
    value: float | None
    null: float | None
    per_seed: list = field(default_factory=list)

    @property
    def spread(self) -> float | None:
        v = [x for x in self.per_seed if x is not None and math.isfinite(x)]
        return float(np.std(v)) if len(v) >= 2 else None


def cell_verdicts(folder: Path, kind: str) -> dict[str, Verdict]:
    """claim key -> verdict, from the cell's own files through the claims registry (report order)."""
    if kind == "real":
        from real.report import real_claim_verdicts

        return real_claim_verdicts(folder)
    from synthsae.claims import ANALYSIS_CLAIMS, claim_verdicts
    from synthsae.metrics_file import read_metrics
    import synthsae.report  # noqa: F401  (registers the shared claims)

    return claim_verdicts(read_metrics(folder / "metrics.json"), ANALYSIS_CLAIMS)


def _f(x) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.size < 3:
        return None
    ra, rb = np.argsort(np.argsort(a)).astype(float), np.argsort(np.argsort(b)).astype(float)
    sa, sb = ra.std(), rb.std()
    return None if sa == 0 or sb == 0 else float(((ra - ra.mean()) * (rb - rb.mean())).mean() / (sa * sb))


def cell_numbers(folder: Path) -> dict[str, Number]:
    """claim key -> deciding Number for every claim the cell's files measure."""
    from synthsae.metrics_file import read_metrics

    m = read_metrics(folder / "metrics.json")
    raw = json.loads((folder / "metrics.json").read_text())
    out: dict[str, Number] = {}
    lat = {}
    lpath = folder / "analysis_latents.safetensors"
    if lpath.is_file():
        from safetensors.numpy import load_file

        lat = load_file(str(lpath))
    an = m.analysis
    if an is not None:
        cut, ucut = an.settings.stable_cutoff, an.settings.unstable_cutoff
        stab = lat.get("stability")
        live = lat["frequency"] > 0 if "frequency" in lat else (np.ones_like(stab, bool) if stab is not None else None)
        per = []
        if stab is not None:
            per = [_f(float((stab[s][live[s]] >= cut).mean())) if live[s].any() else None for s in range(stab.shape[0])]
        out["stability"] = Number(_f(an.stability.frac_stable.value), _f(an.stability.frac_stable.baseline), per)
        if an.frequency is not None:
            per = []
            if stab is not None and "frequency" in lat:
                f = np.log10(np.clip(lat["frequency"], 1e-12, None))
                per = [_spearman(f[s][live[s]], stab[s][live[s]]) for s in range(stab.shape[0])]
            out["frequency"] = Number(_f(an.frequency.spearman.value), _f(an.frequency.spearman.baseline), per)
        uc = an.unstable_clusters
        per = []
        if stab is not None and "cluster" in lat:
            lab, unl = lat["cluster"], (stab <= ucut) & live
            seeds_of = {}  # a label is a multi-seed cluster when its unstable live latents span >= 2 seeds
            for s in range(stab.shape[0]):
                for c in np.unique(lab[s][unl[s]]):
                    seeds_of.setdefault(int(c), set()).add(s)
            multi = np.array(sorted(c for c, ss in seeds_of.items() if c >= 0 and len(ss) >= 2))
            for s in range(stab.shape[0]):
                per.append(_f(float(np.isin(lab[s][unl[s]], multi).mean())) if unl[s].any() else None)
        out["clusters"] = Number(_f(uc.frac_in_multi_seed.value), _f(uc.frac_in_multi_seed.baseline), per)
    ab = m.ablation
    if ab is not None and "stable" in ab.groups:
        metric = "pred" if ab.prediction_cost and "pred" in ab.groups["stable"].costs else "fvu"
        g, c = ab.groups["stable"].costs.get(metric), ab.groups.get("random_freq_stable")
        if g is not None:
            null = c.costs[metric].share.mean if c is not None and metric in c.costs else None
            out["ablation"] = Number(_f(g.share.mean), _f(null), [_f(x) for x in g.share.per_seed])
    po = m.pooling
    if po is not None and po.primary in po.variants:
        v, s = po.variants[po.primary], po.single
        if v.stability_pool_vs_pool is not None and s.stability_between_halves is not None:
            ss = _f(s.stability_between_halves.mean)
            ps = _f(v.stability_pool_vs_pool.mean)
            if ss is not None:
                per = [None if _f(x) is None else x - ss for x in v.stability_pool_vs_pool.per_seed]
                # single seeds are this number's control (already subtracted); the pool's rotated null is in the why
                out["pooling"] = Number(None if ps is None else ps - ss, None, per)
    tr = raw.get("triggers")
    if isinstance(tr, dict) and tr.get("stable") and tr.get("unstable"):
        su, ss = tr["unstable"].get("surface_score_median"), tr["stable"].get("surface_score_median")
        null = ((tr.get("null") or {}).get("surface_score_median_diff") or {}).get("q50")
        out["triggers"] = Number(None if su is None or ss is None else su - ss, _f(null), _trigger_per_seed(folder, lat, an))
    return out


def _trigger_per_seed(folder: Path, lat: dict, an) -> list:
    """Per seed: median surface-form score of its unstable live latents minus its stable ones' (triggers.safetensors)."""
    path = folder / "triggers.safetensors"
    if an is None or "stability" not in lat or not path.is_file():
        return []
    from safetensors.numpy import load_file

    from real.triggers import LIVE_FREQ

    tr, stab = load_file(str(path)), lat["stability"]
    out = []
    for s in range(stab.shape[0]):
        ok = (tr["frequency"][s] > LIVE_FREQ) & np.isfinite(tr["surface_score"][s])
        score = tr["surface_score"][s]
        un = score[ok & (stab[s] <= an.settings.unstable_cutoff)]
        st = score[ok & (stab[s] >= an.settings.stable_cutoff)]
        out.append(float(np.median(un) - np.median(st)) if un.size and st.size else None)
    return out
