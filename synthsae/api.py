"""The short public API that `synthsae/__init__.py` exports: each function is one call into the pipeline."""

from __future__ import annotations

import os
from pathlib import Path

from synthsae.config import AnalysisConfig, RunConfig


def load_saes(paths: list[str | os.PathLike[str]], fmt: str | None = None):
    """SAE folders of any supported format (SAELens, sparsify, dictionary_learning; folders, globs, parent folders),
    one per seed, stacked: a LoadedStack with `.sae` [S seeds], stored frequencies and provenance."""
    from synthsae.loaders import expand_paths, load_stack

    return load_stack(expand_paths([Path(p) for p in paths]), fmt)


def train_seeds(cfg: RunConfig, out: str | os.PathLike[str], *, resume: bool = False, force: bool = False,
          progress: bool = True):
    """Train cfg.train.seeds SAEs in one batched loop into run folder `out`; returns the stacked SAE."""
    from synthsae.config import validate
    from synthsae.train import train_run

    return train_run(validate(cfg), Path(out), resume=resume, force=force, progress=progress)


def analyze(paths: list[str | os.PathLike[str]] | str | os.PathLike[str], *, fmt: str | None = None,
            acts: str | os.PathLike[str] | None = None, out: str | os.PathLike[str] | None = None,
            cfg: AnalysisConfig | None = None, device: str | None = None):
    """Stability, truth recovery and subspaces of a run folder or of SAE folders (one per seed), written into
    metrics.json like `synthsae analyze`; returns the AnalysisResult."""
    import synthsae.study_stages  # noqa: F401  (registers the stages)
    from synthsae.rundir import run_lock
    from synthsae.source import open_source
    from synthsae.stages import run_stages

    paths = [paths] if isinstance(paths, (str, os.PathLike)) else paths
    src = open_source([Path(p) for p in paths], fmt=fmt, acts=Path(acts) if acts else None,
                      out=Path(out) if out else None, device=device)
    if src.kind == "real":
        import real.stages  # noqa: F401

        real.stages.attach(src)
    if src.kind == "folders":
        res = run_stages(src, ("analysis",), resume=False, settings={"analysis": cfg}, log=lambda _: None)
        return res.results["analysis"].analysis
    with run_lock(src.out):  # no other synthsae process writes the run meanwhile
        res = run_stages(src, ("analysis",), resume=False, settings={"analysis": cfg}, log=lambda _: None)
    return res.results["analysis"][0]


def read_verdicts(run_dir: str | os.PathLike[str]) -> list:
    """Every claim's verdict for a run folder (held / partly held / did not hold / not measured), rules only."""
    from synthsae.report import verdicts as run_verdicts

    return run_verdicts(Path(run_dir))
