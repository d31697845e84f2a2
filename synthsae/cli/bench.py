"""`synthsae bench`: a leaderboard of SAE variants at matched L0."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from synthsae.bench import check_jobs, check_out, get_suite, resolve_variants, run_bench
from synthsae.cli.common import UserError, console, log, stopped_exit, user_errors
from synthsae.cli.options import Quiet, one_of
from synthsae.config import SEED_MODES


def bench_cmd(
    variants: Optional[str] = typer.Option(None, "--variants", help="comma-separated variants (default: every registered one, plug-ins included)"),
    suite: str = typer.Option("quick", "--suite", help="quick (tiny, CPU minutes), standard (default + superposed, CPU), full (paper + synthbench16k, GPU)"),
    out: Path = typer.Option(Path("runs/bench"), "--out", help="bench folder (cells, leaderboard.md, leaderboard.html)"),
    resume: bool = typer.Option(False, "--resume", help="reuse the stored cells of --out: finish a killed bench or add variants"),
    jobs: Optional[int] = typer.Option(None, "--jobs", help="cells trained at once in worker processes, one torch thread each (default: min(2, CPU cores); 1 on a GPU)"),
    quiet: Quiet = False,
    seed_mode: Optional[str] = typer.Option(None, "--seed-mode", help=f"train.seed_mode of every cell: {one_of(SEED_MODES)} "
                                            "(default: shared_data, as in a run)"),
    matched_compute: bool = typer.Option(False, "--matched-compute", help="add the long baseline: the base width trained "
                                         "S/2 x the steps (the compute of half the seeds), beside the wide one"),
) -> None:
    """A leaderboard of SAE variants at matched L0: truth recovery, seed stability, pooled baselines, cost."""
    names = [v.strip() for v in variants.split(",") if v.strip()] if variants is not None else None
    if names is not None and not names:
        raise UserError("--variants: give at least one variant name")
    resolve_variants(names)
    check_jobs(jobs)
    check_out(out, get_suite(suite, seed_mode, matched_compute), resume)  # before any work: a refused bench leaves the folder untouched
    try:
        res = run_bench(names, suite, out, resume=resume, progress=not quiet, jobs=jobs, seed_mode=seed_mode,
                        matched_compute=matched_compute, log=log)
    except KeyboardInterrupt:
        stopped_exit(f"`synthsae bench --resume --suite {suite} --out {out}` finishes the bench")
    console.print(f"trained {len(res.trained)} cell(s) in {res.seconds:.0f}s; leaderboard: {out / 'leaderboard.md'} "
                  f"and {out / 'leaderboard.html'}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `bench` to app."""
    app.command("bench")(user_errors(bench_cmd))
