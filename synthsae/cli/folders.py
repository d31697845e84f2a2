"""The inputs of the analysis commands: a Source (run folder, real run or SAE folders), its seeds and metrics.json."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Optional

from synthsae.cli.common import UserError, err_console
from synthsae.fileio import check_writable_file, read_json_object
from synthsae.io import check_seed_folders
from synthsae.io import seed_folders as run_seed_folders
from synthsae.metrics_file import MetricsError, read_metrics, tau_warning
from synthsae.rundir import run_lock
from synthsae.source import Source, open_source


def open_input(paths: list[Path], fmt: Optional[str] = None, acts: Optional[Path] = None, out: Optional[Path] = None,
               device: str = "auto") -> Source:
    """What an analysis command runs on (synthsae.source.open_source); a real run gets its config attached."""
    src = open_source(paths, fmt=fmt, acts=acts, out=out, device=None if device == "auto" else device)
    if src.kind == "real":
        from real.stages import attach

        attach(src)
    return src


def input_lock(src: Source):
    """The run's lock while a stage writes it (SAE folders: the output folder is claimed by the stage instead)."""
    return run_lock(src.run_dir) if src.kind != "folders" else nullcontext()


def count_seeds(run_dir: Path) -> int:
    """seeds/seed_* folders of a run."""
    return len([p for p in (run_dir / "seeds").glob("seed_*") if p.is_dir()])


def check_run_seeds(run_dir: Path, allow_missing: bool, command: str, need: int = 2) -> None:
    """Missing seed folders refused (or named, with --allow-missing-seeds); fewer than `need` seeds refused."""
    missing = check_seed_folders(run_dir, allow_missing=allow_missing)
    if missing:
        err_console.print(f"warning: {run_dir / 'seeds'}: going on without {', '.join(missing)}", markup=False, highlight=False)
    n = len(run_seed_folders(run_dir))
    if n < need:
        raise UserError(f"{run_dir}: holds {n} seed; {command} compares seeds, so it needs at least {need} "
                        "(`synthsae pool --no-halves` works on one)")


def check_metrics_target(path: Path) -> None:
    """metrics.json to merge into: a writable file path, and if it exists valid JSON (checked before the work)."""
    check_writable_file(path, "--out" if path.name != "metrics.json" else "metrics.json")
    if path.is_file():
        read_json_object(path)


def warn_taus(metrics_path: Path) -> None:
    """Warn when the stages in a metrics.json used different match thresholds."""
    try:
        msg = tau_warning(read_metrics(metrics_path)) if metrics_path.is_file() else None
    except MetricsError:  # named by the command that reads it
        msg = None
    if msg:
        err_console.print(msg, markup=False, highlight=False)
