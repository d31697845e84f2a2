"""Disk and memory a sweep's missing cells need, checked before anything is written (estimates on the high side).

Disk: each shared activation store (tokens x d_model x storage bytes, plus token ids) and each cell's seeds,
training checkpoint (parameters and Adam's two moments) and pooled SAEs. Memory: each cell's training and analysis
(synthsae.memory's formulas; for real cells the same terms with d_model).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from synthsae.memory import GB, check_fits, check_run_fits

_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def _existing(p: Path) -> Path:
    p = p.resolve()
    while not p.exists():
        p = p.parent
    return p


def cell_disk_bytes(cfg, d: int) -> tuple[int, int]:
    """(kept, transient) bytes of one cell, float32: kept = its seeds, the pooled SAEs (pools A, B and all of each
    rule at each width) and per-latent tensors; transient = the training checkpoint (parameters + Adam's moments)."""
    S, m = cfg.train.seeds, cfg.sae.d_sae
    sae = 4 * (2 * d * m + m + d)
    rules = len(getattr(cfg, "pool_rules", ["coverage", "coverage_freq", "union"]))
    widths = sum(getattr(cfg, "pool_widths", [1, 2]))
    return S * sae + 3 * rules * widths * sae + 64 * S * m, 3 * S * sae


def sweep_disk_bytes(grid, ccs) -> int:
    """Every missing cell's kept files, the largest checkpoint, and each new shared activation store."""
    from synthsae.sweep.configs import d_model_of

    total, peak, stores = 0, 0, set()
    for cc in ccs:
        cfg = cc.cfg
        if grid.kind == "real":
            c = cfg.collect
            d = d_model_of(c.model)
            key = (c.model, c.layer, c.ctx_len, c.train_tokens, c.eval_tokens, tuple(c.corpus), c.dtype)
            if key not in stores:
                stores.add(key)
                total += (c.train_tokens + c.eval_tokens) * (d * _BYTES[c.dtype] + 8)
        else:
            d = cfg.truth.d
        kept, transient = cell_disk_bytes(cfg, d)
        total, peak = total + kept, max(peak, transient)
    return total + peak


def check_sweep_fits(grid, out: Path, ccs) -> None:
    """MemoryLimitError (one line) when the missing cells' files exceed the free disk or a cell exceeds memory."""
    from synthsae.memory import MemoryLimitError
    from synthsae.device import pick_device

    need = sweep_disk_bytes(grid, ccs)
    free = shutil.disk_usage(_existing(Path(out))).free
    if need > free:
        raise MemoryLimitError(f"the sweep's missing cells need about {need / GB:,.1f} GB of disk but {free / GB:,.1f} GB "
                               f"is free under {out}; drop axis values or lower settings.tokens")
    for cc in ccs:
        dev = str(pick_device(cc.cfg.train.device))
        if grid.kind == "synthetic":
            check_run_fits(cc.cfg, dev)
        else:
            from synthsae.sweep.configs import d_model_of

            cfg, d = cc.cfg, d_model_of(cc.cfg.collect.model)
            S, m, B = cfg.train.seeds, cfg.sae.d_sae, cfg.train.batch_size
            b = _BYTES.get(cfg.train.dtype, 4)
            params = S * (2 * d * m + m + d)
            check_fits(4 * params * b + 6 * S * B * m * b + S * m * 8, f"training a cell (seeds {S} x d_sae {m} x d_model {d}, "
                       f"batch {B})", "drop wide cells or lower seeds", dev)
            check_fits(16 * S * d * m + 24 * m * m + 4 * S * 4096 * m + 8 * S * S * m,
                       f"the analysis of a cell (seeds {S} x d_sae {m})", "drop wide cells or lower seeds", dev)
