"""The analysis stage: stability, truth recovery and subspaces of every seed of a Source, into metrics.json."""

from __future__ import annotations

import dataclasses
from pathlib import Path
import torch
from torch import Tensor

from synthsae.config import AnalysisConfig, validate_analysis
from synthsae.fileio import atomic_save_safetensors
from synthsae.results import AnalysisResult
from synthsae.source import Source

METRICS_KEY = "analysis"
LATENTS_FILE = "analysis_latents.safetensors"


def analysis_of(src: Source, cfg: AnalysisConfig | None = None) -> tuple[AnalysisResult, dict[str, Tensor]]:
    """Stability, truth recovery (with a truth), clusters and span reproducibility of every seed of a run; the
    frequencies are measured on the truth's eval stream, else read from the seeds' sparsity files."""
    from synthsae import distributed
    from synthsae.metrics.analyze import analyze_with_latents

    cfg = cfg or src.config.analysis
    validate_analysis(cfg)
    sae = src.sae
    freq, how = src.frequency(cfg.eval_tokens)
    with distributed.sharing_pairs():  # torchrun: the seed pairs of the stability scores are split over the ranks
        res, per = analyze_with_latents(sae.W_dec.detach(), sae.W_enc.detach(), freq, src.truth, cfg, src.dev, how)
    res.settings.run_dir, res.settings.variant = str(src.run_dir), src.variant
    return res, per


def analyze_run(run_dir: str | Path, cfg: AnalysisConfig | None = None,
                device: str | None = None) -> tuple[AnalysisResult, dict[str, Tensor]]:
    """analysis_of a synthetic run folder (config's [analysis] section unless cfg is given)."""
    return analysis_of(Source("run", Path(run_dir), run_dir=Path(run_dir), device=device), cfg)


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


def saved_stability(metrics: Path) -> Tensor | None:
    """Per-latent stability [S, m] saved beside a metrics.json by the analysis (a resumed run), None when absent."""
    from safetensors.torch import load_file

    path = metrics.parent / LATENTS_FILE
    return load_file(str(path))["stability"] if path.is_file() else None

