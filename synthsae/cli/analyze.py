"""`synthsae analyze | ablate | pool`: the analysis stages of a run folder or of SAE folders (one per seed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from synthsae.cli.common import UserError, check_device, console, user_errors
from synthsae.cli.folders import (check_metrics_target, check_paths, check_run_seeds, common_parent, is_run_input,
                                  load_given_acts, seed_folders, warn_taus)
from synthsae.cli.options import AllowMissingSeeds, AsJson, Device, Format, Match, Tau
from synthsae.cli.show import print_ablation, print_analysis, print_pooling, print_verdicts
from synthsae.config import MATCH_RULES, AnalysisConfig
from synthsae.config import load as load_config
from synthsae.device import resolve_device
from synthsae.fileio import check_writable_dir
from synthsae.loaders import load_stack
from synthsae.loaders.analysis import analyze_stack, pool_stack, write_folder_results, write_pooling
from synthsae.metrics.ablation import ablate_run
from synthsae.metrics.run_analysis import analyze_run, is_run_dir, with_overrides, write_analysis
from synthsae.metrics_file import write_stage
from synthsae.outdir import analysis_folder, claim
from synthsae.pooling import RULES as POOL_RULES
from synthsae.pooling import pooling_study
from synthsae.report import build_report
from synthsae.rundir import run_lock
from synthsae.serialize import to_json


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
    check_paths(paths)
    on_run = is_run_input(paths, fmt, acts)
    if on_run:
        base = load_config(paths[0] / "config.toml").analysis
        target = out or paths[0] / "metrics.json"
        check_run_seeds(paths[0], allow_missing_seeds, "analyze")
        check_metrics_target(target)
        with run_lock(paths[0]):  # no other synthsae process writes the run meanwhile
            res, per = analyze_run(paths[0], with_overrides(base, tau, match), device)
            write_analysis(target, res, per)
    else:
        res, target = analyze_folders(paths, with_overrides(AnalysisConfig(), tau, match), device, out, fmt, acts, as_json)
    warn_taus(target)
    if as_json:
        typer.echo(json.dumps(to_json(res), indent=2))
        return
    print_analysis(res)
    console.print(f"wrote {target} (key \"analysis\")")
    if report and not on_run:
        md, page = build_report(target.parent)
        print_verdicts(target.parent)
        console.print(f"report: {page} (and {md.name})", highlight=False)


def analyze_folders(paths, cfg, device, out, fmt, acts, quiet):
    """Load the folders, analyse (and with --acts ablate) them, write metrics.json: (analysis dict, its path)."""
    folders = seed_folders(paths, fmt)
    target = analysis_folder(folders, out, common_parent(folders)) / "metrics.json"
    check_metrics_target(target)
    stack = load_stack(folders, fmt)
    given = load_given_acts(acts, stack.sae.d_in)
    results = analyze_stack(stack, cfg, resolve_device(device), given, progress=not quiet)
    claim(target.parent)
    write_folder_results(target, results)
    return results.analysis, target


def check_tau(tau: Optional[float]) -> None:
    """--tau, when given, is a cosine in [-1, 1]."""
    if tau is not None and not -1.0 <= tau <= 1.0:
        raise UserError(f"--tau = {tau}: must be in [-1, 1]")


def check_pooling_run_dir(run_dir: Path, device: str, tau: Optional[float]) -> None:
    """Shared checks of `ablate` / `pool`: a run folder, a known device, tau in [-1, 1], a writable metrics.json."""
    if not run_dir.exists():
        raise UserError(f"{str(run_dir)!r}: no such run directory")
    if not is_run_dir(run_dir):
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
    with run_lock(run_dir):  # no other synthsae process writes the run meanwhile
        res = ablate_run(run_dir, device, progress=not as_json, tau=tau, match=match, n_draws=draws)
        write_stage(run_dir / "metrics.json", "ablation", res)
    warn_taus(run_dir / "metrics.json")
    if as_json:
        typer.echo(json.dumps(to_json(res), indent=2))
        return
    print_ablation(run_dir, res)
    console.print(f"wrote {run_dir / 'metrics.json'} (key \"ablation\")")


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
    check_paths(paths)
    if is_run_input(paths, fmt, acts):
        run_dir = paths[0]
        check_pooling_run_dir(run_dir, device, tau)
        check_run_seeds(run_dir, allow_missing_seeds, "pool", need=1)
        if halves and len(list((run_dir / "seeds").glob("seed_*"))) < 2:
            raise UserError("--halves needs a run with at least 2 seeds (use --no-halves)")
        with run_lock(run_dir):  # no other synthsae process writes the run meanwhile
            res = pooling_study(run_dir, tau=tau, widths=[width] if width else None, rules=rules, halves=halves,
                                refit_steps=steps, device=device, progress=not as_json)
            write_stage(run_dir / "metrics.json", "pooling", res)
    else:
        run_dir, res = pool_folders(paths, fmt, acts, device, tau, width, rules, halves, steps, as_json)
    warn_taus(run_dir / "metrics.json")
    if as_json:
        typer.echo(json.dumps(to_json(res), indent=2))
        return
    print_pooling(run_dir, res)
    console.print(f"pooled SAEs in {run_dir / 'pooled'}; wrote {run_dir / 'metrics.json'} (key \"pooling\")")


def pool_folders(paths, fmt, acts, device, tau, width, rules, halves, steps, quiet):
    """pool on SAE folders: (folder that holds metrics.json and pooled/, pooling result)."""
    check_device(device)
    check_tau(tau)
    if acts is None:
        raise UserError(f"{str(paths[0])!r}: not a run directory (config.toml + seeds/); pooling SAE folders needs --acts "
                        "(activations to refit and judge the pools on)")
    folders = seed_folders(paths, fmt)
    root = analysis_folder(folders, None, common_parent(folders))
    check_metrics_target(root / "metrics.json")
    stack = load_stack(folders, fmt)
    given = load_given_acts(acts, stack.sae.d_in)
    claim(root)
    res = pool_stack(stack, given, AnalysisConfig(), root / "pooled", tau=tau, widths=[width] if width else None,
                     rules=rules, halves=halves, refit_steps=steps, device=resolve_device(device), progress=not quiet)
    write_pooling(root / "metrics.json", stack, res)
    return root, res


def register(app: typer.Typer) -> None:
    """Add `analyze`, `ablate` and `pool` to app."""
    app.command("analyze")(user_errors(analyze_cmd))
    app.command("ablate")(user_errors(ablate_cmd))
    app.command("pool")(user_errors(pool_cmd))
