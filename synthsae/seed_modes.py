"""Stability or stabilization? A run beside the same config trained under other seed modes (train.seed_mode).

A companion run is the run's own config with only train.seed_mode changed, trained into RUN/seed_modes/<mode>/ (an
ordinary run folder, kept: a second call reuses it unless its config no longer matches the run's) and analysed
with the run's analysis settings. The result goes into the run's metrics.json under "seed_modes".
"""

from __future__ import annotations

import copy
from pathlib import Path

from synthsae.config import SEED_MODES, ConfigError, RunConfig, load
from synthsae.results import Chance, SeedModeRow, SeedModesResult

METRICS_KEY = "seed_modes"
FOLDER = "seed_modes"


def companion_modes(own: str, modes: list[str] | None) -> list[str]:
    """The modes to train beside the run's own: the given ones (validated), else independent, or, for a run that
    is independent itself, the two shared modes."""
    if modes:
        for m in modes:
            if m not in SEED_MODES:
                raise ConfigError(f"--modes: {m!r} is not a seed mode; allowed are {', '.join(SEED_MODES)}")
        return [m for m in dict.fromkeys(modes) if m != own]
    return ["independent"] if own != "independent" else ["shared_init", "shared_data"]


def companion_config(cfg: RunConfig, mode: str) -> RunConfig:
    """The run's config with only the seed mode changed."""
    new = copy.deepcopy(cfg)
    new.train.seed_mode, new.train.vary_data = mode, False
    return new


def _row(run_dir: Path, mode: str, own: bool, res) -> SeedModeRow:
    from synthsae.checkpoint import load_train_summary

    fvu = load_train_summary(run_dir)["eval"]["fvu"]
    return SeedModeRow(mode=mode, run_dir=str(run_dir), own=own,
                       stability=Chance(res.stability.mean.value, res.stability.mean.baseline),
                       frac_stable=Chance(res.stability.frac_stable.value, res.stability.frac_stable.baseline),
                       truth_auroc=res.truth_filter.auroc.value if res.truth_filter is not None else None,
                       ev=1.0 - sum(fvu) / len(fvu))


def seed_mode_study(run_dir: str | Path, modes: list[str] | None = None, device: str | None = None,
                    progress: bool = True) -> SeedModesResult:
    """Train (or reuse) the companions of a finished run, analyse them and the run alike; write metrics.json."""
    from synthsae.metrics.run_analysis import analyze_run
    from synthsae.metrics_file import read_metrics, write_stage
    from synthsae.train import train_run

    run_dir = Path(run_dir)
    cfg = load(run_dir / "config.toml")
    own = cfg.train.resolved_seed_mode()
    metrics = run_dir / "metrics.json"
    have = read_metrics(metrics).analysis if metrics.is_file() else None
    res = have if have is not None else analyze_run(run_dir, device=device)[0]
    rows = [_row(run_dir, own, True, res)]
    for mode in companion_modes(own, modes):
        sub = run_dir / FOLDER / mode
        want = companion_config(cfg, mode)
        stale = (sub / "config.toml").is_file() and load(sub / "config.toml") != want
        if stale or not (sub / "train.json").is_file():
            train_run(want, sub, resume=not stale, force=stale, progress=progress)
        rows.append(_row(sub, mode, False, analyze_run(sub, cfg.analysis, device=device)[0]))
    out = SeedModesResult(own_mode=own, rows=rows)
    write_stage(metrics, METRICS_KEY, out)
    return out
