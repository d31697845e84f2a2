"""Functional asymmetry on a real model: the shared ablation groups, with FVU and spliced next-token CE / KL as costs.

Groups (stable, unstable, random size- and frequency-matched controls) and the summary are those of
synthsae.metrics.ablation; only the costs differ: each group is zeroed, the reconstruction spliced in after
block L (real.splice), and next-token CE and KL to the clean model measured on held-out windows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from real.splice import ce_recovered, splice_eval
from synthsae.metrics.ablation import build_groups, latent_stats, spread, summarize
from synthsae.results import AblationResult, SpliceResult


PRED_NAME = "next-token KL(clean || spliced), reconstruction spliced in after the layer"


def real_ablation(lm, sae, store, cfg, stability: Tensor, scale: float, progress: bool = True) -> tuple[AblationResult, SpliceResult]:
    """The shared AblationResult (costs fvu, pred = next-token KL, ce) and the splice numbers (CE recovered, clean and
    zero-ablation CE)."""
    x = store.load("eval", limit=cfg.analysis.eval_tokens) * scale
    x = x.to(sae.W_dec.device, sae.W_dec.dtype)
    S, m = sae.W_dec.shape[0], sae.W_dec.shape[1]
    freq, mass = latent_stats(sae, x)
    live_threshold = 1e-5
    groups = build_groups(stability.to(x.device), freq, cfg.analysis.stable_cutoff, cfg.analysis.unstable_cutoff,
                          live_threshold, cfg.n_draws, seed=0)
    names = list(groups)
    none = torch.zeros(1, S, m, dtype=torch.bool)
    every = torch.ones(1, S, m, dtype=torch.bool)
    stacked = torch.cat([none, every] + [groups[n].cpu() for n in names])
    bounds, start = {}, 2
    for n in names:
        bounds[n] = (start, start + groups[n].shape[0])
        start += groups[n].shape[0]
    windows = store.tokens()[store.n_train_contexts :][: cfg.splice_contexts]
    res = splice_eval(lm, sae, windows, cfg.collect.layer, scale=scale,
                      threshold=store.meta.get("outlier_norm_threshold"), masks=stacked,
                      batch_contexts=cfg.splice_batch, progress=progress)
    agg = {"fvu": res["fvu"], "pred": res["kl"], "ce": res["ce"]}
    base = {k: v[0] for k, v in agg.items()}
    full = {k: v[1] for k, v in agg.items()}
    costs = {n: {k: v[bounds[n][0] : bounds[n][1]] for k, v in agg.items()} for n in names}
    live = freq > live_threshold
    result = AblationResult(
        eval_tokens=int(res["n_tokens"]), eval_seed=None, tau=cfg.analysis.tau, match=cfg.analysis.match,
        stable_cutoff=cfg.analysis.stable_cutoff, unstable_cutoff=cfg.analysis.unstable_cutoff,
        live_threshold=live_threshold, n_draws=cfg.n_draws, prediction_cost=PRED_NAME,
        units={"fvu": "fraction of variance unexplained on the spliced tokens",
               "pred": "mean next-token KL(clean || spliced) per predicted token (nats)",
               "ce": "mean next-token cross-entropy per predicted token (nats)"},
        n_live=spread(live.sum(-1).float().tolist()),
        baseline={k: spread(v.tolist()) for k, v in base.items()},
        all_ablated={k: spread(v.tolist()) for k, v in full.items()},
        groups=summarize(groups, costs, base, full, mass))
    rec = ce_recovered(base["ce"], res["ce_clean"], res["ce_zero"])
    splice = SpliceResult(
        layer=cfg.collect.layer,
        splice_windows=int(windows.shape[0]),
        splice_tokens=int(res["n_tokens"]),
        ce_clean=res["ce_clean"],
        ce_zero_ablation=res["ce_zero"],
        kl_zero_ablation=res["kl_zero"],
        ce_spliced=spread(base["ce"].tolist()),
        kl_spliced=spread(base["pred"].tolist()),
        fvu_spliced=spread(base["fvu"].tolist()),
        ce_recovered=spread(rec.tolist()),
        forward=res["path"],  # suffix: blocks after the layer run from the spliced stream; hook: the whole model
        definition="CE recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean); zero ablation splices zeros at "
                   "the same positions; position 0 and norm outliers keep their clean activations",
    )
    return result, splice
