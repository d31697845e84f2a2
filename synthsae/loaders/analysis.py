"""Where SAE folders from any library enter the study: analysis (weights only, or with given activations),
ablation and pooling on a loaded stack, plus the provenance record (`SourcesResult`) the report shows.

Without activations only the weights are used (stability, clusters, span reproducibility); frequency comes from the
library's own sparsity file where it keeps one and is "not measured" otherwise. With activations (`--acts`) the
frequency, FVU and the ablation are measured on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from synthsae.config import AnalysisConfig
from synthsae.loaders import LoadedStack
from synthsae.results import AblationResult, AnalysisResult, GivenActivations, PoolingResult, SeedSource, SourcesResult
from synthsae.source import folder_run_config

SOURCES_KEY = "sources"  # metrics.json key of the provenance record
NOT_MEASURED = "not measured (no sparsity file in the folders and no --acts)"


@dataclass
class GivenActs:
    """Activations the user gave, with where they came from."""

    x: Float[Tensor, "n d"]
    path: str

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


@dataclass
class FolderResults:
    """Everything measured on a stack of loaded folders, ready for metrics.json."""

    analysis: AnalysisResult
    per_latent: dict[str, Tensor]
    sources: SourcesResult
    ablation: AblationResult | None = None


def sources_record(stack: LoadedStack, frequency_source: str | None, acts: GivenActs | None = None,
                   fvu: list[float] | None = None, l0: list[float] | None = None) -> SourcesResult:
    """Provenance of every seed plus where frequencies and activations came from (metrics.json "sources")."""
    seeds = [SeedSource(path=p.path, format=p.format, library=p.library, version=p.version, architecture=p.architecture,
                        variant=p.variant, d_in=p.d_in, d_sae=p.d_sae, details={k: str(v) for k, v in p.details.items()})
             for p in stack.provenance]
    libs = sorted({f"{p.library} {p.version}" if p.version else p.library for p in stack.provenance})
    given = None if acts is None else GivenActivations(path=acts.path, n_tokens=acts.n, fvu_per_seed=list(fvu or []),
                                                       l0_per_seed=list(l0 or []))
    return SourcesResult(folders=seeds, libraries=libs, frequency_source=frequency_source or NOT_MEASURED, activations=given)


def analyze_stack(stack: LoadedStack, cfg: AnalysisConfig, device: torch.device | str = "cpu",
                  acts: GivenActs | None = None, ablate: bool = True, progress: bool = False) -> FolderResults:
    """Cross-seed analysis of loaded SAEs; with activations also frequency, FVU and (when `ablate`) the ablation."""
    from synthsae.metrics.analyze import analyze_with_latents
    from synthsae.pooling import evaluate

    sae = stack.sae.to(device)
    freq, source, fvu, l0 = stack.frequency, stack.frequency_source, None, None
    if acts is not None:
        ev = evaluate(sae, acts.x.to(device))
        freq = ev["freq"].cpu()
        fvu, l0 = (1.0 - ev["ev"]).tolist(), ev["l0"].tolist()
        source = f"measured on {acts.n} given activations ({acts.path})"
    res, per = analyze_with_latents(sae.W_dec.detach(), sae.W_enc.detach(), freq, None, cfg, device, source)
    folders = [p.path for p in stack.provenance]
    res.settings.folders, res.settings.variant = folders, sae.variant
    out = FolderResults(res, per, sources_record(stack, source, acts, fvu, l0))
    if acts is not None and ablate:
        from synthsae.metrics.ablation import ablation_study

        from synthsae.metrics.ablation import AblationConfig

        out.ablation = ablation_study(sae, None, folder_run_config(stack, cfg), AblationConfig(progress=progress),
                                      x=acts.x.to(device), stability=per["stability"].to(device))
        out.ablation.variant = sae.variant
        out.sources.ablation_folders = folders
    return out


def pool_stack(stack: LoadedStack, acts: GivenActs, cfg: AnalysisConfig, out_dir: str | Path, settings=None, *,
               device: torch.device | str = "cpu") -> PoolingResult:
    """pooling_study on loaded SAEs (settings: a pooling.PoolConfig): refit on the first half of the activations,
    judge on the second half."""
    from synthsae.pooling import pooling_study

    x = acts.x
    if x.shape[0] < 4:
        from synthsae.io import RunFileError

        raise RunFileError(f"{acts.path}: pooling needs at least 4 activation vectors (half to refit, half to judge)")
    h = x.shape[0] // 2
    fit, judge = x[:h].to(device), x[h:].to(device)
    rc = folder_run_config(stack, cfg)
    rc.train.batch_size = min(rc.train.batch_size, fit.shape[0])

    def batches(seed: int):
        gen = torch.Generator().manual_seed(seed)
        bs = rc.train.batch_size
        while True:
            perm = torch.randperm(fit.shape[0], generator=gen).to(fit.device)
            for i in range(0, fit.shape[0] - bs + 1, bs):
                yield fit[perm[i : i + bs]]

    return pooling_study((rc, stack.sae.to(device), None), settings, x=judge, batches=batches, out_dir=out_dir)


def _read_sources_and_drop_stale(path: Path, folders: list[str], keep_pooling: bool = False) -> SourcesResult | None:
    """The stored provenance; ablation / pooling results of other SAEs (another set of folders, or a training run's)
    are removed, so a report never shows numbers of SAEs other than the ones it names."""
    import json

    from synthsae.fileio import atomic_write_json
    from synthsae.metrics_file import read_metrics

    if not path.is_file():
        return None
    old = read_metrics(path)  # one-line MetricsError when corrupt: never overwritten silently
    src = old.sources
    stale = []
    if old.ablation is not None and (src is None or src.ablation_folders != folders):
        stale.append("ablation")
    if old.pooling is not None and not keep_pooling and (src is None or src.pooling_folders != folders):
        stale.append("pooling")
    if stale:
        raw = json.loads(path.read_text())
        atomic_write_json(path, {k: v for k, v in raw.items() if k not in stale})
    return src


def write_folder_results(metrics_path: str | Path, results: FolderResults) -> Path:
    """Analysis, provenance and (when measured) ablation into metrics.json, each under its own key."""
    from synthsae.metrics.run_analysis import write_analysis
    from synthsae.metrics_file import write_stage

    path = Path(metrics_path)
    folders = results.analysis.settings.folders or []
    old = _read_sources_and_drop_stale(path, folders)
    if old is not None and old.pooling_folders == folders:
        results.sources.pooling_folders = folders
    if results.ablation is None and old is not None and old.ablation_folders == folders:
        results.sources.ablation_folders = folders  # an earlier --acts ablation of the same folders stays
    write_analysis(path, results.analysis, results.per_latent)
    if results.ablation is not None:
        write_stage(path, "ablation", results.ablation)
    write_stage(path, SOURCES_KEY, results.sources)
    return path


def write_pooling(metrics_path: str | Path, stack: LoadedStack, result: PoolingResult) -> Path:
    """The pooling study of loaded folders into metrics.json, with the folders recorded in the provenance."""
    from synthsae.metrics_file import write_stage

    path = Path(metrics_path)
    folders = [p.path for p in stack.provenance]
    src = _read_sources_and_drop_stale(path, folders, keep_pooling=True)
    if src is None or [f.path for f in src.folders] != folders:
        src = sources_record(stack, stack.frequency_source)
    src.pooling_folders = folders
    write_stage(path, "pooling", result)
    write_stage(path, SOURCES_KEY, src)
    return path
