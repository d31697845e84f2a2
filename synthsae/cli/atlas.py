"""`synthsae atlas`: the cross-seed feature atlas of a run (synthetic or real) or of SAE folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from synthsae.cli.analyze import run_one
from synthsae.cli.common import UserError, check_device, console, user_errors
from synthsae.cli.folders import check_metrics_target, count_seeds, open_input
from synthsae.cli.options import Device, Format
from synthsae.cli.show import print_atlas
from synthsae.metrics.atlas import AtlasConfig
from synthsae.metrics.atlas_run import ATLAS_FILE, ATLAS_JSON


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
    if out is not None and len(paths) == 1 and fmt is None and (paths[0] / "real_config.json").is_file():
        raise UserError("--out: a real run's atlas is one of its stages and is written into the run folder")
    src = open_input(paths, fmt, None, out, device)
    if src.kind == "real":
        from real.stages import open_real

        src = open_real(src.run_dir, src.device)  # names an unfinished training in one line
    check_metrics_target(src.metrics)
    acfg = AtlasConfig(overlap=overlap, energy=energy, min_seeds=min_seeds, max_rank=max_rank)
    n_seeds = len(src.paths) if src.kind == "folders" else count_seeds(src.run_dir)
    if min_seeds and not 2 <= min_seeds <= n_seeds:
        raise UserError(f"--min-seeds = {min_seeds}: must be 0 (half the seeds, at least 2) or between 2 and the "
                        f"{n_seeds} seeds given")
    res, _ = run_one(src, "atlas", acfg)
    t, j = src.out / ATLAS_FILE, src.out / ATLAS_JSON
    if as_json:
        typer.echo(j.read_text())
        return
    print_atlas(res)
    console.print(f"wrote {t}, {j} and {src.metrics} (key \"atlas\")", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `atlas` to app."""
    app.command("atlas")(user_errors(atlas_cmd))
