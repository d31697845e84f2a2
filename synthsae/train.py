"""A synthetic training run: S seeds on the truth's seeded stream into a run folder, bit-identical resume on CPU.

The step itself is synthsae.loop (train_steps); checkpoints, Ctrl-C and train.json are synthsae.checkpoint. This
module adds what is synthetic: the data stream, the run's config checks, the final evaluation and the summary.
Its older public names (train_steps, new_state, checkpoint_step, ...) stay importable from here.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from synthsae import distributed
from synthsae.checkpoint import (CHECKPOINT_DIR, FINISHED, checkpoint_step, finish, load_checkpoint, train_checkpointed,
                                 write_seed_folders)
from synthsae.config import RunConfig, validate
from synthsae.config import save as save_config
from synthsae.device import pick_device
from synthsae.loop import PARAM_DTYPE, new_state, set_precision
from synthsae.sae import build_sae
from synthsae.sae.base import SAE
from synthsae.threads import configure_threads


# ----------------------------------------------------------------------------------------------- data


class DataStream:
    """Seeded batches from the truth: one stream shared by all seeds, or (vary_data) stream data_seed + s per seed.

    `seed_index` names the seeds this process trains (a rank's shard; default all n_seeds): with a shared stream
    every rank draws the same batches, so a seed's data never depends on how the seeds are split over processes.
    The generators' states are part of a checkpoint, so a resumed run sees exactly the same batches.
    """

    def __init__(self, truth, batch_size: int, data_seed: int, n_seeds: int, vary_data: bool, dtype=torch.float32,
                 seed_index: list[int] | None = None):
        from synthsae.truth import make_generator

        self.truth, self.batch_size, self.dtype = truth, batch_size, dtype
        idx = list(range(n_seeds)) if seed_index is None else list(seed_index)
        seeds = [data_seed + s for s in idx] if vary_data else [data_seed]
        self.gens = [make_generator(s, truth.device) for s in seeds]
        self.vary = vary_data

    def __iter__(self) -> "DataStream":
        return self

    def __next__(self) -> Tensor:
        from synthsae.truth import sample

        xs = [sample(self.truth, self.batch_size, g, details=False).x for g in self.gens]
        x = torch.stack(xs) if self.vary else xs[0]
        return x.to(self.dtype)

    def get_state(self) -> list[Tensor]:
        return [g.get_state() for g in self.gens]

    def set_state(self, states: list[Tensor]) -> None:
        for g, s in zip(self.gens, states):
            g.set_state(s)

    def seed_state(self, i: int) -> Tensor:
        """Generator state of the stream the i-th local seed reads (its own, or the shared one)."""
        return self.gens[i if self.vary else 0].get_state()


# ----------------------------------------------------------------------------------------------- runs


def _check_resume_config(out: Path, cfg: RunConfig) -> float | None:
    """A resumed run keeps its saved config; only train.lr (the way out of a divergence) and train.device may change.

    Returns the saved lr when the new one differs, else None; any other difference is a one-line ConfigError.
    """
    from synthsae import config as C
    from synthsae.io import RunFileError

    try:
        saved = C.load(out / "config.toml")
    except C.ConfigError as exc:
        raise RunFileError(f"{out / 'config.toml'}: {exc}") from None
    diffs = [d for d in C.differences(saved, cfg) if d[0] not in ("train.lr", "train.device")]
    if diffs:
        raise C.ConfigError(f"{out}: cannot resume with a different config ({C.describe_differences(diffs)}); "
                            "resume without those options (the run keeps its config.toml) or pass --force to start over")
    return saved.train.lr if saved.train.lr != cfg.train.lr else None


def seed_metadata(cfg: RunConfig, s: int) -> dict:
    """What goes under cfg.json's metadata for seed index s: both seeds, the variant and the full config."""
    t = cfg.train
    init = t.resolved_init_seeds()[s]
    return {
        "variant": cfg.sae.variant,
        "seed_index": s,
        "init_seed": init,
        "data_seed": t.data_seed + s if t.data_varies() else t.data_seed,
        "vary_data": t.vary_data,
        "seed_mode": t.resolved_seed_mode(),
        "preset": cfg.preset,
        "truth": asdict(cfg.truth),
        "sae": asdict(cfg.sae),
        "train": asdict(cfg.train),
    }


@torch.no_grad()
def evaluate(sae: SAE, truth, n_tokens: int, batch_size: int, seed: int) -> dict:
    """Firing frequency per latent, pooled FVU and mean L0 per seed on a fresh stream (inference encode)."""
    from synthsae.truth import make_generator, sample

    gen = make_generator(seed, truth.device)
    S, m = sae.n_seeds, sae.d_sae
    fires = torch.zeros(S, m, dtype=torch.float64, device=sae.device)
    err = torch.zeros(S, dtype=torch.float64, device=sae.device)
    l0 = torch.zeros(S, dtype=torch.float64, device=sae.device)
    xs_sum = torch.zeros(truth.d, dtype=torch.float64, device=sae.device)
    xs_sq = torch.zeros((), dtype=torch.float64, device=sae.device)
    n = 0
    while n < n_tokens:
        b = min(batch_size, n_tokens - n)
        x = sample(truth, b, gen, details=False).x.to(sae.dtype)
        acts = sae.encode(x)
        x_hat = sae.decode(acts)
        nz = acts != 0  # blocktopk codes are signed inside a group
        fires += nz.sum(dim=1)
        l0 += nz.sum(dim=(1, 2))
        err += (x.unsqueeze(0) - x_hat).double().pow(2).sum(dim=(1, 2))
        xs_sum += x.double().sum(dim=0)
        xs_sq += x.double().pow(2).sum()
        n += b
    var = xs_sq - xs_sum.pow(2).sum() / n
    freq = fires / n
    return {"fvu": (err / var).tolist(), "l0": (l0 / n).tolist(), "frequency": freq.float(),
            "dead_fraction_eval": (fires == 0).double().mean(dim=1).tolist(), "tokens": n}


def _check_target(cfg: RunConfig, out: Path, resume: bool, force: bool) -> tuple[bool, float | None]:
    """Refuse what would lose work; returns (resuming from a committed checkpoint, the saved lr when it changed)."""
    started = (out / "config.toml").exists() or (out / CHECKPOINT_DIR).exists()
    if (out / FINISHED).exists() and not force:
        raise FileExistsError(f"{out}: holds a finished training run; pass --force to overwrite it")
    if not force and not resume and started:
        raise FileExistsError(f"{out}: holds an unfinished training run; pass --resume to continue it or --force to start over")
    old_lr = _check_resume_config(out, cfg) if resume and not force and (out / "config.toml").exists() else None
    at = checkpoint_step(out) if resume and not force else None
    if at is not None and at > cfg.train.steps:
        from synthsae.config import ConfigError

        raise ConfigError(f"train.steps = {cfg.train.steps}: below the checkpoint's step {at} in {out / CHECKPOINT_DIR}; "
                          f"a resume continues from it, so give train.steps >= {at} (or --force to start over)")
    return at is not None, old_lr


def train_run(cfg: RunConfig, out: Path, *, resume: bool = False, force: bool = False, progress: bool = True,
              stop_after: int | None = None) -> SAE:
    """Train cfg.train.seeds SAEs into run folder `out` (docs/architecture.md); returns this process's seeds stacked.

    resume=True continues from out/checkpoint/ (bit-identical on CPU) with the config the run was started with
    (only train.lr may differ, and the change is recorded); a finished run is only replaced with force=True, and
    force only clears a folder that holds a synthsae run. stop_after=N stops (with a checkpoint) once step N is
    reached, as if the run had been killed. Ctrl-C checkpoints after the current step, then raises
    KeyboardInterrupt. Another process writing the same folder is refused (a lock on the run's marker file).
    Under torchrun each rank trains its shard of the seeds (distributed.shard) and writes their seed folders and
    checkpoint files; rank 0 holds the lock and writes config.toml, truth.safetensors and train.json.
    """
    from synthsae.memory import check_run_fits
    from synthsae.rundir import check_overwritable, clear_run, run_lock

    validate(cfg)
    out = Path(out)
    t = cfg.train
    device = pick_device(t.device)
    dd = distributed.setup(device)
    device = distributed.rank_device(device, dd)
    if dd.world > t.seeds:
        from synthsae.config import ConfigError

        raise ConfigError(f"train.seeds = {t.seeds}: fewer seeds than processes ({dd.world}); "
                          f"run at most {t.seeds} processes")
    check_run_fits(cfg, str(device), analysis=False, out=None if resume else out)  # before anything is written
    if force:
        check_overwritable(out)
    with run_lock(out) if dd.is_main else contextlib.nullcontext():
        return _train_locked(cfg, out, device, dd, resume=resume, force=force, progress=progress, stop_after=stop_after,
                             clear=lambda: clear_run(out, ("seeds", CHECKPOINT_DIR, FINISHED, "config.toml", "truth.safetensors")))


def _train_locked(cfg: RunConfig, out: Path, device: torch.device, dd: distributed.Dist, *, resume: bool, force: bool,
                  progress: bool, stop_after: int | None, clear: Callable[[], None]) -> SAE:
    from synthsae.io import save_truth
    from synthsae.truth import build_truth

    resuming, old_lr = _check_target(cfg, out, resume, force)
    distributed.barrier("start")  # every rank has checked the folder before rank 0 changes it
    t = cfg.train
    configure_threads(t.batch_size, cfg.truth.d, cfg.sae.d_sae, device)
    dtype = PARAM_DTYPE.get(t.dtype, torch.float32)
    truth = build_truth(cfg.truth, device)
    if dd.is_main:
        if force:
            clear()
        out.mkdir(parents=True, exist_ok=True)
        if not resuming or old_lr is not None:
            save_config(cfg, out / "config.toml")
        if not resuming:
            save_truth(out / "truth.safetensors", truth)
    distributed.barrier("run files written")
    mine = distributed.shard(t.seeds, dd.rank, dd.world)
    init = t.resolved_init_seeds()
    sae = build_sae(cfg.sae, cfg.truth.d, [init[s] for s in mine], device=device, dtype=dtype)
    set_precision(sae, t.dtype)
    data = DataStream(truth, t.batch_size, t.data_seed, t.seeds, t.data_varies(), dtype=dtype, seed_index=mine)
    state = new_state(sae, t)
    extra: dict = {"lr_changes": []}
    resumed_from = None
    if resuming:
        extra = load_checkpoint(out, sae, state, data, mine)
        extra = {"lr_changes": list(extra.get("lr_changes", []))}
        resumed_from = state.step
    if resuming and old_lr is not None:
        extra["lr_changes"].append({"step": state.step, "from": old_lr, "to": t.lr})
    stats, interrupted = train_checkpointed(sae, data, state, t, out, data=data, extra=extra, seed_index=mine,
                                            resumed_from=resumed_from, stop_after=stop_after,
                                            progress=progress and dd.is_main)
    if state.step < t.steps:
        return sae  # stopped early (stop_after): the checkpoint holds the state

    ev = evaluate(sae, truth, cfg.analysis.eval_tokens, t.batch_size, seed=t.data_seed + 2**31)
    write_seed_folders(out, sae, mine, lambda s: seed_metadata(cfg, s), torch.log10(ev["frequency"] + 1e-10))
    part = {"seeds": mine, "stats": stats.to_dict(), "eval": {k: v for k, v in ev.items() if k != "frequency"},
            "seconds": state.seconds}
    parts = distributed.gather_to_main(part, "gathering per-seed results")
    if parts is not None:
        summary = _run_summary(cfg, parts, dd.world)
        if extra.get("lr_changes"):
            summary["lr_changes"] = extra["lr_changes"]
        finish(out, summary)
    distributed.barrier("train.json written")
    if interrupted:  # Ctrl-C in the last step: training is finished and saved, now stop
        raise KeyboardInterrupt
    return sae


def _run_summary(cfg: RunConfig, parts: list[dict], world: int) -> dict:
    """train.json from every rank's part (per-seed lists put back in seed order)."""
    t = cfg.train
    order = sorted(((s, p, i) for p in parts for i, s in enumerate(p["seeds"])), key=lambda r: r[0])

    def per_seed(get) -> list:
        return [get(p)[i] for _, p, i in order]

    history = []
    for j, rec in enumerate(parts[0]["stats"]["history"]):
        history.append({key: (per_seed(lambda p: p["stats"]["history"][j][key]) if isinstance(v, list) else v)
                        for key, v in rec.items()})
    st = lambda key: per_seed(lambda p: p["stats"][key])  # noqa: E731
    ev = lambda key: per_seed(lambda p: p["eval"][key])  # noqa: E731
    return {
        "variant": cfg.sae.variant,
        "init_seeds": t.resolved_init_seeds(),
        "seed_mode": t.resolved_seed_mode(),
        "steps": parts[0]["stats"]["steps"],
        "tokens_per_seed": parts[0]["stats"]["steps"] * t.batch_size,
        "seconds": max(p["seconds"] for p in parts),
        "processes": world,
        "dead_definition": f"no firing in the last {t.dead_window_tokens} training tokens",
        "train_final": {"fvu": st("fvu"), "l0": st("l0"), "loss": st("loss"), "dead_fraction": st("dead_fraction")},
        "eval": {"tokens": parts[0]["eval"]["tokens"], "fvu": ev("fvu"), "l0": ev("l0"),
                 "never_fired_fraction": ev("dead_fraction_eval")},
        "history": history,
    }

