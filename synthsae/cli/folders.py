"""The inputs of the analysis commands: a run folder or SAE folders (globs, parents), their seeds and metrics.json."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Optional

from synthsae.cli.common import UserError, err_console
from synthsae.fileio import check_writable_file, read_json_object
from synthsae.io import check_seed_folders
from synthsae.io import seed_folders as run_seed_folders
from synthsae.loaders import FORMATS, expand_paths
from synthsae.loaders.acts import read_activations
from synthsae.loaders.analysis import GivenActs
from synthsae.metrics.run_analysis import is_run_dir
from synthsae.metrics_file import MetricsError, read_metrics, tau_warning


def check_paths(paths: list[Path]) -> None:
    """Every path given exists (a glob is expanded later)."""
    for p in paths:
        if not glob.has_magic(str(p)) and not p.exists():
            raise UserError(f"{str(p)!r}: no such file or directory")


def is_run_input(paths: list[Path], fmt: Optional[str], acts: Optional[Path]) -> bool:
    """One run directory and neither --format nor --acts: the command works on the run (else on SAE folders)."""
    return len(paths) == 1 and is_run_dir(paths[0]) and fmt is None and acts is None


def seed_folders(paths: list[Path], fmt: Optional[str]) -> list[Path]:
    """SAE folders (one per seed) from the command line's folders, globs and parent folders."""
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"--format = {fmt!r}: must be one of {', '.join(FORMATS)}")
    folders = expand_paths(paths)
    if fmt is None:
        bad = [p for p in folders if not any(m.looks_like(p) for m in FORMATS.values())]
        if bad:
            raise UserError(f"{str(bad[0])!r}: neither a run directory (config.toml + seeds/) nor an SAE folder "
                            "(SAELens cfg.json + sae_weights.safetensors, sparsify cfg.json + sae.safetensors, "
                            "dictionary_learning config.json + ae.pt)")
    if len(folders) < 2:
        raise UserError(f"found {len(folders)} SAE folder(s) in {', '.join(map(str, paths))}: one folder is one seed, give at "
                        "least two (or a run directory)")
    return folders


def load_given_acts(acts: Optional[Path], d_in: int) -> Optional[GivenActs]:
    """--acts read as [N, d_in] activations (None when not given)."""
    if acts is None:
        return None
    return GivenActs(read_activations(acts, d_in), str(acts))


def common_parent(folders: list[Path]) -> Path:
    """The deepest folder above every SAE folder (the default output folder of folder analysis)."""
    common = Path(os.path.commonpath([str(f.resolve()) for f in folders]))
    return common.parent if common in {f.resolve() for f in folders} else common


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
