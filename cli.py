"""The `synthsae` command line: thin wrappers over the library, one command per step of the study.

Errors in user input (flags, config files, run folders) print one line and exit with code 2.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from synthsae.config import ConfigError, RunConfig, preset, validate

app = typer.Typer(
    help="Seed dependence in sparse autoencoders: train SAEs under many seeds, measure which latents come back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
truth_app = typer.Typer(help="Inspect and sample the planted ground-truth model.", no_args_is_help=True)
app.add_typer(truth_app, name="truth")

console = Console()
err_console = Console(stderr=True)


class UserError(Exception):
    """Bad input from the user (a flag, a file, a folder): reported in one line, exit code 2."""


def user_errors(fn: Callable) -> Callable:
    """Turn ConfigError / UserError / missing files into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, UserError, FileNotFoundError, FileExistsError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            err_console.print(f"error: {msg}", markup=False, highlight=False)
            raise typer.Exit(code=2) from None

    return wrapper


def resolve_config(preset_name: Optional[str], config_file: Optional[Path]) -> RunConfig:
    """A config from a TOML file or a named preset (the file wins; its own `preset` key picks its base)."""
    from synthsae import config as C

    if config_file is not None:
        if preset_name is not None:
            raise UserError("--preset and --config are exclusive: give one (a config file names its preset inside)")
        return C.load(config_file)
    return validate(preset(preset_name or "default"))


# ----------------------------------------------------------------------------------------------- truth


@truth_app.command("describe")
@user_errors
def truth_describe(
    preset_name: Optional[str] = typer.Option(None, "--preset", help="named preset (tiny, default, paper, synthbench16k)"),
    config_file: Optional[Path] = typer.Option(None, "--config", help="TOML config file"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Components by rank, expected L0 and superposition ratio (total rank / d) of a truth model."""
    from synthsae.truth import describe

    cfg = resolve_config(preset_name, config_file)
    info = describe(cfg.truth)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    print_truth_description(cfg.preset, info)


def print_truth_description(name: str, info: dict) -> None:
    table = Table(title=f"truth '{name}': d = {info['d']}, {info['n_components']} components")
    for col in ("rank", "atoms", "subspaces", "frames", "expected L0"):
        table.add_column(col, justify="right")
    for row in info["by_rank"]:
        table.add_row(str(row["rank"]), str(row["atoms"]), str(row["subspaces"]), str(row["frames"]), f"{row['expected_l0']:.3f}")
    console.print(table)
    console.print(
        f"expected L0 {info['expected_l0']:.2f} (target {info['target_l0']:g}); total rank {info['total_rank']}; "
        f"superposition ratio (total rank / d) {info['superposition_ratio']:.2f}"
    )
    if info["blocks"]:
        n_orth = sum(b["orthogonal"] for b in info["blocks"])
        console.print(
            f"{len(info['blocks'])} planted subspaces ({n_orth} orthogonal to all else, "
            f"{len(info['blocks']) - n_orth} in superposition); firing probabilities "
            f"{min(b['prob'] for b in info['blocks']):.3f}..{max(b['prob'] for b in info['blocks']):.3f}"
        )


@truth_app.command("sample")
@user_errors
def truth_sample(
    n: int = typer.Option(..., "--n", help="number of samples", min=1),
    out: Path = typer.Option(..., "--out", help="output .safetensors file"),
    preset_name: Optional[str] = typer.Option(None, "--preset", help="named preset"),
    config_file: Optional[Path] = typer.Option(None, "--config", help="TOML config file"),
    seed: int = typer.Option(0, "--seed", help="data seed of the stream", min=0),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Write n samples (x, which components fired, their magnitudes) plus the truth tensors to a file."""
    from synthsae.fileio import atomic_save_safetensors
    from synthsae.truth import build_truth, make_generator, sample

    if out.suffix != ".safetensors":
        raise UserError(f"--out = {str(out)!r}: must end in .safetensors")
    if out.exists() and not force:
        raise UserError(f"--out = {str(out)!r}: exists; pass --force to overwrite")
    cfg = resolve_config(preset_name, config_file)
    truth = build_truth(cfg.truth)
    s = sample(truth, n, make_generator(seed))
    tensors = {"x": s.x, "active": s.active.to(torch_uint8()), "magnitude": s.magnitude, "block_coords": s.block_coords,
               "frame_choice": s.frame_choice}
    tensors.update({f"truth.{k}": v for k, v in truth.tensors().items()})
    from synthsae.config import to_toml

    atomic_save_safetensors(tensors, out, metadata={"config": to_toml(cfg), "data_seed": str(seed)})
    console.print(f"wrote {n} samples of d = {truth.d} to {out}")


def torch_uint8():
    import torch

    return torch.uint8


# ----------------------------------------------------------------------------------------------- train (trainer issue)
# ----------------------------------------------------------------------------------------------- analyze (metrics issue)
# ----------------------------------------------------------------------------------------------- ablate / pool (pooling issue)
# ----------------------------------------------------------------------------------------------- run / report / compare


@app.command("run")
@user_errors
def run(
    preset_name: Optional[str] = typer.Option(None, "--preset", help="named truth preset (default: default)"),
    config_file: Optional[Path] = typer.Option(None, "--config", help="TOML config file"),
) -> None:
    """The whole study on the embedded default: train S seeds, analyse, ablate, pool, report."""
    cfg = resolve_config(preset_name, config_file)
    from synthsae.truth import describe

    print_truth_description(cfg.preset, describe(cfg.truth))
    console.print(
        f"will train {cfg.train.seeds} seeds of a {cfg.sae.variant} SAE (d_sae = {cfg.sae.d_sae}, k = {cfg.sae.k}) "
        f"for {cfg.train.steps} steps, then analyse, ablate, pool and report (pipeline not wired yet)"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
