"""Config of a real run: what to collect, which SAE, how to train it, cut-offs; presets quick / default / gpu.

Saved fully resolved as the run's `real_config.json`; a resumed run must ask for the same config.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from real.activations import CollectConfig, validate_collect
from synthsae.config import AnalysisConfig, ConfigError, RunConfig, SAEConfig, TrainConfig, validate_analysis, validate_sae, validate_train

PRESETS = ("quick", "default", "gpu")
# the CPU default's converged point (docs/real.md) in Adam's travel: optimizer steps x learning rate
CONVERGED_STEPS_X_LR = 6_250 * 3e-3
WIDTH_ALLOWANCE = 2.0  # a dictionary wider than 1x d_model converges more slowly per step (docs/real.md)
GPU_LR = 1e-3
GPU_STEPS = round(WIDTH_ALLOWANCE * CONVERGED_STEPS_X_LR / GPU_LR)  # 37,500


@dataclass
class RealConfig:
    preset: str = "default"
    collect: CollectConfig = field(default_factory=CollectConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    passes: int = 4  # passes over the collected training tokens (train.steps is derived from it unless `steps` is set)
    steps: int = 0  # optimizer steps per seed when > 0 (then `passes` is derived from it); 0 = from passes
    checkpoints: int = 5  # convergence: stability and FVU evaluated at this many points of training
    splice_contexts: int = 32  # eval windows used for the spliced CE / KL ablation
    splice_batch: int = 2  # windows per spliced forward pass (x S seeds)
    n_draws: int = 2  # random control groups per group in the ablation
    trigger_tokens: int = 16384  # eval tokens used for trigger statistics
    pool_rules: list[str] = field(default_factory=lambda: ["coverage", "coverage_freq", "union"])
    pool_widths: list[int] = field(default_factory=lambda: [1, 2])  # pooled widths as multiples of d_sae

    def run_config(self) -> RunConfig:
        """The synthetic-side RunConfig view the shared metrics (pooling, ablation) read cut-offs and seeds from."""
        return RunConfig(preset=f"real-{self.preset}", sae=self.sae, train=self.train, analysis=self.analysis)


def _quick() -> RealConfig:
    # small enough for a test on a busy 2-core machine: an early block (the forward pass stops there), 24k tokens
    return RealConfig(
        preset="quick",
        collect=CollectConfig(layer=4, ctx_len=64, train_tokens=24_000, eval_tokens=2_048, batch_contexts=16,
                              shard_tokens=16_384),
        sae=SAEConfig(variant="topk", d_sae=768, k=16),
        train=TrainConfig(seeds=3, batch_size=1024, lr=3e-3, warmup_steps=10, checkpoint_every=50,
                          dead_window_tokens=20_000),
        analysis=AnalysisConfig(eval_tokens=2_048, pool_refit_steps=20),
        passes=3, checkpoints=3, splice_contexts=4, splice_batch=2, n_draws=1, trigger_tokens=2048,
        pool_rules=["coverage"], pool_widths=[1],
    )


def _default() -> RealConfig:
    # CPU, under 20 minutes on 2 quiet cores, sized for convergence (measured 2026-11-26 on 416k tokens after block 6,
    # 4 seeds, lr 3e-3): the number of optimizer steps decides. 1152 latents, k 32, batch 2048, 4 passes: 9.5% of
    # live latents stable and still rising; 576, k 16, batch 2048: 25%, rising; batch 512, 4 passes: 44%; batch 512,
    # 8 passes: 53% (mean stability 0.642 -> 0.658 over the last constant-lr stretch). Collection runs at ~3.7k
    # tokens/s, training on one thread at ~55k tokens x seeds/s.
    return RealConfig(
        preset="default",
        collect=CollectConfig(layer=6, ctx_len=128, train_tokens=400_000, eval_tokens=16_384, batch_contexts=8),
        sae=SAEConfig(variant="topk", d_sae=576, k=16),
        train=TrainConfig(seeds=4, batch_size=512, lr=3e-3, warmup_steps=100, checkpoint_every=500,
                          dead_window_tokens=200_000),
        analysis=AnalysisConfig(eval_tokens=16_384, pool_refit_steps=300),
        passes=8, checkpoints=8, splice_contexts=16, splice_batch=2, n_draws=2, trigger_tokens=16_384,
    )


def _gpu() -> RealConfig:
    # sized by optimizer steps, which decided convergence on the CPU (docs/real.md, "Sizing the gpu preset"): the 1x
    # dictionary met the convergence rule after ~3,100 constant-lr steps at lr 3e-3 (the default preset gives it 6,250);
    # at lr 1e-3 Adam moves each weight a third as far per step, so the same distance takes 18,750 steps; a wider
    # dictionary converges more slowly per step (2x width at 3,125 steps: mean stability 0.456 against 0.608), hence
    # twice that: 37,500 steps at batch 4,096 (each latent fires on ~16 tokens per step, ~14 on the CPU). 20M tokens
    # are ~7.7 passes; fewer tokens (--tokens) keep the steps and take more passes.
    return RealConfig(
        preset="gpu",
        collect=CollectConfig(layer=15, ctx_len=256, train_tokens=20_000_000, eval_tokens=65_536, batch_contexts=64,
                              shard_tokens=1_048_576, dtype="float16"),
        sae=SAEConfig(variant="topk", d_sae=16_384, k=64),
        train=TrainConfig(seeds=8, batch_size=4096, lr=GPU_LR, warmup_steps=500, checkpoint_every=1000,
                          dead_window_tokens=2_000_000),
        analysis=AnalysisConfig(eval_tokens=65_536, pool_refit_steps=1000),
        passes=1, steps=GPU_STEPS, checkpoints=8, splice_contexts=128, splice_batch=4, n_draws=3, trigger_tokens=65_536,
    )


def preset(name: str) -> RealConfig:
    makers = {"quick": _quick, "default": _default, "gpu": _gpu}
    if name not in makers:
        raise ConfigError(f"preset = {name!r}: must be one of {', '.join(PRESETS)}")
    return makers[name]()


def resolve(cfg: RealConfig) -> RealConfig:
    """Derive train.steps from passes x training tokens / batch size (or passes from `steps`), then validate everything."""
    if not isinstance(cfg.steps, int) or isinstance(cfg.steps, bool) or cfg.steps < 0:
        raise ConfigError(f"steps = {cfg.steps!r}: must be an integer >= 0 (0: derived from passes)")
    if cfg.steps and isinstance(cfg.collect.train_tokens, int) and cfg.collect.train_tokens > 0:
        cfg.passes = max(1, math.ceil(cfg.steps * cfg.train.batch_size / cfg.collect.train_tokens))
    for name in ("passes", "checkpoints", "splice_contexts", "splice_batch", "n_draws", "trigger_tokens"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{name} = {v!r}: must be an integer >= 1")
    validate_collect(cfg.collect)
    from synthsae.pooling import RULES

    bad = [r for r in cfg.pool_rules if r not in RULES]
    if bad or not cfg.pool_rules:
        raise ConfigError(f"pool_rules = {cfg.pool_rules!r}: must be a non-empty list of {', '.join(RULES)}")
    if not cfg.pool_widths or any(not isinstance(w, int) or w < 1 for w in cfg.pool_widths):
        raise ConfigError(f"pool_widths = {cfg.pool_widths!r}: must be a non-empty list of integers >= 1 (multiples of d_sae)")
    cfg.train.steps = cfg.steps or max(1, cfg.passes * cfg.collect.train_tokens // cfg.train.batch_size)
    cfg.train.checkpoint_every = max(1, min(cfg.train.checkpoint_every, cfg.train.steps))
    cfg.train.warmup_steps = min(cfg.train.warmup_steps, max(cfg.train.steps // 10, 1))
    validate_sae(cfg.sae)
    validate_train(cfg.train)
    validate_analysis(cfg.analysis)
    if cfg.train.seeds < 2:
        raise ConfigError(f"train.seeds = {cfg.train.seeds}: stability needs at least 2 seeds")
    return cfg


def with_overrides(cfg: RealConfig, *, model=None, layer=None, tokens=None, seeds=None, d_sae=None, k=None,
                   corpus=None, passes=None, lr=None, device=None, prepend_bos=None) -> RealConfig:
    """A copy of cfg with the command-line overrides applied (then resolved and validated)."""
    cfg = dataclasses.replace(cfg, collect=dataclasses.replace(cfg.collect), sae=dataclasses.replace(cfg.sae),
                              train=dataclasses.replace(cfg.train), analysis=dataclasses.replace(cfg.analysis))
    if model is not None:
        cfg.collect.model = str(model)
    if layer is not None:
        cfg.collect.layer = layer
    if tokens is not None:
        cfg.collect.train_tokens = tokens
    if corpus:
        cfg.collect.corpus = [str(c) for c in corpus]
    if seeds is not None:
        cfg.train.seeds = seeds
    if d_sae is not None:
        cfg.sae.d_sae = d_sae
    if k is not None:
        cfg.sae.k = k
    if passes is not None:
        cfg.passes = passes
        cfg.steps = 0  # the passes asked for decide the steps
    if prepend_bos is not None:
        cfg.collect.prepend_bos = prepend_bos
    if lr is not None:
        cfg.train.lr = lr
    if device is not None:
        cfg.train.device = device
    return resolve(cfg)


def to_json(cfg: RealConfig) -> str:
    return json.dumps(asdict(cfg), indent=2, sort_keys=True) + "\n"


def load(path: str | Path) -> RealConfig:
    from synthsae.io import RunFileError

    try:
        raw = json.loads(Path(path).read_text())
        return RealConfig(preset=raw["preset"], collect=CollectConfig(**raw["collect"]), sae=SAEConfig(**raw["sae"]),
                          train=TrainConfig(**raw["train"]), analysis=AnalysisConfig(**raw["analysis"]),
                          steps=raw.get("steps", 0),
                          **{k: raw[k] for k in ("passes", "checkpoints", "splice_contexts", "splice_batch", "n_draws",
                                                 "trigger_tokens", "pool_rules", "pool_widths")})
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise RunFileError(f"{path}: not a readable real-run config ({type(exc).__name__}: {exc})") from None
