"""`synthsae sweep`: a grid of runs with its verdict map and trends."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from synthsae.cli.common import UserError, console, log, stopped_exit, user_errors
from synthsae.cli.options import Quiet
from synthsae.sweep import PRESETS, grid_preset, load_grid, run_sweep


def sweep_cmd(
    grid_file: Optional[Path] = typer.Argument(None, help="GRID.toml (see docs/sweep.md); or --preset"),
    preset_name: Optional[str] = typer.Option(None, "--preset", help="quick (tests), synthetic, real-cpu, real-gpu"),
    out: Optional[Path] = typer.Option(None, "--out", help="sweep folder (default runs/sweep-<name>)"),
    resume: bool = typer.Option(False, "--resume", help="finish a killed sweep or train only the cells of new axis values"),
    jobs: Optional[int] = typer.Option(None, "--jobs", help="cells trained at once in worker processes (default: one per "
                                       "CPU core on the CPU, 1 on a GPU)"),
    quiet: Quiet = False,
) -> None:
    """A grid of runs (widths, layers, models, variants, seeds): sweep.json / .md / .html with the verdict map and trends."""
    if (grid_file is None) == (preset_name is None):
        raise UserError(f"GRID = give a GRID.toml file or --preset NAME ({', '.join(PRESETS)}), not both")
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs = {jobs}: must be an integer >= 1")
    grid = load_grid(grid_file) if grid_file is not None else grid_preset(preset_name)
    out = out or Path("runs") / f"sweep-{grid.name}"
    try:
        res = run_sweep(grid, out, resume=resume, jobs=jobs, progress=not quiet, log=log)
    except KeyboardInterrupt:
        stopped_exit(f"`synthsae sweep ... --resume --out {out}` trains only the missing cells")
    console.print(f"{res['cells']} cells, trained {res['trained']}; {out / 'sweep.md'} and {out / 'sweep.html'}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `sweep` to app."""
    app.command("sweep")(user_errors(sweep_cmd))
