"""`synthsae run | report | compare | seed-modes`: the whole study on a synthetic run and what is built from it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from synthsae import distributed
from synthsae.cli.common import (UserError, console, diverged_exit, existing_run, interrupted_exit, report_lock,
                                 user_errors)
from synthsae.cli.folders import check_metrics_target, warn_taus
from synthsae.cli.options import (AllowMissingSeeds, BatchSize, ConfigFile, Device, DSae, Dtype, K, Lr, Preset, Quiet,
                                  Seeds, Steps, TrainDevice, Variant)
from synthsae.cli.runconfig import check_world, run_config
from synthsae.cli.show import print_verdicts
from synthsae.config import SEED_MODES
from synthsae.fileio import check_writable_dir
from synthsae.metrics.run_analysis import is_run_dir
from synthsae.report import build_comparison, build_report
from synthsae.rundir import run_lock
from synthsae.seed_modes import seed_mode_study
from synthsae.study import check_target, run_study
from synthsae.loop import TrainingDiverged


def run(
    preset_name: Preset = None,
    config_file: ConfigFile = None,
    variant: Variant = None,
    seeds: Seeds = None,
    d_sae: DSae = None,
    k: K = None,
    steps: Steps = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default: runs/<preset>-<variant>)"),
    device: TrainDevice = None,
    dtype: Dtype = None,
    resume: bool = typer.Option(False, "--resume", help="finish an interrupted run with its own config.toml (skips stages already done)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing run (only a folder holding a synthsae run)"),
    allow_missing_seeds: AllowMissingSeeds = False,
    quiet: Quiet = False,
) -> None:
    """The whole study on the embedded default: train S seeds, analyse, ablate, pool, write the report."""
    if resume and force:
        raise UserError("--resume and --force are exclusive: resume keeps the run, force starts it over")
    if out is not None:
        check_writable_dir(out, "--out")
    cfg = run_config(out, resume, preset_name, config_file, variant=variant, seeds=seeds, d_sae=d_sae, k=k,
                     steps=steps, batch_size=batch_size, lr=lr, device=device, dtype=dtype)
    if cfg.train.seeds < 2:
        raise UserError(f"--seeds = {cfg.train.seeds}: the study compares seeds, so it needs at least 2")
    out = out or Path("runs") / f"{cfg.preset}-{cfg.sae.variant}"
    check_world(cfg)
    check_writable_dir(out, "--out")
    check_target(out, resume, force)  # before any work, so a refused run leaves the folder untouched
    try:
        res = run_study(cfg, out, resume=resume, force=force, device=device, progress=not quiet,
                        log=lambda m: console.print(m, highlight=False, markup=False), allow_missing_seeds=allow_missing_seeds)
    except TrainingDiverged as exc:
        diverged_exit(exc, "run", out)
    except KeyboardInterrupt:
        interrupted_exit("run", out)
    if not distributed.current().is_main:  # torchrun: rank 0 finishes the study and reports
        return
    print_verdicts(out)
    took = ", ".join(f"{k} {v:.0f}s" for k, v in res.seconds.items())
    console.print(f"report: {out / 'report.html'} (and report.md); stage times: {took}", highlight=False)


def report_cmd(run_dir: Path = typer.Argument(..., help="a run folder with metrics.json")) -> None:
    """Rebuild figures/, report.md and report.html from a run's saved files (no retraining)."""
    existing_run(run_dir)
    check_writable_dir(run_dir, "RUN_DIR")
    with report_lock(run_dir):  # never render a run another process is still writing
        md, page = build_report(run_dir)
    warn_taus(run_dir / "metrics.json")
    print_verdicts(run_dir)
    console.print(f"wrote {md} and {page}", highlight=False)


def compare_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="two or more run folders"),
    out: Path = typer.Option(Path("runs/compare"), "--out", help="folder for compare.md / compare.html"),
) -> None:
    """Put several runs (e.g. two variants) side by side in one report."""
    if len(run_dirs) < 2:
        raise UserError("RUN_DIRS: give at least two run folders to compare")
    check_writable_dir(out, "--out")
    md, page = build_comparison([existing_run(r) for r in run_dirs], out)
    console.print(f"wrote {md} and {page}", highlight=False)


def seed_modes_cmd(
    run_dir: Path = typer.Argument(..., help="a finished synthetic run directory"),
    modes: Optional[str] = typer.Option(None, "--modes", help=f"comma-separated seed modes to train beside the run's own "
                                        f"({', '.join(SEED_MODES)}; default: independent, or both shared modes for an "
                                        "independent run)"),
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Stability or stabilization: train the run's config under other train.seed_mode values (RUN/seed_modes/<mode>/),
    analyse them alike and add the comparison to metrics.json ("seed_modes") and the report."""
    if not is_run_dir(run_dir) or not (run_dir / "train.json").is_file():
        raise UserError(f"{str(run_dir)!r}: not a finished synthetic run (config.toml, seeds/ and train.json)")
    check_metrics_target(run_dir / "metrics.json")
    wanted = [m.strip() for m in modes.split(",") if m.strip()] if modes else None
    with run_lock(run_dir):  # no other synthsae process writes the run meanwhile
        res = seed_mode_study(run_dir, wanted, None if device == "auto" else device, progress=not quiet)
    for r in res.rows:
        console.print(f"{r.mode}{' (this run)' if r.own else ''}: mean stability {r.stability.value:.3f} "
                      f"(null {r.stability.baseline:.3f}), stable {r.frac_stable.value:.3f}, EV {r.ev:.4f}", highlight=False)
    md, page = build_report(run_dir)
    console.print(f"wrote {run_dir / 'metrics.json'} (key \"seed_modes\"); report: {page}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `run`, `report`, `compare` and `seed-modes` to app (after train / analysis, as in --help)."""
    app.command("run")(user_errors(run))
    app.command("report")(user_errors(report_cmd))
    app.command("compare")(user_errors(compare_cmd))
    app.command("seed-modes")(user_errors(seed_modes_cmd))
