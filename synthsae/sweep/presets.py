"""The shipped grids: quick (tests), synthetic, real-cpu and real-gpu; docs/sweep.md states each one's cost.

real-cpu is the union of two blocks: widths 1x-8x d_model at block 6, and blocks 3, 6, 9 at 1x.
"""

from __future__ import annotations

from synthsae.config import ConfigError
from synthsae.sweep.grid import Grid, validate_grid

SIX = ["topk", "batchtopk", "jumprelu", "relu", "gated", "matryoshka"]


def _quick() -> Grid:
    # seconds a cell on a CPU: the tiny truth (43 components), 2 widths x 2 TopK-family variants, 4 seeds, 150 steps
    return Grid("quick", "synthetic", "tiny", [{"width": [1, 2], "variant": ["topk", "batchtopk"], "seeds": [4]}],
                {"steps": 150, "batch_size": 256, "eval_tokens": 4096, "pool_refit_steps": 20})


def _synthetic() -> Grid:
    # the default truth (162 components) at 0.5x .. 4x, the six variants, L0 8 (the preset's k), 8 seeds
    return Grid("synthetic", "synthetic", "default", [{"width": [0.5, 1, 2, 4], "l0": [8], "variant": list(SIX),
                                                       "seeds": [8]}], {})


def _real_cpu() -> Grid:
    # SmolLM2: widths 1x, 2x, 4x, 8x d_model (576 .. 4608 latents) at block 6, and blocks 3, 6, 9 at 1x; 4 seeds, k 16.
    # Training as in the `default` real preset, which passed the convergence rule: 400k tokens x 8 passes at batch 512
    # = 6,250 optimizer steps. The first real-cpu (200k tokens x 8 passes at batch 256: the same steps, half the
    # tokens per step) left stability rising in all six cells (docs/real.md). Cells run two at a time on 2 cores
    # (--jobs defaults to one per core); docs/sweep.md states the measured time.
    return Grid("real-cpu", "real", "default",
                [{"model": ["smollm2"], "layer": [6], "width": [1, 2, 4, 8], "k": [16], "variant": ["topk"], "seeds": [4]},
                 {"model": ["smollm2"], "layer": [3, 9], "width": [1], "k": [16], "variant": ["topk"], "seeds": [4]}],
                {"tokens": 400_000, "passes": 8, "batch_size": 512})


def _real_gpu() -> Grid:
    # one H200 (64 GB disk): widths 4k / 16k / 64k at block 15 and blocks 6 / 15 / 24 at 16k, three variants, 8 seeds;
    # 6M tokens per store (float16: 7 GB a layer, three layers) x 4 passes = 24M training tokens per cell (5,859 steps
    # at batch 4,096); one pooling rule so the pooled SAEs of the 64k cells fit the disk (docs/sweep.md)
    v = ["topk", "batchtopk", "jumprelu"]
    return Grid("real-gpu", "real", "gpu",
                [{"model": ["smollm2"], "layer": [15], "d_sae": [4096, 16384, 65536], "k": [64], "variant": v, "seeds": [8]},
                 {"model": ["smollm2"], "layer": [6, 24], "d_sae": [16384], "k": [64], "variant": v, "seeds": [8]}],
                {"tokens": 6_000_000, "passes": 4, "device": "cuda", "pool_rules": ["coverage"]})


PRESETS = {"quick": _quick, "synthetic": _synthetic, "real-cpu": _real_cpu, "real-gpu": _real_gpu}


def grid_preset(name: str) -> Grid:
    if name not in PRESETS:
        raise ConfigError(f"--preset = {name!r}: must be one of {', '.join(PRESETS)}")
    return validate_grid(PRESETS[name]())
