"""One cell's run config: the grid's base preset with the cell's axis values and the grid's settings applied.

Synthetic: width is a multiple of the truth's components (atoms + blocks + frames); l0 is the target L0 (k of
a TopK-family variant, else the penalty is calibrated to it as the bench does; without an l0 axis the target is
the base preset's k). Real: width is a multiple of the model's d_model.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from synthsae.config import ConfigError

D_MODEL = {"smollm2": 576}  # models whose width is known without loading them


@dataclass
class CellConfig:
    """What the adapter needs to run one cell: the run config and, for penalty variants, the L0 to calibrate to."""

    cfg: object  # synthsae.config.RunConfig or real.config.RealConfig
    l0_target: float | None = None  # None: no calibration (TopK family, or a real cell)
    max_probes: int = 5  # calibration: at most this many one-seed probe runs (the bench's default)
    l0_tolerance: float = 0.1  # calibration stops once |L0 / target - 1| <= this


def d_model_of(model: str) -> int:
    """d_model of a model name or local folder (its config.json) without loading weights."""
    if model in D_MODEL:
        return D_MODEL[model]
    cfg = Path(model) / "config.json"
    if cfg.is_file():
        raw = json.loads(cfg.read_text())
        for key in ("hidden_size", "d_model", "n_embd"):
            if isinstance(raw.get(key), int):
                return raw[key]
        for sub in ("text_config",):
            if isinstance(raw.get(sub), dict) and isinstance(raw[sub].get("hidden_size"), int):
                return raw[sub]["hidden_size"]
    raise ConfigError(f"axes.width = multiples of d_model: d_model of model {model!r} is unknown without loading it; "
                      "give axes.d_sae instead (known: " + ", ".join(D_MODEL) + ", or a folder with config.json)")


def cell_config(grid, cell) -> CellConfig:
    """The validated config of one cell (ConfigError naming the field when a combination is impossible)."""
    return _synthetic(grid, cell) if grid.kind == "synthetic" else _real(grid, cell)


def _synthetic(grid, cell) -> CellConfig:
    from synthsae.bench import bench_sae_settings, k_for_l0, sparsity_knob
    from synthsae.config import preset, validate

    v, s = cell.values, grid.settings
    cfg = preset(v.get("truth", grid.base))
    base_k = cfg.sae.k
    variant = v.get("variant", cfg.sae.variant)
    cfg.sae.variant = variant
    for key, value in bench_sae_settings(variant).items():
        setattr(cfg.sae, key, copy.deepcopy(value))
    if "width" in v:
        cfg.sae.d_sae = max(2, int(round(v["width"] * cfg.truth.n_components)))
    elif "d_sae" in v:
        cfg.sae.d_sae = v["d_sae"]
    cfg.sae.matryoshka_prefixes = []
    if "seeds" in v:
        cfg.train.seeds = v["seeds"]
    t = cfg.train
    if "steps" in s:
        t.steps = s["steps"]
        t.checkpoint_every = min(t.checkpoint_every, max(1, t.steps // 3))
        t.warmup_steps = min(t.warmup_steps, max(1, t.steps // 10))
        cfg.sae.l1_warmup_steps = min(cfg.sae.l1_warmup_steps, max(1, t.steps // 5))
    if "batch_size" in s:
        t.batch_size = s["batch_size"]
    if "eval_tokens" in s:
        cfg.analysis.eval_tokens = s["eval_tokens"]
    if "pool_refit_steps" in s:
        cfg.analysis.pool_refit_steps = s["pool_refit_steps"]
    target = float(v.get("l0", base_k))
    knob = sparsity_knob(variant)
    if knob == "k":
        cfg.sae.k = k_for_l0(variant, cfg.sae, target)
    try:
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"cell {cell.id}: {e}") from None
    return CellConfig(cfg, None if knob == "k" else target, int(s.get("max_probes", 5)), float(s.get("l0_tolerance", 0.1)))


def _real(grid, cell) -> CellConfig:
    from real.config import preset, with_overrides

    v, s = cell.values, grid.settings
    model = v.get("model")
    base = preset(grid.base)
    d_sae = v.get("d_sae")
    if "width" in v:
        d_sae = max(2, int(round(v["width"] * d_model_of(model or base.collect.model))))
    if "variant" in v:
        base.sae.variant = v["variant"]
    if "ctx_len" in s:
        base.collect.ctx_len = s["ctx_len"]
    if "eval_tokens" in s:
        base.collect.eval_tokens = base.analysis.eval_tokens = s["eval_tokens"]
    if "batch_size" in s:
        base.train.batch_size = s["batch_size"]
    if "pool_refit_steps" in s:
        base.analysis.pool_refit_steps = s["pool_refit_steps"]
    if "pool_rules" in s:
        base.pool_rules = list(s["pool_rules"])
    for key in ("splice_contexts", "trigger_tokens"):
        if key in s:
            setattr(base, key, s[key])
    try:
        cfg = with_overrides(base, model=model, layer=v.get("layer"), tokens=s.get("tokens"), seeds=v.get("seeds"),
                             d_sae=d_sae, k=v.get("k"), passes=s.get("passes"), lr=s.get("lr"), device=s.get("device"),
                             corpus=s.get("corpus"))
    except ConfigError as e:
        raise ConfigError(f"cell {cell.id}: {e}") from None
    return CellConfig(cfg, None)
