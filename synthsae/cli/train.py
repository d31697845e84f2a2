"""`synthsae train`: S seeds of one SAE variant in one batched loop."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from synthsae import distributed
from synthsae.cli.common import UserError, diverged_exit, interrupted_exit, user_errors
from synthsae.cli.options import (BatchSize, ConfigFile, DSae, Dtype, GroupSize, K, Lr, Preset, Quiet, Seeds, Steps,
                                  TrainDevice, Variant)
from synthsae.cli.runconfig import check_world, run_config
from synthsae.cli.show import print_train_summary
from synthsae.fileio import check_writable_dir
from synthsae.checkpoint import load_train_summary
from synthsae.loop import TrainingDiverged
from synthsae.train import train_run


def train(
    out: Path = typer.Option(..., "--out", help="run folder to write (config.toml, truth.safetensors, seeds/seed_<k>/)"),
    preset_name: Preset = None,
    config_file: ConfigFile = None,
    variant: Variant = None,
    seeds: Seeds = None,
    d_sae: DSae = None,
    k: K = None,
    group_size: GroupSize = None,
    steps: Steps = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    data_seed: Optional[int] = typer.Option(None, "--data-seed", help="seed of the data stream"),
    vary_data: bool = typer.Option(False, "--vary-data", help="give seed s its own data stream (data_seed + s)"),
    device: TrainDevice = None,
    dtype: Dtype = None,
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its checkpoint, with its own config.toml"),
    force: bool = typer.Option(False, "--force", help="overwrite a finished (or unfinished) run in --out"),
    quiet: Quiet = False,
) -> None:
    """Train S seeds of one SAE variant in one batched loop; each seed is saved as a SAELens folder.

    --resume continues from the checkpoint with the run's own config.toml (options given with it must agree;
    --lr may change). Ctrl-C writes a checkpoint after the current step."""
    if resume and force:
        raise UserError("--resume and --force are exclusive: resume keeps the run, force starts it over")
    check_writable_dir(out, "--out")
    cfg = run_config(out, resume, preset_name, config_file, variant=variant, seeds=seeds, d_sae=d_sae, k=k,
                     group_size=group_size, steps=steps, batch_size=batch_size, lr=lr, device=device,
                     vary_data=vary_data, data_seed=data_seed, dtype=dtype)
    check_world(cfg)
    try:
        train_run(cfg, out, resume=resume, force=force, progress=not quiet)
    except TrainingDiverged as exc:
        diverged_exit(exc, "train", out)
    except KeyboardInterrupt:
        interrupted_exit("train", out)
    if distributed.current().is_main:  # torchrun: rank 0 reports for the run
        print_train_summary(cfg, load_train_summary(out), out)


def register(app: typer.Typer) -> None:
    """Add `train` to app."""
    app.command("train")(user_errors(train))
