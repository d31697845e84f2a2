"""The atlas stage of a real run: the cross-seed feature atlas of its seeds, and what the reproducible features carry.

The atlas (synthsae.metrics.atlas_run.atlas_result) uses the held-out activations for firing frequencies and EV
shares. Its CE part splices the reconstruction into the model (real.splice.splice_eval) four ways per seed: every
latent, only the latents merged into atlas features (the remainder's and dead ones zeroed), only the remainder's
(the features' zeroed), none (b_dec). The CE share of the features is their two-player Shapley share of the CE gain
over 'no latent', the analogue of the EV share (docs/atlas.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from real.splice import ce_recovered, splice_eval
from synthsae.metrics.ablation import spread
from synthsae.metrics.atlas import Atlas, AtlasConfig, feature_latents
from synthsae.results import AtlasCE, AtlasResult

VARIANTS = ("full", "features_only", "remainder_only", "no_latents")  # order of atlas_masks


def atlas_masks(atlas: Atlas) -> Bool[Tensor, "4 S m"]:
    """Latents zeroed in each splice variant (VARIANTS): none; the remainder's and dead ones (label < 0); the
    features' members (label >= 0); all."""
    feat = feature_latents(atlas)
    return torch.stack([torch.zeros_like(feat), ~feat, feat, torch.ones_like(feat)])


def ce_share_features(ce: Float[Tensor, "4 S"]) -> Float[Tensor, " S"]:
    """Shapley share of the features F in the CE gain over 'no latent' in the game of two players F and R (the
    remainder): with g(T) = CE_no_latents - CE(only T kept), phi_F = (g(F) + g(F+R) - g(R)) / 2, share = phi_F / g(F+R).
    phi_F + phi_R = g(F+R), so the remainder's share is 1 - this. NaN for a seed whose full reconstruction does not
    lower the CE below b_dec's (no gain to share)."""
    g_all, g_f, g_r = ce[3] - ce[0], ce[3] - ce[1], ce[3] - ce[2]
    share = (g_f + g_all - g_r) / (2 * g_all)
    return torch.where(g_all > 0, share, torch.full_like(share, float("nan")))


def atlas_ce(lm, sae, atlas: Atlas, windows: Int[Tensor, "N T"], layer: int, *, scale: float, threshold: float | None,
             batch_contexts: int, progress: bool = False) -> AtlasCE:
    """Spliced CE / KL of the four variants per seed, CE recovered and the CE shares."""
    res = splice_eval(lm, sae, windows, layer, scale=scale, threshold=threshold, masks=atlas_masks(atlas),
                      batch_contexts=batch_contexts, progress=progress)
    ce, kl = res["ce"].double(), res["kl"].double()
    rec = ce_recovered(ce, res["ce_clean"], res["ce_zero"])
    share = ce_share_features(ce)
    sp = lambda v: spread(v.tolist())  # noqa: E731
    return AtlasCE(
        layer=layer, splice_windows=int(windows.shape[0]), splice_tokens=int(res["n_tokens"]),
        ce_clean=float(res["ce_clean"]), ce_zero_ablation=float(res["ce_zero"]),
        ce_full=sp(ce[0]), ce_features_only=sp(ce[1]), ce_remainder_only=sp(ce[2]), ce_no_latents=sp(ce[3]),
        ce_recovered_full=sp(rec[0]), ce_recovered_features_only=sp(rec[1]), ce_recovered_remainder_only=sp(rec[2]),
        ce_share_features=sp(share), ce_share_remainder=sp(1 - share),
        kl_features_only=sp(kl[1]), kl_remainder_only=sp(kl[2]),
        definition="features only: the latents of the remainder and dead latents zeroed; remainder only: the latents "
                   "merged into atlas features zeroed; no latents: the reconstruction is b_dec. CE recovered = "
                   "(CE_zero - CE) / (CE_zero - CE_clean). CE share of the features = (g(F) + g(all) - g(R)) / "
                   "(2 g(all)) with g(T) = CE_no_latents - CE(only T kept): the two-player Shapley share, per seed (null where "
                   "g(all) <= 0: the reconstruction does not beat b_dec)")


def real_atlas(lm, sae, store, cfg, scale: float, out: Path, atlas_cfg: AtlasConfig | None = None,
               progress: bool = False) -> AtlasResult:
    """Build the atlas of a real run's seeds on its eval activations, splice it, write atlas.safetensors, atlas.json
    and metrics.json's "atlas" stage (last: its presence marks the stage done)."""
    from synthsae.metrics.atlas_run import atlas_result, write_atlas

    t0 = time.perf_counter()
    x = (store.load("eval", limit=cfg.analysis.eval_tokens) * scale).to(sae.W_dec.device, sae.W_dec.dtype)
    res, atlas = atlas_result(sae, atlas_cfg or AtlasConfig(), x=x, tau=cfg.analysis.tau, variant=cfg.sae.variant,
                              sae_cfg=cfg.sae, run_dir=out)
    res.source.data = f"held-out activations of the run ({x.shape[0]} eval tokens of acts/)"
    windows = store.tokens()[store.n_train_contexts :][: cfg.splice_contexts]
    res.ce = atlas_ce(lm, sae, atlas, windows, cfg.collect.layer, scale=scale,
                      threshold=store.meta.get("outlier_norm_threshold"), batch_contexts=cfg.splice_batch,
                      progress=progress)
    res.seconds = time.perf_counter() - t0
    write_atlas(out, res, atlas)
    return res
