"""`synthsae analyze | ablate | pool`: one stage of the registry on a run folder, a real run or SAE folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

import synthsae.study_stages as stages
from synthsae.cli.common import UserError, check_device, console, user_errors
from synthsae.cli.folders import check_metrics_target, check_run_seeds, input_lock, open_input, warn_taus
from synthsae.cli.options import AllowMissingSeeds, AsJson, Device, Format, Match, Tau
from synthsae.cli.show import print_ablation, print_analysis, print_pooling, print_verdicts
from synthsae.config import MATCH_RULES
from synthsae.fileio import check_writable_dir
from synthsae.metrics.run_analysis import with_overrides
from synthsae.pooling import RULES as POOL_RULES
from synthsae.report import build_report
from synthsae.serialize import to_json
from synthsae.source import Source, is_run_dir
from synthsae.stages import run_stages


def run_one(src: Source, key: str, settings=None):
    """Run one stage of the registry on `src` under the run's lock; its result."""
    with input_lock(src):  # no other synthsae process writes the run meanwhile
        return run_stages(src, (key,), resume=False, settings={key: settings}, log=lambda _msg: None).results[key]


def analyze_cmd(
    paths: list[Path] = typer.Argument(..., help="a run directory, or SAE folders one per seed (SAELens, sparsify or "
                                       "dictionary_learning; quoted globs and parent folders too)"),
    tau: Tau = None,
    match: Match = None,
    device: Device = "auto",
    out: Optional[Path] = typer.Option(None, "--out", help="run directory: the metrics.json to write (default: RUN_DIR/metrics.json); SAE folders: the output folder (or FOLDER/metrics.json), created if absent (default: the folders' common parent); it must be new or synthsae's, never an input"),
    as_json: AsJson = False,
    allow_missing_seeds: AllowMissingSeeds = False,
    fmt: Format = None,
    acts: Optional[Path] = typer.Option(None, "--acts", help="activations (safetensors [N, d_in], or a folder of shards): "
                                        "also measure frequency, FVU and the ablation on them"),
    report: bool = typer.Option(True, "--report/--no-report", help="SAE folders: also write report.md/.html beside metrics.json"),
) -> None:
    """Stability, truth recovery and reproducible subspaces of S seeds; merged into metrics.json under "analysis"."""
    check_device(device)
    src = open_input(paths, fmt, acts, out, device)
    if src.kind != "folders":
        if out is not None:  # on a run, --out names the metrics.json to write
            src = Source(src.kind, src.run_dir, run_dir=src.run_dir, device=src.device, metrics=out,
                         run_config=src.run_config, scale=src.scale)
        check_run_seeds(src.run_dir, allow_missing_seeds, "analyze")
    check_metrics_target(src.metrics)
    res = run_one(src, "analysis", with_overrides(src.config.analysis, tau, match))
    res = res.analysis if src.kind == "folders" else res[0]
    warn_taus(src.metrics)
    if as_json:
        typer.echo(json.dumps(to_json(res), indent=2))
        return
    print_analysis(res)
    console.print(f"wrote {src.metrics} (key \"analysis\")")
    if report and src.kind == "folders":
        md, page = build_report(src.out)
        print_verdicts(src.out)
        console.print(f"report: {page} (and {md.name})", highlight=False)


def check_tau(tau: Optional[float]) -> None:
    """--tau, when given, is a cosine in [-1, 1]."""
    if tau is not None and not -1.0 <= tau <= 1.0:
        raise UserError(f"--tau = {tau}: must be in [-1, 1]")


def check_pooling_run_dir(run_dir: Path, device: str, tau: Optional[float]) -> None:
    """Shared checks of `ablate` / `pool`: a run folder, a known device, tau in [-1, 1], a writable metrics.json."""
    if not run_dir.exists():
        raise UserError(f"{str(run_dir)!r}: no such run directory")
    if not (is_run_dir(run_dir) or (run_dir / "real_config.json").is_file()):
        raise UserError(f"{str(run_dir)!r}: not a run directory (needs config.toml and seeds/)")
    check_device(device)
    check_tau(tau)
    check_writable_dir(run_dir, "RUN_DIR")
    check_metrics_target(run_dir / "metrics.json")


def ablate_cmd(
    run_dir: Path = typer.Argument(..., help="a synthetic run directory (config.toml, truth.safetensors, seeds/)"),
    tau: Tau = None,
    match: Match = None,
    draws: int = typer.Option(3, "--draws", min=1, help="random control groups drawn per seed (costs averaged)"),
    device: Device = "auto",
    as_json: AsJson = False,
    allow_missing_seeds: AllowMissingSeeds = False,
) -> None:
    """Functional asymmetry: zero stable / unstable / random latent groups and decode; merged into metrics.json
    under "ablation" (changes in FVU and readout-head KL, per seed and mean ± std over seeds)."""
    check_pooling_run_dir(run_dir, device, tau)
    check_run_seeds(run_dir, allow_missing_seeds, "ablate")
    if match is not None and match not in MATCH_RULES:
        raise UserError(f"--match = {match!r}: must be one of {', '.join(MATCH_RULES)}")
    if not (run_dir / "truth.safetensors").is_file():
        raise UserError(f"{str(run_dir)!r}: no truth.safetensors (ablate scores synthetic runs; real runs splice via real/)")
    src = Source("run", run_dir, run_dir=run_dir, device=None if device == "auto" else device)
    cfg = stages.AblationConfig(tau=tau, match=match, n_draws=draws, progress=not as_json)
    res = run_one(src, "ablation", stages.AblationSettings(cfg, from_analysis=False))
    warn_taus(src.metrics)
    if as_json:
        typer.echo(json.dumps(to_json(res), indent=2))
        return
    print_ablation(run_dir, res)
    console.print(f"wrote {src.metrics} (key \"ablation\")")


def pool_cmd(
    paths: list[Path] = typer.Argument(..., help="a run directory (config.toml, seeds/), or SAE folders one per seed with --acts"),
    tau: Optional[float] = typer.Option(None, "--tau", help="link threshold for clustering and matching (default: the run's analysis.tau)"),
    width: Optional[int] = typer.Option(None, "--width", min=1, help="latents kept per pool (default: both 1x and 2x the run's d_sae)"),
    halves: bool = typer.Option(True, "--halves/--no-halves", help="also pool disjoint seed halves and compare their stability"),
    rule: Optional[list[str]] = typer.Option(None, "--rule", help=f"ranking rule(s): {', '.join(POOL_RULES)} (default: all)"),
    steps: int = typer.Option(300, "--steps", min=0, help="refit steps of encoder and biases (decoder frozen)"),
    device: Device = "auto",
    as_json: AsJson = False,
    allow_missing_seeds: AllowMissingSeeds = False,
    fmt: Format = None,
    acts: Optional[Path] = typer.Option(None, "--acts", help="SAE folders: activations to refit (first half) and judge (second half) on"),
) -> None:
    """Pooled SAEs: merge latents that seeds agree on, refit the encoder, judge EV / L0 / stability against
    single seeds. Pools go to RUN_DIR/pooled/<variant>_<pool>/ (SAELens layout); numbers to metrics.json "pooling"."""
    rules = list(rule) if rule else list(POOL_RULES)
    for r in rules:
        if r not in POOL_RULES:
            raise UserError(f"--rule = {r!r}: must be one of {', '.join(POOL_RULES)}")
    check_device(device)
    check_tau(tau)
    src = open_input(paths, fmt, acts, None, device)
    if src.kind == "folders" and acts is None:
        raise UserError(f"{str(paths[0])!r}: not a run directory (config.toml + seeds/); pooling SAE folders needs --acts "
                        "(activations to refit and judge the pools on)")
    if src.kind != "folders":
        check_pooling_run_dir(src.run_dir, device, tau)
        check_run_seeds(src.run_dir, allow_missing_seeds, "pool", need=1)
        if halves and len(list((src.run_dir / "seeds").glob("seed_*"))) < 2:
            raise UserError("--halves needs a run with at least 2 seeds (use --no-halves)")
    check_metrics_target(src.metrics)
    res = run_one(src, "pooling", stages.PoolConfig(tau=tau, widths=[width] if width else None, rules=tuple(rules),
                                                    halves=halves, refit_steps=steps, progress=not as_json))
    warn_taus(src.metrics)
    if as_json:
        typer.echo(json.dumps(to_json(res), indent=2))
        return
    print_pooling(src.out, res)
    console.print(f"pooled SAEs in {src.out / 'pooled'}; wrote {src.metrics} (key \"pooling\")")


def register(app: typer.Typer) -> None:
    """Add `analyze`, `ablate` and `pool` to app."""
    app.command("analyze")(user_errors(analyze_cmd))
    app.command("ablate")(user_errors(ablate_cmd))
    app.command("pool")(user_errors(pool_cmd))
