"""The real side's stages, registered beside the shared ones under the same keys for sources of kind "real":
collect, train, the spliced ablation, the atlas with its CE splice, triggers and the real report. Analysis and
pooling are the shared stages (synthsae.study_stages) reading the run's own activations through the Source."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

import synthsae.study_stages as shared
from real.config import RealConfig, load, to_json
from synthsae.config import ConfigError
from synthsae.fileio import atomic_save_safetensors, atomic_write_text
from synthsae.pooling import PoolConfig
from synthsae.source import Source
from synthsae.stages import Stage, register

CONFIG = "real_config.json"
OUTPUTS = ("seeds", "checkpoint", "train.json", "metrics.json", "analysis_latents.safetensors", "triggers.safetensors",
           "atlas.safetensors", "atlas.json", "pooled", "figures", "report.md", "report.html", CONFIG)


def prepare(cfg: RealConfig, out: Path, force: bool, write: bool = True) -> None:
    """Refuse a folder holding another config (unless force); with force remove everything but the activations
    when they match, else everything this module writes."""
    cpath = out / CONFIG
    if cpath.is_file() and not force:
        saved = cpath.read_text()
        if saved != to_json(cfg):
            old = load(cpath)
            diffs = [k for k in ("preset", "collect", "sae", "train", "analysis") if getattr(old, k) != getattr(cfg, k)]
            raise ConfigError(f"{out}: holds a real run with another config (differs in {', '.join(diffs) or 'settings'}); "
                              "pass --force to start over or another --out")
    if not write:
        return
    if force:
        from synthsae.rundir import clear_run

        clear_run(out, OUTPUTS)  # our names only, our entries inside them, never through a link
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cpath, to_json(cfg))


REAL = ("model", "collect", "train", "analysis", "ablation", "pooling", "atlas", "triggers")  # `real run`, numbered
REPORT_KEY = "report"  # built last on every call (not numbered)


@dataclass
class RealSettings:
    """What every real stage reads besides the Source: the run's config and how to treat existing outputs."""

    cfg: RealConfig
    force: bool = False
    progress: bool = True
    log: object = print


def attach(src: Source) -> Source:
    """Give a real run's Source its config (real_config.json) and, once training finished, the norm scale it used."""
    from real.train import FINISHED

    if src.run_config is None:
        src.run_config = load(src.run_dir / CONFIG).run_config()
    if src.scale is None and (src.run_dir / FINISHED).is_file():
        src.scale = float(json.loads((src.run_dir / FINISHED).read_text())["norm_scaling_factor"])
    return src


def open_real(run_dir, device: str | None = None) -> Source:
    """The Source of a finished real run folder (`synthsae atlas REAL_RUN`); one line when training is unfinished."""
    from real.train import FINISHED
    from synthsae.io import RunFileError

    run_dir = Path(run_dir)
    if not (run_dir / FINISHED).is_file():
        raise RunFileError(f"{run_dir / FINISHED}: missing (training not finished; `synthsae real run` finishes it)")
    return attach(Source("real", run_dir, run_dir=run_dir, device=device))


def language_model(src: Source):
    """The run's language model, loaded once onto the SAEs' device (the LM runs where the SAEs do)."""
    if src.lm is None:
        from real.model import load_model

        src.lm = load_model(load(src.run_dir / CONFIG).collect.model, device=src.dev)
    return src.lm


def activation_store(src: Source):
    """The run's activation store (acts/), opened once."""
    if src.store is None:
        from real.activations import ActivationStore

        src.store = ActivationStore(src.run_dir / "acts")
    return src.store


def _collect(src: Source, earlier: dict, s: RealSettings):
    from real.activations import collect

    src.store = collect(s.cfg.collect, src.out / "acts", lm=src.lm, progress=s.progress, force=s.force, log=s.log)
    prepare(s.cfg, src.out, s.force)  # only once the activations are known to match: a refused call changes nothing
    torch.manual_seed(0)  # the later stages' global draws start from the same state on every call


def _collect_title(src: Source, s: RealSettings) -> str:
    c = s.cfg.collect
    return (f"collecting activations after block {c.layer} ({c.train_tokens} train + {c.eval_tokens} eval tokens) -> "
            f"{src.out / 'acts'}")


def _train(src: Source, earlier: dict, s: RealSettings):
    from real.train import train_real

    train_real(s.cfg, activation_store(src), src.out, progress=s.progress)
    attach(src)


def _train_title(src: Source, s: RealSettings) -> str:
    c = s.cfg
    return (f"training {c.train.seeds} seeds of {c.sae.variant} (d_sae {c.sae.d_sae}, k {c.sae.k}, {c.train.steps} "
            f"steps = {c.passes} passes)")


def _finished(src: Source) -> bool:
    from real.train import FINISHED

    return (src.out / FINISHED).is_file()


def _ablation(src: Source, earlier: dict, s: RealSettings):
    from real.ablate import real_ablation
    from synthsae.metrics.run_analysis import saved_stability

    attach(src)
    return real_ablation(language_model(src), src.sae, activation_store(src), s.cfg, saved_stability(src.metrics),
                         src.scale, progress=s.progress)


def _write_ablation(src: Source, res) -> None:
    from synthsae.metrics_file import write_stage

    ab, splice = res
    write_stage(src.metrics, "splice", splice)
    write_stage(src.metrics, "ablation", ab)  # last: its presence marks the stage done


def _pool_title(src: Source, s) -> str:
    cfg = s.cfg if isinstance(s, RealSettings) else None
    if cfg is None:
        return shared.POOL_TITLE
    return f"pooling seeds (disjoint halves; rules {', '.join(cfg.pool_rules)}; widths {cfg.pool_widths} x d_sae)"


def pool_settings(cfg: RealConfig, progress: bool = True) -> PoolConfig:
    """A real run's pooling: its rules, widths as multiples of d_sae, its refit steps."""
    return PoolConfig(rules=tuple(cfg.pool_rules), widths=[w * cfg.sae.d_sae for w in cfg.pool_widths],
                      progress=progress)


def _pooling(src: Source, earlier: dict, s):
    attach(src)
    return shared.pool_run(src, earlier, pool_settings(s.cfg, s.progress) if isinstance(s, RealSettings) else s)


def _atlas(src: Source, earlier: dict, s):
    """The atlas on the run's eval activations with the CE splice; `s` is the run's RealSettings (default cut-offs)
    or an AtlasConfig (`synthsae atlas REAL_RUN`)."""
    from real.atlas import real_atlas

    acfg = None if isinstance(s, RealSettings) else s
    cfg = s.cfg if isinstance(s, RealSettings) else load(src.run_dir / CONFIG)
    progress = s.progress if isinstance(s, RealSettings) else False
    attach(src)
    res = real_atlas(language_model(src), src.sae, activation_store(src), cfg, src.scale, src.out, acfg, progress=progress)
    return res, None  # written by real_atlas (atlas.json, atlas.safetensors, metrics.json "atlas")


def _triggers(src: Source, earlier: dict, s: RealSettings):
    from synthsae.metrics.run_analysis import saved_stability
    from synthsae.results import TriggersResult
    from synthsae.serialize import from_json

    attach(src)
    summary = trigger_stage(src.sae, activation_store(src), s.cfg, saved_stability(src.metrics), src.scale, src.out)
    return from_json(TriggersResult, summary, "triggers")


def _report(src: Source, earlier: dict, s):
    from real.report import build_real_report

    build_real_report(src.out, tokenizer=language_model(src).tokenizer)


def _model(src: Source, earlier: dict, s: RealSettings) -> None:
    from real.model import load_model

    if src.lm is None:
        src.lm = load_model(s.cfg.collect.model, device=src.dev)  # the LM runs where the SAEs do


KINDS = ("real",)
register(Stage("model", lambda src, s: f"loading {s.cfg.collect.model}", _model, write=lambda src, res: None,
               done=lambda src: False), KINDS)
register(Stage("collect", _collect_title, _collect, write=lambda src, res: None, done=lambda src: False), KINDS)
register(Stage("train", _train_title, _train, write=lambda src, res: None, done=_finished), KINDS)
register(Stage("analysis", lambda src, s: "stability, span reproducibility, clusters of unstable latents",
               lambda src, earlier, s: shared.ANALYSIS.run(attach(src), earlier, s), write=shared.ANALYSIS.write), KINDS)
register(Stage("ablation", lambda src, s: (f"ablating stable / unstable / random groups with the reconstruction spliced "
                                           f"into the model ({s.cfg.splice_contexts} windows)"), _ablation,
               write=_write_ablation), KINDS)
register(Stage("pooling", _pool_title, _pooling), KINDS)
register(Stage("atlas", lambda src, s: "feature atlas: stable directions, reproducible subspaces, remainder; spliced CE "
                                       "of each", _atlas, write=lambda src, res: None), KINDS)
register(Stage("triggers", lambda src, s: "triggers: top tokens, surface-form score, token entropy", _triggers), KINDS)
register(Stage(REPORT_KEY, lambda src, s: "", _report, write=lambda src, res: None, done=lambda src: False), KINDS)


def run_seconds(metrics, seconds: dict, total: float) -> None:
    """Add this call's stage seconds to metrics.json "seconds" (earlier calls' kept)."""
    from synthsae.fileio import merge_json_key

    old = json.loads(metrics.read_text()).get("seconds") or {}
    merge_json_key(metrics, "seconds", {**old, **seconds, "total_this_call": total})


def trigger_stage(sae, store, cfg: RealConfig, stab, scale: float, out: Path) -> dict:
    """Per-latent trigger statistics on eval tokens (saved to triggers.safetensors), their stable / unstable summary
    and the random-split null (real.triggers.trigger_summary)."""
    from real.triggers import latent_token_stats, trigger_summary

    n = cfg.trigger_tokens
    x = store.load("eval", limit=n) * scale
    tok = store.load("eval", "token_ids", limit=n)
    st = latent_token_stats(sae, x.to(sae.W_dec.device), tok)
    atomic_save_safetensors({k: v.contiguous() for k, v in st.items()}, out / "triggers.safetensors")
    return trigger_summary({k: v.numpy() for k, v in st.items()}, stab.cpu().numpy(), cfg.analysis.stable_cutoff,
                           cfg.analysis.unstable_cutoff, int(x.shape[0]))
