"""The RunConfig of `train` / `run` / `truth`: a preset or a TOML file, the flags on top, or a resumed run's own."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

from synthsae import config as C
from synthsae import distributed
from synthsae.cli.common import UserError
from synthsae.config import RunConfig, preset, validate, validate_sae, validate_train
from synthsae.device import pick_device

SECTION_OF = {"variant": "sae", "d_sae": "sae", "k": "sae", "group_size": "sae", "seeds": "train", "steps": "train",
              "batch_size": "train", "lr": "train", "device": "train", "vary_data": "train", "data_seed": "train",
              "dtype": "train"}  # flag -> config section it overrides


def resolve_config(preset_name: Optional[str], config_file: Optional[Path]) -> RunConfig:
    """A config from a TOML file or a named preset (the file wins; its own `preset` key picks its base)."""
    if config_file is not None:
        if preset_name is not None:
            raise UserError("--preset and --config are exclusive: give one (a config file names its preset inside)")
        return C.load(config_file)
    return validate(preset(preset_name or "default"))


def apply_train_flags(cfg: RunConfig, **flags) -> RunConfig:
    """Override config fields with the flags that were given (None = not given), then validate."""
    for name, value in flags.items():
        if value is None or (name == "vary_data" and value is False):
            continue
        setattr(getattr(cfg, SECTION_OF[name]), name, value)
    if flags.get("seeds") is not None and cfg.train.init_seeds and len(cfg.train.init_seeds) != cfg.train.seeds:
        cfg.train.init_seeds = []  # --seeds N replaces the config's explicit seed list by 0..N-1
    validate_sae(cfg.sae, cfg.truth.d)
    validate_train(cfg.train)
    pick_device(cfg.train.device)  # CUDA asked for but absent: fail now, before any folder is touched
    return cfg


def run_config(out: Optional[Path], resume: bool, preset_name: Optional[str], config_file: Optional[Path], **flags) -> RunConfig:
    """The config of a run: from --preset / --config and the flags, or with --resume the run's own config.toml.

    With --resume every option given must agree with the saved config (only --lr and --device may change);
    a disagreement is refused naming the fields, so a resume never silently becomes a different run.
    """
    saved_path = out / "config.toml" if out is not None else None
    if not resume or saved_path is None or not saved_path.is_file():
        return apply_train_flags(resolve_config(preset_name, config_file), **flags)
    saved = C.load(saved_path)
    base = resolve_config(preset_name, config_file) if (preset_name or config_file) else copy.deepcopy(saved)
    cfg = apply_train_flags(base, **flags)
    diffs = [d for d in C.differences(saved, cfg) if d[0] not in ("train.lr", "train.device")]
    if diffs:
        raise UserError(f"--resume: cannot resume with options that differ from the run's config.toml ({C.describe_differences(diffs)}); "
                        f"`--resume --out {out}` alone resumes it as it was started, --force starts it over")
    return cfg


def check_world(cfg: RunConfig) -> None:
    """torchrun: refuse more processes than seeds before anything is written (every rank trains at least one)."""
    world = distributed.env_world().world
    if world > cfg.train.seeds:
        raise UserError(f"train.seeds = {cfg.train.seeds}: fewer seeds than torchrun processes ({world}); start at most "
                        f"{cfg.train.seeds} processes (--nproc-per-node) or give more --seeds")
