"""Analyse a run directory or a list of SAE folders from disk and write the result into metrics.json."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor

from synthsae.config import AnalysisConfig, validate_analysis
from synthsae.device import resolve_device
from synthsae.fileio import atomic_save_safetensors
from synthsae.metrics.analyze import analyze_with_latents, measure_frequency
from synthsae.results import AnalysisResult

EVAL_DATA_SEED_OFFSET = 1_000_003  # frequencies are measured on a stream the SAEs never trained on
METRICS_KEY = "analysis"
LATENTS_FILE = "analysis_latents.safetensors"


def is_run_dir(path: Path) -> bool:
    """A run directory holds config.toml and seeds/."""
    return (path / "config.toml").is_file() and (path / "seeds").is_dir()


def analyze_run(
    run_dir: str | Path, cfg: AnalysisConfig | None = None, device: str | None = None
) -> tuple[AnalysisResult, dict[str, Tensor]]:
    """Analyse every seed of a run (config's [analysis] section unless cfg is given); frequencies are measured on
    analysis.eval_tokens fresh samples from the truth, else read from sparsity.safetensors."""
    from synthsae.io import load_run, seed_folders

    run_dir = Path(run_dir)
    run_cfg, sae, truth = load_run(run_dir)
    cfg = cfg or run_cfg.analysis
    validate_analysis(cfg)
    dev = resolve_device(device)
    sae = sae.to(dev)
    freq, source = None, None
    if truth is not None:
        truth = truth.to(dev)
        seed = run_cfg.train.data_seed + EVAL_DATA_SEED_OFFSET
        freq = measure_frequency(sae, truth, cfg.eval_tokens, seed)
        source = f"measured on {cfg.eval_tokens} fresh samples from the truth (data seed {seed})"
    else:
        freq, source = seed_sparsity(seed_folders(run_dir))
    res, per = analyze_with_latents(sae.W_dec.detach(), sae.W_enc.detach(), freq, truth, cfg, dev, source)
    res.settings.run_dir, res.settings.variant = str(run_dir), run_cfg.sae.variant
    return res, per


def seed_sparsity(folders: list[Path]) -> tuple[Tensor | None, str | None]:
    """Firing frequencies from sparsity.safetensors (log10; the 1e-10 floor reads back as dead) when every folder has one."""
    if not folders or not all((f / "sparsity.safetensors").is_file() for f in folders):
        return None, None
    from synthsae.io import load_sparsity
    from synthsae.metrics.frequency import frequency_from_log10

    return frequency_from_log10(load_sparsity(folders).cpu()), "sparsity.safetensors (training; at the log10 floor = dead)"


def write_analysis(path: str | Path, res: AnalysisResult, per_latent: dict[str, Tensor] | None = None) -> Path:
    """Merge `res` into metrics.json under "analysis" (other keys kept), atomically; per-latent tensors beside it."""
    from synthsae.metrics_file import write_stage

    path = Path(path)
    write_stage(path, METRICS_KEY, res)
    if per_latent:
        atomic_save_safetensors({k: v.contiguous() for k, v in per_latent.items()}, path.parent / LATENTS_FILE,
                                metadata={"schema": res.schema})
    return path


def with_overrides(cfg: AnalysisConfig, tau: float | None = None, match: str | None = None) -> AnalysisConfig:
    """A copy of cfg with the command-line overrides applied (validated)."""
    new = dataclasses.replace(cfg, tau=cfg.tau if tau is None else tau, match=cfg.match if match is None else match)
    validate_analysis(new)
    return new
