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

from real.config import RealConfig, load, to_json
from synthsae.config import ConfigError
from synthsae.fileio import atomic_save_safetensors, atomic_write_text, merge_json_key
from synthsae.metrics_file import write_stage
from synthsae.results import TriggersResult
from synthsae.serialize import from_json
from synthsae.threads import threads_for

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


def run_real(cfg: RealConfig, out: str | Path, *, force: bool = False, lm=None, progress: bool = True, log=print,
             collect_only: bool = False) -> dict:
    """Every stage into `out`; returns metrics.json as a dict (or the store's meta with collect_only).

    Like `synthsae run`, it refuses a size that does not fit in memory before writing anything (check_real_fits)
    and holds the run folder's lock (synthsae.rundir.run_lock) while it writes.
    """
    from real.model import check_layer, load_model
    from synthsae.rundir import run_lock

    out = Path(out)
    check_real_target(out)  # with or without force: a folder that holds no synthsae run is never taken over
    if (out / "report.html").is_file() and not force and not collect_only:
        raise FileExistsError(f"{out}: holds a finished real run; pass --force to overwrite it")
    prepare(cfg, out, force, write=False)
    t0 = time.perf_counter()
    log(f"[1/8] loading {cfg.collect.model}")
    from synthsae.device import pick_device

    lm = lm or load_model(cfg.collect.model, device=pick_device(cfg.train.device))  # the LM runs where the SAEs do
    check_layer(lm, cfg.collect.layer)
    if not collect_only:
        check_real_fits(cfg, lm)  # before anything is written
    check_real_disk(cfg, lm, out, collect_only)  # before the run folder is made
    created = not out.exists()
    try:
        with run_lock(out):  # one process writes a run folder at a time (a second one is refused in one line)
            return _run_locked(cfg, out, force, lm, progress, log, collect_only, t0)
    except BaseException:
        if created:
            from synthsae.rundir import drop_if_only_marker

            drop_if_only_marker(out)  # a refused call leaves no folder holding only the marker
        raise


def check_real_target(out: Path) -> None:
    """Refuse (one-line RunFolderError) a path that is a file, or a non-empty folder that holds no synthsae run."""
    from synthsae.rundir import MARKER, RunFolderError, check_not_locked, is_run_folder

    if not out.exists():
        return
    if not out.is_dir():
        raise RunFolderError(f"--out = {str(out)!r}: is a file, not a run folder")
    check_not_locked(out)  # a run in progress elsewhere: say so, rather than "pass --force"
    names = {p.name for p in out.iterdir()}
    shared_acts = names == {"acts"} and (out / "acts" / "meta.json").is_file()  # a sweep cell: only its collection
    if names and not (is_run_folder(out) or (out / CONFIG).is_file() or shared_acts):
        names = sorted(p.name for p in out.iterdir())
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise RunFolderError(f"{out}: not a synthsae run (no {MARKER}; holds {shown}); a real run writes only into a "
                             "new, empty or synthsae run folder: pick another --out")


def _run_locked(cfg: RealConfig, out: Path, force: bool, lm, progress: bool, log, collect_only: bool, t0: float) -> dict:
    from real.activations import collect

    log(f"[2/8] collecting activations after block {cfg.collect.layer} ({cfg.collect.train_tokens} train + "
        f"{cfg.collect.eval_tokens} eval tokens) -> {out / 'acts'}")
    store = collect(cfg.collect, out / "acts", lm=lm, progress=progress, force=force, log=log)
    prepare(cfg, out, force)  # only once the activations are known to match: a refused call changes nothing
    if collect_only:
        return store.meta
    torch.manual_seed(0)
    mpath = out / "metrics.json"

    def done(key: str) -> bool:
        from synthsae.metrics_file import STAGES, stage_done

        if key in STAGES:
            return stage_done(mpath, key)
        return mpath.is_file() and key in json.loads(mpath.read_text())

    from real.train import FINISHED, train_real
    from synthsae.io import load_sae_folders, seed_folders

    seconds = {}
    if not (out / FINISHED).is_file():
        log(f"[3/8] training {cfg.train.seeds} seeds of {cfg.sae.variant} (d_sae {cfg.sae.d_sae}, k {cfg.sae.k}, "
            f"{cfg.train.steps} steps = {cfg.passes} passes)")
        t = time.perf_counter()
        train_real(cfg, store, out, progress=progress)
        seconds["train"] = time.perf_counter() - t
    summary = json.loads((out / FINISHED).read_text())
    scale = float(summary["norm_scaling_factor"])
    sae = load_sae_folders(seed_folders(out))
    from synthsae.device import pick_device

    dev = pick_device(cfg.train.device)
    sae = sae.to(dev)

    from synthsae.metrics.analyze import analyze_with_latents
    from synthsae.metrics.run_analysis import LATENTS_FILE, seed_sparsity, write_analysis

    if not done("analysis"):
        log("[4/8] stability, span reproducibility, clusters of unstable latents")
        t = time.perf_counter()
        freq, source = seed_sparsity(seed_folders(out))
        res, per = analyze_with_latents(sae.W_dec.detach(), sae.W_enc.detach(), freq, None, cfg.analysis, dev, source)
        res.settings.run_dir = str(out)
        res.settings.variant = cfg.sae.variant
        write_analysis(mpath, res, per)
        seconds["analysis"] = time.perf_counter() - t
    from safetensors.torch import load_file

    stab = load_file(str(out / LATENTS_FILE))["stability"]

    if not done("ablation"):
        log(f"[5/8] ablating stable / unstable / random groups with the reconstruction spliced into the model "
            f"({cfg.splice_contexts} windows)")
        from real.ablate import real_ablation

        t = time.perf_counter()
        ab, splice = real_ablation(lm, sae, store, cfg, stab, scale, progress=progress)
        write_stage(mpath, "splice", splice)
        write_stage(mpath, "ablation", ab)  # last: its presence marks the stage done
        seconds["ablation"] = time.perf_counter() - t

    if not done("pooling"):
        log(f"[6/8] pooling seeds (disjoint halves; rules {', '.join(cfg.pool_rules)}; widths {cfg.pool_widths} x d_sae)")
        from synthsae.pooling import pooling_study

        t = time.perf_counter()
        from synthsae.rundir import clear_run

        clear_run(out, ("pooled",))
        x = (store.load("eval", limit=cfg.analysis.eval_tokens) * scale).to(dev)
        bs = cfg.train.batch_size
        with threads_for(bs, store.d, cfg.sae.d_sae, dev):  # the refits are SAE training: the trainer's thread policy
            pooled = pooling_study(
                (cfg.run_config(), sae, None), x=x, out_dir=out / "pooled", refit_steps=cfg.analysis.pool_refit_steps,
                rules=tuple(cfg.pool_rules), widths=[w * cfg.sae.d_sae for w in cfg.pool_widths],
                batches=lambda seed: (b.to(dev) for b in store.batches(bs, seed, scale=scale)), progress=progress)
        write_stage(mpath, "pooling", pooled)
        seconds["pooling"] = time.perf_counter() - t

    if not done("atlas"):
        log("[7/8] feature atlas: stable directions, reproducible subspaces, remainder; spliced CE of each")
        from real.atlas import real_atlas

        t = time.perf_counter()
        real_atlas(lm, sae, store, cfg, scale, out, progress=progress)
        seconds["atlas"] = time.perf_counter() - t

    if not done("triggers"):
        log("[8/8] triggers: top tokens, surface-form score, token entropy")
        t = time.perf_counter()
        write_stage(mpath, "triggers", from_json(TriggersResult, trigger_stage(sae, store, cfg, stab, scale, out), "triggers"))
        seconds["triggers"] = time.perf_counter() - t

    from real.report import build_real_report

    build_real_report(out, tokenizer=lm.tokenizer)
    merge_json_key(mpath, "seconds", {**(json.loads(mpath.read_text()).get("seconds") or {}), **seconds,
                                      "total_this_call": time.perf_counter() - t0})
    return json.loads(mpath.read_text())


def check_real_disk(cfg: RealConfig, lm, out: Path, collect_only: bool = False) -> None:
    """Refuse (one line: estimate and free disk) a real run whose activations still to collect plus, unless only
    collecting, its seed folders, checkpoints and pooled dictionaries would not fit on the disk of `out`."""
    from real.activations import collect_disk_bytes
    from synthsae.memory import check_disk, sae_disk_bytes
    from synthsae.train import DTYPES

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
    from synthsae.train import DTYPES

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
