"""Where folder analysis (`analyze` / `pool` / `atlas` on SAE folders) writes: a folder that is ours.

Ours = new, or carrying ANALYSIS_MARKER (planted on the first write), or a synthsae run folder. A folder that is
not ours is used only while it holds none of the names we write, so a user's own report.md is never replaced;
no output ever goes into (or under) an input SAE folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from synthsae.fileio import BadFileError, check_regular, check_writable_dir

ANALYSIS_MARKER = ".synthsae-analysis"  # a folder that synthsae's folder analysis writes into
# what folder analysis writes beside metrics.json (report, figures, per-latent numbers, pools, atlas)
OUTPUT_NAMES = ("metrics.json", "analysis_latents.safetensors", "report.md", "report.html", "figures", "pooled",
                "atlas.json", "atlas.safetensors")


def is_ours(folder: Path) -> bool:
    from synthsae.rundir import is_run_folder

    return (folder / ANALYSIS_MARKER).is_file() or is_run_folder(folder)


def analysis_folder(inputs: list[Path], out: Path | None, default: Path) -> Path:
    """The folder that receives metrics.json and the rest (checked, not yet created): `out` (a folder, or a path
    ending in metrics.json) or `default`; a one-line BadFileError when it is not ours to write into."""
    if out is not None and out.suffix == ".json":
        if out.name != "metrics.json":
            raise BadFileError(f"--out = {str(out)!r}: name the output folder (or FOLDER/metrics.json); the report, "
                               "figures and per-latent numbers are written beside metrics.json")
        folder = out.parent
    else:
        folder = out if out is not None else default
    what = "--out" if out is not None else "output folder"
    check_writable_dir(folder, what)
    real = Path(os.path.realpath(folder))
    for f in inputs:
        src = Path(os.path.realpath(f))
        if real == src or src in real.parents:
            raise BadFileError(f"{what} = {str(folder)!r}: is inside the input SAE folder {str(f)!r}; inputs are "
                               "never written, pick a folder outside them")
    for name in OUTPUT_NAMES:
        check_regular(folder / name, what)
    if folder.is_dir() and not is_ours(folder):
        taken = [n for n in OUTPUT_NAMES if os.path.lexists(folder / n)]
        if taken:
            raise BadFileError(f"{what} = {str(folder)!r}: holds {taken[0]} that synthsae did not write (no "
                               f"{ANALYSIS_MARKER}); it is never replaced: pass --out NEW_FOLDER")
    return folder


def claim(folder: Path) -> None:
    """Create the folder (parents too) and plant the marker, so later analyses may update what we wrote there."""
    folder.mkdir(parents=True, exist_ok=True)
    from synthsae.rundir import is_run_folder

    if not is_run_folder(folder):
        (folder / ANALYSIS_MARKER).touch(exist_ok=True)
