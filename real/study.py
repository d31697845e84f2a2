"""`synthsae real run`: collect -> train S seeds -> analyse -> ablate (spliced CE/KL) -> pool -> atlas -> triggers -> report.

Run folder: `real_config.json`, `acts/` (activation store), `seeds/seed_<k>/` (SAELens layout), `train.json`
(with the convergence curve), `metrics.json` (keys analysis, ablation, splice, pooling, atlas, triggers with its
random-split null), `atlas.safetensors` / `atlas.json`, `triggers.safetensors`, `pooled/`, `figures/`, `report.md`,
`report.html`. Every stage is skipped when its output exists, so a killed run is finished by running the same
command again; a finished run is only replaced with force.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from real.config import RealConfig
from real.stages import CONFIG, prepare

def run_real(cfg: RealConfig, out: str | Path, *, force: bool = False, lm=None, progress: bool = True, log=print,
             collect_only: bool = False) -> dict:
    """Every stage into `out`; returns metrics.json as a dict (or the store's meta with collect_only).

    Like `synthsae run`, it refuses a size that does not fit in memory before writing anything (check_real_fits)
    and holds the run folder's lock (synthsae.rundir.run_lock) while it writes.
    """
    from real.model import check_layer
    from real.stages import REAL, RealSettings
    from synthsae.rundir import run_lock
    from synthsae.source import Source
    from synthsae.stages import run_stages

    out = Path(out)
    check_real_target(out, force or collect_only)  # a folder that holds no synthsae run is never taken over
    prepare(cfg, out, force, write=False)
    t0 = time.perf_counter()
    src = Source("real", out, run_dir=out, device=cfg.train.device, lm=lm, run_config=cfg.run_config())
    rs = RealSettings(cfg, force=force, progress=progress, log=log)
    settings = {k: rs for k in REAL + ("report",) if k != "analysis"}
    run_stages(src, ("model",), settings=settings, log=log, pipeline=REAL)
    check_layer(src.lm, cfg.collect.layer)
    if not collect_only:
        check_real_fits(cfg, src.lm)  # before anything is written
    check_real_disk(cfg, src.lm, out, collect_only)  # before the run folder is made
    created = not out.exists()
    try:
        with run_lock(out):  # one process writes a run folder at a time (a second one is refused in one line)
            return _run_locked(src, settings, log, collect_only, t0)
    except BaseException:
        if created:
            from synthsae.rundir import drop_if_only_marker

            drop_if_only_marker(out)  # a refused call leaves no folder holding only the marker
        raise


def _run_locked(src, settings: dict, log, collect_only: bool, t0: float) -> dict:
    """The stages after the model, inside the run's lock: collect (only, with collect_only) or every one."""
    from real.stages import REAL, run_seconds
    from synthsae.stages import run_stages

    if collect_only:
        run_stages(src, ("collect",), settings=settings, log=log, pipeline=REAL)
        return src.store.meta
    done = run_stages(src, REAL[1:] + ("report",), settings=settings, log=log, pipeline=REAL)
    timed = ("train", "analysis", "ablation", "pooling", "atlas", "triggers")
    run_seconds(src.metrics, {k: v for k, v in done.seconds.items() if k in timed}, time.perf_counter() - t0)
    return json.loads(src.metrics.read_text())


def check_real_target(out: Path, force: bool = False) -> None:
    """synthsae.rundir.check_target for a real run: a killed run is finished by the same command (an implicit
    resume), a finished one is replaced only with force; a folder holding real_config.json is a real run."""
    from synthsae.rundir import check_target

    finished = (out / "report.html").is_file()
    check_target(out, resume=not finished, force=force, finished=finished, what="real run",
                 ours=(out / CONFIG).is_file())


def check_real_disk(cfg: RealConfig, lm, out: Path, collect_only: bool = False) -> None:
    """Refuse (one line: estimate and free disk) a real run whose activations still to collect plus, unless only
    collecting, its seed folders, checkpoints and pooled dictionaries would not fit on the disk of `out`."""
    from real.activations import collect_disk_bytes
    from synthsae.memory import check_disk, sae_disk_bytes
    from synthsae.loop import DTYPES

    c, S, m, d = cfg.collect, cfg.train.seeds, cfg.sae.d_sae, lm.d_model
    need = 0 if (out / "acts" / "meta.json").is_file() else collect_disk_bytes(c, d)  # a started cache: collect checks
    what = f"collecting {c.train_tokens + c.eval_tokens:,} tokens x d_model {d} ({c.dtype})"
    from real.train import FINISHED

    if not collect_only and not (out / FINISHED).is_file():
        need += sae_disk_bytes(S, d, m, torch.empty((), dtype=DTYPES[cfg.train.dtype]).element_size())
        what += f" and training train.seeds = {S} x sae.d_sae = {m}"
    if need:
        check_disk(need, what, "free disk, pass another --out, lower --tokens or --seeds", out)


def check_real_fits(cfg: RealConfig, lm) -> None:
    """synthsae.memory's check for a real run: training, analysis and the spliced ablation's big tensors against the
    free memory of their devices (estimates on the high side, not exact); one line naming the knobs when too big."""
    from synthsae.memory import check_fits
    from synthsae.device import pick_device
    from synthsae.loop import DTYPES

    S, m, d, B = cfg.train.seeds, cfg.sae.d_sae, lm.d_model, cfg.train.batch_size
    b = torch.empty((), dtype=DTYPES[cfg.train.dtype]).element_size()
    dev = str(pick_device(cfg.train.device))
    n_conv = min(cfg.analysis.eval_tokens, 8192)  # train_real's convergence sample, encoded at once
    params = S * (2 * d * m + m + d)
    train = 4 * params * b + 6 * S * B * m * b + S * m * 8 + 3 * B * d * b + n_conv * d * b + S * n_conv * (m + d) * b
    check_fits(train, f"training (train.seeds = {S} x sae.d_sae = {m} x d_model = {d}, train.batch_size = {B})",
               "lower --seeds or --d-sae", dev)
    analysis = 16 * S * d * m + 24 * m * m + 4 * S * 4096 * m + 8 * S * S * m
    check_fits(analysis, f"the analysis (train.seeds = {S} x sae.d_sae = {m})", "lower --seeds or --d-sae", dev)
    head = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None
    vocab = int(head.weight.shape[0]) if head is not None else int(getattr(lm.model.config, "vocab_size", 0) or 0)
    splice = 8 * 4 * S * cfg.splice_batch * cfg.collect.ctx_len * vocab  # logits, log-probs and their products
    check_fits(splice, f"the spliced ablation (train.seeds = {S} x splice_batch = {cfg.splice_batch} windows x "
               f"ctx_len = {cfg.collect.ctx_len} x {vocab} vocabulary logits)", "lower --seeds or splice_batch",
               str(lm.model.device))
