"""`synthsae atlas`: the cross-seed feature atlas of a run (synthetic or real) or of SAE folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from real.atlas import atlas_of_real_run, is_real_run
from synthsae.cli.common import UserError, check_device, console, user_errors
from synthsae.cli.folders import check_metrics_target, check_paths, common_parent, count_seeds, seed_folders
from synthsae.cli.options import Device, Format
from synthsae.cli.show import print_atlas
from synthsae.metrics.atlas import AtlasConfig
from synthsae.metrics.atlas_run import ATLAS_FILE, ATLAS_JSON, atlas_of, write_atlas
from synthsae.metrics.run_analysis import is_run_dir
from synthsae.outdir import analysis_folder, claim


def atlas_cmd(
    paths: list[Path] = typer.Argument(..., help="a run directory (synthetic or `synthsae real run`), or SAE folders one per seed (SAELens, sparsify or dictionary_learning; quoted globs and parent folders too)"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for atlas.safetensors / atlas.json / metrics.json (default: the run folder, or the SAE folders' common parent; new or synthsae's, never an input)"),
    fmt: Format = None,
    overlap: float = typer.Option(0.9, "--overlap", help="principal-angle overlap at which a seed holds a feature's span"),
    energy: float = typer.Option(0.5, "--energy", help="energy rule: a subspace keeps the directions spanned by this share of its seeds (docs/atlas.md)"),
    min_seeds: int = typer.Option(0, "--min-seeds", help="seeds a feature must be found in (0 = half the seeds, at least 2)"),
    max_rank: int = typer.Option(0, "--max-rank", help="highest rank of a subspace feature (0 = d // 4)"),
    device: Device = "auto",
    as_json: bool = typer.Option(False, "--json", help="print atlas.json instead of a summary"),
) -> None:
    """Cross-seed feature atlas: stable latents, reproducible subspaces and the irreproducible remainder.

    Stored as metrics.json's "atlas" stage (read by `synthsae report` / `synthsae real report`) and as
    atlas.json + atlas.safetensors. On a real run it also splices the features and the remainder into the model.
    """
    check_device(device)
    check_paths(paths)
    real = len(paths) == 1 and fmt is None and is_real_run(paths[0])
    run = real or (len(paths) == 1 and fmt is None and is_run_dir(paths[0]))
    folders = paths if run else seed_folders(paths, fmt)  # globs, parent folders, all three formats
    if real and out is not None:
        raise UserError("--out: a real run's atlas is one of its stages and is written into the run folder")
    target = (out or paths[0]) if run else analysis_folder(folders, out, common_parent(folders))
    check_metrics_target(target / "metrics.json")
    acfg = AtlasConfig(overlap=overlap, energy=energy, min_seeds=min_seeds, max_rank=max_rank)
    n_seeds = count_seeds(paths[0]) if run else len(folders)
    if min_seeds and not 2 <= min_seeds <= n_seeds:
        raise UserError(f"--min-seeds = {min_seeds}: must be 0 (half the seeds, at least 2) or between 2 and the "
                        f"{n_seeds} seeds given")
    if real:
        res = atlas_of_real_run(paths[0], acfg, device)
    else:
        res, atlas = atlas_of(folders, acfg, device, fmt=fmt)
        if not run:
            claim(target)
        write_atlas(target, res, atlas)
    t, j = target / ATLAS_FILE, target / ATLAS_JSON
    if as_json:
        typer.echo(j.read_text())
        return
    print_atlas(res)
    console.print(f"wrote {t}, {j} and {target / 'metrics.json'} (key \"atlas\")", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `atlas` to app."""
    app.command("atlas")(user_errors(atlas_cmd))
