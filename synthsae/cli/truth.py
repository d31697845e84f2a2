"""`synthsae truth describe | sample`: inspect and sample the planted ground-truth model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer

from synthsae.cli.common import UserError, console, new_app, user_errors
from synthsae.cli.options import AsJson, ConfigFile, Preset
from synthsae.cli.runconfig import resolve_config
from synthsae.cli.show import print_truth_description
from synthsae.config import to_toml
from synthsae.fileio import atomic_save_safetensors, check_writable_file
from synthsae.memory import check_fits, sample_bytes, truth_bytes
from synthsae.truth import build_truth, describe, make_generator, sample


def truth_describe(preset_name: Preset = None, config_file: ConfigFile = None, as_json: AsJson = False) -> None:
    """Components by rank, expected L0 and superposition ratio (total rank / d) of a truth model."""
    cfg = resolve_config(preset_name, config_file)
    check_fits(truth_bytes(cfg.truth), f"building the truth (truth.d = {cfg.truth.d})", "lower truth.d")
    info = describe(cfg.truth)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    print_truth_description(cfg.preset, info)


def truth_sample(
    n: int = typer.Option(..., "--n", help="number of samples", min=1),
    out: Path = typer.Option(..., "--out", help="output .safetensors file"),
    preset_name: Preset = None,
    config_file: ConfigFile = None,
    seed: int = typer.Option(0, "--seed", help="data seed of the stream", min=0),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Write n samples (x, which components fired, their magnitudes) plus the truth tensors to a file."""
    if out.suffix != ".safetensors":
        raise UserError(f"--out = {str(out)!r}: must end in .safetensors")
    if out.exists() and not force:
        raise UserError(f"--out = {str(out)!r}: exists; pass --force to overwrite")
    check_writable_file(out, "--out")
    cfg = resolve_config(preset_name, config_file)
    check_fits(truth_bytes(cfg.truth) + 2 * sample_bytes(cfg.truth, n), f"--n = {n} samples of d = {cfg.truth.d}",
               "lower --n (or write several files with different --seed)")
    truth = build_truth(cfg.truth)
    s = sample(truth, n, make_generator(seed))
    tensors = {"x": s.x, "active": s.active.to(torch.uint8), "magnitude": s.magnitude, "block_coords": s.block_coords,
               "frame_choice": s.frame_choice}
    tensors.update({f"truth.{k}": v for k, v in truth.tensors().items()})
    atomic_save_safetensors(tensors, out, metadata={"config": to_toml(cfg), "data_seed": str(seed)})
    console.print(f"wrote {n} samples of d = {truth.d} to {out}")


def register(app: typer.Typer) -> None:
    """Add the `truth` group to app."""
    truth_app = new_app("Inspect and sample the planted ground-truth model.")
    truth_app.command("describe")(user_errors(truth_describe))
    truth_app.command("sample")(user_errors(truth_sample))
    app.add_typer(truth_app, name="truth")
