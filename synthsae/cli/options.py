"""Every option that more than one command takes, declared once (name, type, help) as a typer Annotated alias.

Lists of allowed values come from the library (presets, variants, match rules, formats, dtypes, seed modes), so the
help cannot drift from what the code accepts. A command gives the default as its parameter's default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from synthsae.config import MATCH_RULES, PRESETS, AnalysisConfig
from synthsae.loaders import FORMATS
from synthsae.sae import known_names


def one_of(names) -> str:
    """'a, b or c' for a help text."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def preset_defaults(section: str, name: str) -> str:
    """'(preset default: tiny 3, default 8, ...)' for an option's help text."""
    vals = {p: getattr(getattr(f(), section), name) for p, f in PRESETS.items()}
    if len(set(map(str, vals.values()))) == 1:
        return f"(preset default: {next(iter(vals.values()))})"
    return "(preset default: " + ", ".join(f"{p} {v}" for p, v in vals.items()) + ")"


# ----------------------------------------------------------------------------------------------- config of a run

Preset = Annotated[Optional[str], typer.Option("--preset", help=f"named preset: {', '.join(PRESETS)} (default: default)")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="TOML config file (names its preset inside)")]
Variant = Annotated[Optional[str], typer.Option(
    "--variant", help=f"SAE variant: {', '.join(known_names())} or a plug-in {preset_defaults('sae', 'variant')}")]
Seeds = Annotated[Optional[int], typer.Option("--seeds", help="number of seeds S " + preset_defaults("train", "seeds"))]
DSae = Annotated[Optional[int], typer.Option("--d-sae", help="latents per SAE " + preset_defaults("sae", "d_sae"))]
K = Annotated[Optional[int], typer.Option(
    "--k", help="active latents per token, TopK family (blocktopk: active groups) " + preset_defaults("sae", "k"))]
GroupSize = Annotated[Optional[int], typer.Option("--group-size", help="blocktopk: latents per group")]
Steps = Annotated[Optional[int], typer.Option("--steps", help="training steps " + preset_defaults("train", "steps"))]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="tokens per step " + preset_defaults("train", "batch_size"))]
Lr = Annotated[Optional[float], typer.Option("--lr", help="peak learning rate " + preset_defaults("train", "lr"))]
TrainDevice = Annotated[Optional[str], typer.Option(
    "--device", help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)")]
Dtype = Annotated[Optional[str], typer.Option(
    "--dtype", help="training precision: float32; bfloat16, float16 or tf32 = low-precision encoder matmul, float32 "
                    "weights and optimizer; float64")]

# ----------------------------------------------------------------------------------------------- analysis commands

Device = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu, cuda or cuda:N")]
Tau = Annotated[Optional[float], typer.Option("--tau", help=f"match threshold (default: the run's analysis.tau, {AnalysisConfig().tau:g})")]
Match = Annotated[Optional[str], typer.Option("--match", help=f"match rule: {one_of(MATCH_RULES)}")]
Format = Annotated[Optional[str], typer.Option(
    "--format", help=f"SAE folder format: {one_of(FORMATS)} (default: detected)")]
AllowMissingSeeds = Annotated[bool, typer.Option(
    "--allow-missing-seeds", help="go on when some of a run's seeds/seed_<k> folders are missing")]
AsJson = Annotated[bool, typer.Option("--json", help="print the result as JSON instead of tables")]
Quiet = Annotated[bool, typer.Option("--quiet", help="no progress bars")]
