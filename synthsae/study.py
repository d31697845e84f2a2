"""The whole study, top to bottom: train S seeds -> analyse -> ablate -> pool -> report.

Each stage writes its result into the run folder before the next starts, so a killed run resumes from the
first stage whose output is missing (training itself resumes from its last checkpoint).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from synthsae.config import RunConfig, validate
from synthsae.metrics_file import Metrics, read_metrics, stage_done, write_stage
from synthsae.threads import configure_threads

RUN_OUTPUTS = ("metrics.json", "analysis_latents.safetensors", "report.md", "report.html", "figures", "pooled")


@dataclass
class StudyResult:
    run_dir: Path
    metrics: Metrics | None  # None on torchrun ranks other than 0 (they stop after the analysis)
    seconds: dict[str, float] = field(default_factory=dict)  # per stage; absent = skipped (already done)


def _is_finished(out: Path) -> bool:
    return (out / "report.html").is_file() and (out / "train.json").is_file()


def _clear_outputs(out: Path) -> None:
    """Remove what the analysis stages write (training's own files are cleared by train_run), nothing else."""
    from synthsae.rundir import clear_run

    clear_run(out, RUN_OUTPUTS)


def check_target(out: Path, resume: bool, force: bool) -> None:
    """Refuse to touch a finished run without force, an unfinished one without resume / force, and with force
    anything that is not a synthsae run (an empty folder is fine)."""
    from synthsae.rundir import check_not_locked, check_overwritable

    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out = {str(out)!r}: is a file, not a run folder")
    check_not_locked(out)  # a run in progress elsewhere: say so, rather than "pass --force"
    if force:
        check_overwritable(out)
        return
    if not out.exists():
        return
    if _is_finished(out) and not resume:
        raise FileExistsError(f"{out}: holds a finished run; pass --force to overwrite it")
    if not resume and any(out.iterdir()):
        raise FileExistsError(f"{out}: is not empty (an unfinished run?); pass --resume to finish it or --force to start over")


def run_study(cfg: RunConfig, out: str | Path, *, resume: bool = False, force: bool = False,
              device: str | None = None, progress: bool = True, log=print, allow_missing_seeds: bool = False) -> StudyResult:
    """Run every stage into `out`; with resume, stages whose output exists are skipped.

    A seed folder missing from a trained run is refused unless allow_missing_seeds (then named in the log).
    Only one process writes a run at a time (rundir.run_lock).
    """

    from synthsae import distributed
    from synthsae.memory import check_run_fits
    from synthsae.rundir import run_lock
    from synthsae.device import pick_device

    validate(cfg)
    out = Path(out)
    dd = distributed.setup(pick_device(device or cfg.train.device))  # torchrun: join the ranks first
    check_target(out, resume, force)
    check_run_fits(cfg, str(pick_device(device or cfg.train.device)), out=None if resume else out)  # before any write
    distributed.barrier("checked")  # no rank sees the folder rank 0's lock creates
    created = not out.exists()
    try:
        with run_lock(out) if dd.is_main else contextlib.nullcontext():  # rank 0 holds the run's lock
            return _run_locked(cfg, out, resume=resume, force=force, device=device, progress=progress, log=log,
                               allow_missing_seeds=allow_missing_seeds)
    except BaseException:
        if created and dd.is_main:
            from synthsae.rundir import drop_if_only_marker

            drop_if_only_marker(out)  # a run refused before it wrote anything leaves no marker-only folder
        raise


def _run_locked(cfg: RunConfig, out: Path, *, resume: bool, force: bool, device: str | None, progress: bool,
                log, allow_missing_seeds: bool) -> StudyResult:
    from synthsae.io import check_seed_folders, load_run
    from synthsae.rundir import clear_run
    from synthsae.metrics.ablation import ablation_study
    from synthsae.metrics.run_analysis import analyze_run, write_analysis
    from synthsae.pooling import pooling_study
    from synthsae.report import build_report
    from synthsae import distributed
    from synthsae.device import pick_device
    from synthsae.train import train_run

    dd = distributed.current()
    if not dd.is_main:
        log, progress = (lambda _msg: None), False
    mpath = out / "metrics.json"
    if resume and mpath.is_file():
        read_metrics(mpath)  # a corrupt metrics.json is named now, not after the stages before it ran
    saved = {k for k in ("analysis", "ablation", "pooling") if resume and stage_done(mpath, k)}  # before any rank writes
    trained = resume and (out / "train.json").is_file()
    distributed.barrier("start")  # every rank has read the folder's state before rank 0 changes it
    configure_threads(cfg.train.batch_size, cfg.truth.d, cfg.sae.d_sae, device or cfg.train.device)
    if force and dd.is_main:
        _clear_outputs(out)
    seconds: dict[str, float] = {}

    def done(key: str) -> bool:
        return key in saved

    t0 = time.perf_counter()
    if not trained:
        log(f"[1/5] training {cfg.train.seeds} seeds of {cfg.sae.variant} (d_sae {cfg.sae.d_sae}, k {cfg.sae.k}, "
            f"{cfg.train.steps} steps) -> {out}")
        train_run(cfg, out, resume=resume, force=force, progress=progress)
        seconds["train"] = time.perf_counter() - t0

    dev = device or cfg.train.device
    missing = check_seed_folders(out, allow_missing=allow_missing_seeds)
    if missing:
        log(f"warning: seed folders missing, going on without them: {', '.join(missing)}")
    if dd.active and pick_device(dev).type == "cuda":
        dev = str(distributed.rank_device(pick_device(dev), dd))
    latents = None
    if not done("analysis"):
        log("[2/5] analysing stability, truth recovery and subspaces")
        t = time.perf_counter()
        with distributed.sharing_pairs():  # the seed pairs of the stability scores are split over the ranks
            res, latents = analyze_run(out, device=dev)
        if dd.is_main:
            write_analysis(mpath, res, latents)
        seconds["analysis"] = time.perf_counter() - t
    if not dd.is_main:  # ablation, pooling and the report run on rank 0 alone
        return StudyResult(out, None, seconds)

    run_cfg, sae, truth = load_run(out, device="cpu" if dev == "auto" else dev)
    if not done("ablation"):
        log("[3/5] ablating stable / unstable / random groups")
        t = time.perf_counter()
        stab = latents["stability"] if latents is not None else _saved_stability(out)
        write_stage(mpath, "ablation", ablation_study(sae, truth, run_cfg, stability=stab, progress=progress))
        seconds["ablation"] = time.perf_counter() - t

    if not done("pooling"):
        log("[4/5] pooling seeds (disjoint halves, widths 1x and 2x)")
        t = time.perf_counter()
        clear_run(out, ("pooled",))
        write_stage(mpath, "pooling", pooling_study((run_cfg, sae, truth), out_dir=out / "pooled",
                                                    refit_steps=run_cfg.analysis.pool_refit_steps, progress=progress))
        seconds["pooling"] = time.perf_counter() - t

    log("[5/5] writing report.md, report.html and figures/")
    t = time.perf_counter()
    build_report(out)
    seconds["report"] = time.perf_counter() - t
    return StudyResult(out, read_metrics(mpath), seconds)


def _saved_stability(out: Path):
    """Per-latent stability from the analysis' saved tensors (for a resumed run)."""
    from safetensors.torch import load_file

    from synthsae.metrics.run_analysis import LATENTS_FILE

    path = out / LATENTS_FILE
    return load_file(str(path))["stability"] if path.is_file() else None
