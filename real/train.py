"""Train S seeds on stored activations with the shared trainer: shuffled, several passes, resumable, with convergence.

Activations are scaled by SAELens's expected_average_only_in factor c = sqrt(d) / mean norm (so the SAEs are
in normalised units); each seed's cfg.json says `normalize_activations = "expected_average_only_in"` and holds c
as `metadata.norm_scaling_factor`: SAELens users call `sae.fold_activation_norm_scaling_factor(c)` to get an SAE
on raw activations. At `checkpoints` points of training, stability (maxcos at tau) and eval FVU are recorded:
the convergence curve the report shows. The loop, its checkpoints (Ctrl-C included) and train.json are the
synthetic run's (synthsae.loop, synthsae.checkpoint); the batches come from the store, by step.
"""

from __future__ import annotations

from pathlib import Path

import torch

from real.activations import ActivationStore, activation_scale
from real.config import RealConfig
from synthsae.checkpoint import FINISHED, checkpoint_step, finish, load_checkpoint, train_checkpointed, write_seed_folders
from synthsae.device import pick_device
from synthsae.io import RunFileError
from synthsae.loop import DTYPES, new_state
from synthsae.results import ConvergencePoint
from synthsae.sae import build_sae
from synthsae.serialize import to_json
from synthsae.threads import threads_for

__all__ = ["FINISHED", "checkpoint_steps", "convergence_point", "train_real"]

LEGACY_CHECKPOINT = "checkpoint/state.pt"  # one file for all seeds, written before real runs shared synthsae.checkpoint


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """n roughly evenly spaced steps ending at the last one."""
    return sorted({max(1, round(steps * (i + 1) / n)) for i in range(n)})


@torch.no_grad()
def convergence_point(sae, x_eval, cfg: RealConfig, step: int, tokens: int) -> dict:
    """Stability distribution and eval FVU / L0 of the seeds as they are now (a ConvergencePoint in its JSON form)."""
    from synthsae.metrics.ablation import latent_stability, latent_stats
    from synthsae.metrics.stability import classify

    stab = latent_stability(sae, tau=cfg.analysis.tau, match="maxcos")
    freq, _ = latent_stats(sae, x_eval)
    live = (freq > 1e-5).to(stab.device)  # stability comes back on the CPU, the frequencies on the SAE's device
    cls = classify(stab, cfg.analysis.stable_cutoff, cfg.analysis.unstable_cutoff)
    acts = sae.encode(x_eval)
    x_hat = sae.decode(acts)
    var = ((x_eval - x_eval.mean(0)) ** 2).sum()
    fvu = (((x_eval - x_hat) ** 2).sum((-1, -2)) / var).tolist()
    n_live = live.sum().clamp_min(1)
    return to_json(ConvergencePoint(
        step=step, tokens_per_seed=tokens, fvu=fvu, l0=(acts > 0).float().sum(-1).mean(-1).tolist(),
        mean_stability_live=float(stab[live].mean()) if bool(live.any()) else None,
        mean_stability_live_per_seed=[float(stab[s][live[s]].mean()) if bool(live[s].any()) else None
                                      for s in range(stab.shape[0])],
        frac_stable_live=float((cls["stable"] & live).sum() / n_live),
        frac_unstable_live=float((cls["unstable"] & live).sum() / n_live),
        frac_live=float(live.float().mean())))


def train_real(cfg: RealConfig, store: ActivationStore, out: Path, *, resume: bool = True, progress: bool = True,
               stop_after: int | None = None, log=None):
    """Train cfg.train.seeds SAEs on the store's train split into out/seeds; returns (sae, scale).

    Runs under the synthetic trainer's thread policy (synthsae.threads): a default-sized step on 2 CPU threads took
    305 ms when another process used the other core, against 37 ms on one thread (2026-11-26); the thread count is
    restored afterwards, so the language model's forward passes keep theirs."""
    with threads_for(cfg.train.batch_size, store.d, cfg.sae.d_sae, pick_device(cfg.train.device)):
        return _train_real(cfg, store, out, resume=resume, progress=progress, stop_after=stop_after, log=log)


def _train_real(cfg: RealConfig, store: ActivationStore, out: Path, *, resume: bool, progress: bool,
                stop_after: int | None, log):
    out = Path(out)
    t = cfg.train
    device = pick_device(t.device)
    dtype = DTYPES[t.dtype]
    d = store.d
    sae = build_sae(cfg.sae, d, t.resolved_init_seeds(), device=device, dtype=dtype)
    state = new_state(sae, t)
    scale = activation_scale(store)
    x_eval = (store.load("eval", limit=min(cfg.analysis.eval_tokens, 8192)) * scale).to(device, dtype)
    extra = {"convergence": [], "scale": scale}  # saved with every checkpoint
    resumed_from = None
    if resume and checkpoint_step(out) is not None:
        saved = load_checkpoint(out, sae, state)
        extra, resumed_from = {"convergence": list(saved["convergence"]), "scale": float(saved["scale"])}, state.step
    elif resume and (out / LEGACY_CHECKPOINT).is_file():
        extra, resumed_from = _load_legacy_checkpoint(out / LEGACY_CHECKPOINT, sae, state), state.step
    conv: list[dict] = extra["convergence"]
    scale = extra["scale"]
    marks = set(checkpoint_steps(t.steps, cfg.checkpoints))
    batches = store.batches(t.batch_size, t.data_seed, scale=scale, start=state.step)  # the step fixes the data

    def convergence(st) -> None:
        if st.step in marks and not any(c["step"] == st.step for c in conv):
            conv.append(convergence_point(sae, x_eval, cfg, st.step, st.step * t.batch_size))
            sae.train()

    stats, interrupted = train_checkpointed(sae, batches, state, t, out, extra=extra, resumed_from=resumed_from,
                                            stop_after=stop_after, progress=progress, on_step=convergence)
    if state.step < t.steps:
        return sae, scale
    from synthsae.metrics.ablation import latent_stats

    freq, _ = latent_stats(sae, (store.load("eval") * scale).to(device, dtype))

    def meta(s: int) -> dict:
        return {"variant": cfg.sae.variant, "seed_index": s, "init_seed": sae.init_seeds[s], "data_seed": t.data_seed,
                "preset": cfg.preset, "model": cfg.collect.model, "hook_name": f"layers.{cfg.collect.layer}",
                "hook_layer": cfg.collect.layer, "context_size": cfg.collect.ctx_len,
                "norm_scaling_factor": scale,
                "normalization": "inputs multiplied by norm_scaling_factor (sqrt(d_in) / mean norm of the training "
                                 "activations); fold it with sae.fold_activation_norm_scaling_factor(c)",
                "sae": _asdict(cfg.sae), "train": _asdict(cfg.train)}

    write_seed_folders(out, sae, list(range(sae.n_seeds)), meta, torch.log10(freq + 1e-10),
                       cfg_extra={"normalize_activations": "expected_average_only_in",
                                  "model_name": cfg.collect.model, "hook_name": f"layers.{cfg.collect.layer}"})
    finish(out, {
        "variant": cfg.sae.variant, "init_seeds": sae.init_seeds, "steps": stats.steps, "passes": cfg.passes,
        "decay_start": t.decay_start,
        "tokens_per_seed": stats.steps * t.batch_size, "train_tokens_collected": store.n_rows("train"),
        "seconds": state.seconds, "norm_scaling_factor": scale,
        "train_final": {"fvu": stats.fvu, "l0": stats.l0, "dead_fraction": stats.dead_fraction},
        "convergence": conv, "history": stats.history})
    if interrupted:  # Ctrl-C in the last step: training is finished and saved, now stop
        raise KeyboardInterrupt
    return sae, scale


def _load_legacy_checkpoint(path: Path, sae, state) -> dict:
    """Resume from a LEGACY_CHECKPOINT (all seeds in one file); returns its convergence points and scale."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        sae.load_state_dict({k: v.to(sae.device) for k, v in blob["model"].items()})
        state.optimizer.load_state_dict(blob["optimizer"])
        state.tokens_since_fired.copy_(blob["tokens_since_fired"])
        state.step, state.history = int(blob["step"]), list(blob["history"])
        return {"convergence": list(blob["convergence"]), "scale": float(blob["scale"])}
    except Exception as exc:  # noqa: BLE001
        raise RunFileError(f"{path}: cannot resume from this checkpoint ({str(exc).splitlines()[0] if str(exc) else exc}); "
                           "pass --force to start over") from None


def _asdict(obj) -> dict:
    from dataclasses import asdict

    return asdict(obj)
