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
from synthsae.metrics_file import Metrics, read_metrics
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
    anything that is not a synthsae run (an empty folder is fine): synthsae.rundir.check_target."""
    from synthsae.rundir import check_target as check_run_target

    check_run_target(out, resume=resume, force=force, finished=_is_finished(out))


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


SYNTHETIC = ("train", "analysis", "ablation", "pooling", "report")  # the stages of `synthsae run`, in order


def _run_locked(cfg: RunConfig, out: Path, *, resume: bool, force: bool, device: str | None, progress: bool,
                log, allow_missing_seeds: bool) -> StudyResult:
    import synthsae.study_stages as ss
    from synthsae import distributed
    from synthsae.device import pick_device
    from synthsae.io import check_seed_folders
    from synthsae.source import Source
    from synthsae.stages import done_keys, run_stages

    dd = distributed.current()
    if not dd.is_main:
        log, progress = (lambda _msg: None), False
    mpath = out / "metrics.json"
    if resume and mpath.is_file():
        read_metrics(mpath)  # a corrupt metrics.json is named now, not after the stages before it ran
    dev = device or cfg.train.device
    if dd.active and pick_device(dev).type == "cuda":
        dev = str(distributed.rank_device(pick_device(dev), dd))
    src = Source("run", out, run_dir=out, device=None if dev == "auto" else dev)
    settings = {"train": ss.TrainSettings(cfg, resume=resume, force=force, progress=progress),
                "ablation": ss.AblationSettings(ss.AblationConfig(progress=progress)),
                "pooling": ss.PoolConfig(progress=progress)}
    done = done_keys(src, SYNTHETIC) if resume else set()  # read before any rank writes
    distributed.barrier("start")  # every rank has read the folder's state before rank 0 changes it
    configure_threads(cfg.train.batch_size, cfg.truth.d, cfg.sae.d_sae, device or cfg.train.device)
    if force and dd.is_main:
        _clear_outputs(out)

    def stages(keys: tuple[str, ...]) -> dict[str, float]:
        todo = tuple(k for k in keys if k not in done)
        return run_stages(src, todo, resume=False, settings=settings, log=log, pipeline=SYNTHETIC).seconds

    seconds = stages(("train",))
    missing = check_seed_folders(out, allow_missing=allow_missing_seeds)
    if missing:
        log(f"warning: seed folders missing, going on without them: {', '.join(missing)}")
    seconds.update(stages(("analysis",)))  # every rank: the seed pairs are split over them
    if not dd.is_main:  # ablation, pooling and the report run on rank 0 alone
        return StudyResult(out, None, seconds)
    seconds.update(stages(("ablation", "pooling", "report")))
    return StudyResult(out, read_metrics(mpath), seconds)


