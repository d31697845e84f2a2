"""`synthsae bench`: every registered SAE variant on a suite's truths at matched L0, several seeds each.

Layout of a bench folder (one cell = one (preset, L0, variant) run folder holding its S seed folders):

    OUT/suite.json                                  the suite the folder was made with (a resume must match it)
    OUT/cells/<preset>/l0_<L0>/<variant>/           an ordinary run folder (config.toml, seeds/, train.json ...)
        calibration.json, calibration/probe_<i>/    penalty variants: the probes that set the penalty for L0
        bench.json                                  the cell's leaderboard numbers (written last)
    OUT/cells/<preset>/l0_<L0>/<variant>@wide/      baseline: one SAE as wide as a bag of half the seeds (its own run)
    OUT/cells/<preset>/l0_<L0>/<variant>@long/      baseline (--matched-compute): the base width trained S/2 x the steps
    OUT/leaderboard.md, leaderboard.html, figures/pareto.png

A cell is trained once and kept: a later bench with more variants trains only the new cells, and `resume`
finishes a killed bench from the first cell without bench.json (training itself resumes from its checkpoint).
bench.json holds the cell's means (the leaderboard) and the same numbers seed by seed (`per_seed`).
Numbers come from the project's metric functions through `cell_numbers` (one adapter, see there).
`jobs` > 1 runs that many cells at once in spawned worker processes (`_run_cells`); the numbers do not change.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from synthsae.config import ConfigError, RunConfig, preset, validate
from synthsae.fileio import atomic_write_json
from synthsae.threads import cpu_cores

BENCH_SCHEMA = "synthsae.bench/1"
WIDE = "@wide"  # suffix of the wide single-SAE baseline cell
LONG = "@long"  # suffix of the long single-SAE baseline cell (the compute of half the seeds at the base width)


@dataclass(frozen=True)
class PresetSpec:
    """One truth of a suite: a named preset, optional overrides, and the L0 targets the variants are matched at."""

    label: str
    preset: str
    l0s: tuple[float, ...]
    truth: tuple[tuple[str, object], ...] = ()  # TruthConfig overrides
    sae: tuple[tuple[str, object], ...] = ()  # SAEConfig overrides (width)


@dataclass(frozen=True)
class Suite:
    """What a bench trains: truths x L0 targets x seeds, with a shorter schedule than a study where needed."""

    name: str
    presets: tuple[PresetSpec, ...]
    seeds: int = 4  # two disjoint halves of seeds -> pooled / bagging stability between halves
    steps: int | None = None  # None = the preset's
    batch_size: int | None = None
    eval_tokens: int | None = None
    pool_refit_steps: int | None = None
    wide_factor: int = 2  # the wide single SAE has wide_factor x d_sae latents: the width of a bag of S / 2 = 2 seeds
    wide_seeds: int = 2  # seeds of the wide and long baselines: one per half of the seeds
    long_factor: int = 0  # > 0: a baseline at the base width trained long_factor x the steps (S / 2: a half's compute)
    max_probes: int = 5  # penalty calibration: at most this many one-seed probe runs per cell
    l0_tolerance: float = 0.1  # stop calibrating once |L0 / target - 1| <= this
    seed_mode: str = "shared_data"  # train.seed_mode of every cell (`synthsae bench --seed-mode`)


SUITES: dict[str, Suite] = {
    "quick": Suite("quick", (PresetSpec("tiny", "tiny", (3.0, 6.0)),), seeds=4, steps=400, eval_tokens=4096,
                   pool_refit_steps=100, max_probes=6, l0_tolerance=0.15),
    "standard": Suite("standard", (
        PresetSpec("default", "default", (6.0, 12.0)),
        PresetSpec("default_superposed", "default", (6.0, 12.0), truth=(("subspace_orthogonal", [False]),)),
    ), seeds=4, steps=1500, pool_refit_steps=150),
    "full": Suite("full", (
        PresetSpec("paper", "paper", (24.0, 32.0)),
        PresetSpec("synthbench16k", "synthbench16k", (25.0, 34.0), sae=(("d_sae", 4096),)),
    ), seeds=4),
}

PENALTY_KNOBS = ("l1_coeff", "l0_coeff")


# ----------------------------------------------------------------------------------------------- variants


def sparsity_knob(variant: str) -> str:
    """The SAEConfig field that sets a variant's L0: "k" (TopK family), "l0_coeff" (JumpReLU) or "l1_coeff".

    The class attribute `SAE.sparsity_knob`: l1_coeff by default, k on TopK and its subclasses, l0_coeff on JumpReLU.
    """
    from synthsae.sae import get_variant

    knob = get_variant(variant).sparsity_knob
    if knob not in ("k", *PENALTY_KNOBS):
        raise ConfigError(f"{variant}.sparsity_knob = {knob!r}: must be one of k, {', '.join(PENALTY_KNOBS)}")
    return knob


def bench_sae_settings(variant: str) -> dict:
    """SAEConfig fields a variant asks the bench to set (class attribute `SAE.bench_sae`; blocktopk: groups of 2)."""
    from synthsae.sae import get_variant

    return dict(get_variant(variant).bench_sae)


def k_for_l0(variant: str, sae_cfg, l0: float) -> int:
    """k of a TopK-family variant for an L0 target: the target over the latents one unit of k turns on
    (`SAE.latents_per_k(sae_cfg)`, default 1; blocktopk: the mean group size), rounded, at least 1."""
    from synthsae.sae import get_variant

    per = float(get_variant(variant).latents_per_k(sae_cfg))
    return max(1, int(round(l0 / per)))


def resolve_variants(names: list[str] | None) -> list[str]:
    """The variants to bench (default: every registered one); unknown names are a one-line ConfigError."""
    from synthsae.sae import get_variant, known_names, registered_variants

    if not names:
        return registered_variants()  # a broken plug-in is named in one warning line and left out
    seen = set()
    for n in names:
        if n in seen:
            raise ConfigError(f"--variants: {n!r} is given twice; name each variant once")
        seen.add(n)
        try:
            get_variant(n)  # only the named plug-ins are imported
        except ConfigError as exc:
            if "unknown" not in str(exc):
                raise ConfigError(f"--variants: {str(exc)}") from None
            raise ConfigError(f"--variants: {n!r} is not a registered variant; known variants are "
                              f"{', '.join(known_names())}") from None
    return list(names)


def get_suite(name: str, seed_mode: str | None = None, matched_compute: bool = False) -> Suite:
    """A named suite, with every cell's train.seed_mode set when given (validated: one line naming the allowed modes)
    and, with matched_compute, the long baseline (the base width trained S / 2 x the steps: a half's compute)."""
    from dataclasses import replace

    from synthsae.config import SEED_MODES

    if name not in SUITES:
        raise ConfigError(f"--suite = {name!r}: must be one of {', '.join(SUITES)}")
    suite = SUITES[name]
    if matched_compute:
        suite = replace(suite, long_factor=max(1, suite.seeds // 2))
    if seed_mode is None:
        return suite
    if seed_mode not in SEED_MODES:
        raise ConfigError(f"--seed-mode = {seed_mode!r}: must be one of {', '.join(SEED_MODES)}")
    return replace(suite, seed_mode=seed_mode)


# ----------------------------------------------------------------------------------------------- cells


def l0_tag(l0: float) -> str:
    return f"l0_{l0:g}"


def cell_dir(out: Path, spec: PresetSpec, l0: float, variant: str, wide: bool = False, long: bool = False) -> Path:
    return Path(out) / "cells" / spec.label / l0_tag(l0) / (variant + suffix(wide, long))


def suffix(wide: bool, long: bool = False) -> str:
    """The cell folder suffix of a baseline: @wide, @long, or none for the variant's own cell."""
    return WIDE if wide else LONG if long else ""


def cell_config(suite: Suite, spec: PresetSpec, variant: str, l0: float, wide: bool = False, long: bool = False) -> RunConfig:
    """The run config of one cell (before penalty calibration): the preset with the suite's schedule and L0."""
    cfg = preset(spec.preset)
    for key, value in spec.truth:
        setattr(cfg.truth, key, copy.deepcopy(value))
    for key, value in spec.sae:
        setattr(cfg.sae, key, value)
    cfg.sae.variant = variant
    for key, value in bench_sae_settings(variant).items():
        if key not in dict(spec.sae):
            setattr(cfg.sae, key, copy.deepcopy(value))
    if wide:
        cfg.sae.d_sae *= suite.wide_factor
        cfg.sae.matryoshka_prefixes = []
    t = cfg.train
    t.seeds = suite.wide_seeds if wide or long else suite.seeds
    t.init_seeds = []
    t.seed_mode = suite.seed_mode
    if suite.steps is not None:
        t.steps = suite.steps
        t.checkpoint_every = min(t.checkpoint_every, max(1, suite.steps // 3))
        cfg.sae.l1_warmup_steps = min(cfg.sae.l1_warmup_steps, max(1, suite.steps // 5))
    if long:  # matched compute: the steps of long_factor seeds, in one seed, at the base width
        t.steps *= max(1, suite.long_factor)
        t.checkpoint_every = min(t.checkpoint_every, max(1, t.steps // 3))
    if suite.batch_size is not None:
        t.batch_size = suite.batch_size
    if suite.eval_tokens is not None:
        cfg.analysis.eval_tokens = suite.eval_tokens
    if suite.pool_refit_steps is not None:
        cfg.analysis.pool_refit_steps = suite.pool_refit_steps
    if sparsity_knob(variant) == "k":
        cfg.sae.k = k_for_l0(variant, cfg.sae, l0)
    return validate(cfg)


def _eval_l0(run_dir: Path) -> float:
    from synthsae.checkpoint import load_train_summary

    l0 = load_train_summary(run_dir)["eval"]["l0"]
    return float(sum(l0) / len(l0))


def _next_coef(probes: list[dict], target: float, start: float) -> float:
    """Next penalty to probe (L0 falls as the penalty grows): interpolate in log-log space between the closest
    probes on either side of the target when there are both, else extrapolate (bounded to x10 per step)."""
    if not probes:
        return start
    lt = math.log(target)
    pts = [(math.log(p["coef"]), math.log(max(p["l0"], 1e-3))) for p in probes]
    above = [p for p in pts if p[1] > lt]
    below = [p for p in pts if p[1] <= lt]
    if above and below:
        (c0, y0), (c1, y1) = min(above, key=lambda p: p[1]), max(below, key=lambda p: p[1])
        w = (y0 - lt) / (y0 - y1) if y0 != y1 else 0.5
        return math.exp(c0 + min(0.9, max(0.1, w)) * (c1 - c0))  # strictly inside the bracket
    near = sorted(pts, key=lambda p: abs(p[1] - lt))[:2]
    c0, y0 = near[0]
    slope = -1.0  # L0 ~ 1 / penalty until two probes say otherwise
    if len(near) == 2 and near[1][0] != c0:
        slope = min(-0.2, max(-5.0, (near[1][1] - y0) / (near[1][0] - c0)))
    return math.exp(c0 + max(-math.log(10), min(math.log(10), (lt - y0) / slope)))


def calibrate(cfg: RunConfig, target: float, knob: str, folder: Path, suite: Suite, *, progress: bool,
              train: Callable) -> dict:
    """Set cfg.sae.<knob> so that the eval L0 of one seed trained with the cell's schedule is near `target`.

    Each probe is a one-seed run under folder/calibration/probe_<i> and is recorded in calibration.json as
    soon as it finishes, so a killed calibration resumes without repeating probes. Returns the record.
    """
    path = folder / "calibration.json"
    rec = json.loads(path.read_text()) if path.is_file() else {"knob": knob, "target": target, "probes": []}
    start = float(getattr(cfg.sae, knob))
    while True:
        probes = rec["probes"]
        if probes:
            best = min(probes, key=lambda p: abs(math.log(max(p["l0"], 1e-3) / target)))
            if abs(best["l0"] / target - 1) <= suite.l0_tolerance or len(probes) >= suite.max_probes:
                break
        coef = _next_coef(probes, target, start)
        pcfg = copy.deepcopy(cfg)
        pcfg.train.seeds, pcfg.train.init_seeds = 1, [cfg.train.resolved_init_seeds()[0]]
        setattr(pcfg.sae, knob, coef)
        pdir = folder / "calibration" / f"probe_{len(probes)}"
        if not (pdir / "train.json").is_file():
            train(pcfg, pdir, resume=True, progress=progress)
        probes.append({"coef": coef, "l0": _eval_l0(pdir)})
        atomic_write_json(path, rec)
    rec["chosen"] = best["coef"]
    rec["probe_l0"] = best["l0"]
    atomic_write_json(path, rec)
    setattr(cfg.sae, knob, best["coef"])
    return rec


def train_cell(suite: Suite, spec: PresetSpec, variant: str, l0: float, out: Path, *, wide: bool = False, long: bool = False,
               progress: bool = True, train: Callable | None = None) -> tuple[RunConfig, Path, dict | None]:
    """Calibrate (penalty variants) and train one cell unless its train.json exists; returns its config."""
    from synthsae.config import load as load_config
    from synthsae.train import train_run

    train = train or train_run
    folder = cell_dir(out, spec, l0, variant, wide, long)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "train.json").is_file():
        cal = folder / "calibration.json"
        return load_config(folder / "config.toml"), folder, json.loads(cal.read_text()) if cal.is_file() else None
    cfg = cell_config(suite, spec, variant, l0, wide, long)
    knob = sparsity_knob(variant)
    narrow = cell_dir(out, spec, l0, variant) / "calibration.json"
    if (wide or long) and knob != "k" and narrow.is_file():  # start from the narrow cell's penalty: fewer probes
        setattr(cfg.sae, knob, float(json.loads(narrow.read_text())["chosen"]))
    cal = calibrate(cfg, l0, knob, folder, suite, progress=progress, train=train) if knob != "k" else None
    train(cfg, folder, resume=True, progress=progress)
    return cfg, folder, cal


# ----------------------------------------------------------------------------------------------- numbers


def adapt_analysis(res) -> dict:
    """The leaderboard's view of one `analyze_run` AnalysisResult (the one place that reads its layout).

    Stability is over live latents with the rotated-seeds null; dead = never fired on the analysis' held-out
    sample; subspace recovery is the mean over every planted block of a geometry (a block with no latent counts 0).
    """
    truth = res.truth
    atoms = truth.atoms if truth is not None else None
    geo = {g.geometry: g for g in truth.by_geometry} if truth is not None else {}
    return {
        "stability": res.stability.mean.value, "stability_null": res.stability.mean.baseline,
        "stability_over": res.stability.over,
        "dead_fraction": res.frequency.frac_dead if res.frequency is not None else None,
        "atom_recovery": atoms.frac_recovered.value if atoms else None,
        "atom_recovery_chance": atoms.frac_recovered.baseline if atoms else None,
        "subspace_recovery_orthogonal": geo["orthogonal"].mean_recovery if "orthogonal" in geo else None,
        "subspace_recovery_superposed": geo["superposed"].mean_recovery if "superposed" in geo else None,
        **adapt_questions(res),
    }


def adapt_questions(res) -> dict:
    """Truth filter (AUROC of stability for true latents, its null, precision / recall of 'stable') and seed budget
    (the stable share's 95% spread at S - 1 seeds and the smallest n within +-0.05) of one AnalysisResult."""
    tf, sb = res.truth_filter, res.seed_budget
    return {
        "truth_auroc": tf.auroc.value if tf else None, "truth_auroc_null": tf.auroc.baseline if tf else None,
        "truth_precision": tf.precision.value if tf else None, "truth_recall": tf.recall.value if tf else None,
        "truth_base_rate": tf.base_rate if tf else None,
        "seed_budget_within": sb.rows[-1].stable_share_within if sb and sb.rows else None,
        "seed_budget_n": sb.smallest_n_within_target if sb else None,
    }


def adapt_pooling(pooled, truth, dec: torch.Tensor) -> tuple[dict, dict | None]:
    """The pooled-SAE and bagging baseline rows from one PoolingResult (primary pool; stability between halves)."""
    from synthsae.io import load_sae_folders

    v = pooled.variants[pooled.primary]
    allp = v.pools["all"]
    pdec = load_sae_folders([Path(allp.folder)]).W_dec[0].detach() if allp.folder else None
    mcc, chance = _mcc([pdec], truth) if pdec is not None else (None, None)
    pool_row = {
        "width": allp.width, "ev": allp.ev, "l0": allp.l0, "dead_fraction": 1 - allp.n_live / max(allp.width, 1),
        "stability": v.stability_pool_vs_pool.mean if v.stability_pool_vs_pool else None,
        "stability_null": v.stability_null.mean if v.stability_null else None,
        "mcc": mcc, "mcc_chance": chance, "seconds": pooled.seconds, "rule": v.name,
    }
    bag = pooled.bagging
    if bag is None or pooled.halves is None:
        return pool_row, None
    bags = [torch.cat([dec[s] for s in pooled.halves[h]]) for h in ("A", "B")]
    mcc, chance = _mcc(bags, truth)
    bag_row = {
        "width": bag.width, "ev": bag.ev_halves.mean, "l0": bag.l0_halves.mean,
        "stability": bag.stability_between_halves.mean, "stability_null": bag.stability_null.mean,
        "mcc": mcc, "mcc_chance": chance,
    }
    return pool_row, bag_row


GROUP_OVERLAP = 0.9  # a group reproduces in another seed when a group there spans the same space at this overlap


def group_numbers(sae, dec: torch.Tensor, freq: torch.Tensor | None) -> dict:
    """Group-level stability of a block-sparse variant (`SAE.latent_groups` has a group of >= 2 latents) beside the
    rotated-seeds null, over live groups (a group is live when one of its latents fired); None for the others.

    A group variant's features are its groups (a group's latents may rotate freely inside its span), so this, not
    the latent-level maxcos, is the stability that says whether its features reproduce across seeds.
    """
    from synthsae.metrics.analyze import rotated_seeds
    from synthsae.metrics.atlas import group_stability

    sizes = sae.latent_groups()
    if not sizes or max(sizes) < 2 or dec.shape[0] < 2:
        return {"group_stability": None, "group_stability_null": None, "n_groups": None}
    alive = freq.cpu() > 0 if freq is not None else None
    real = group_stability(dec, sizes, GROUP_OVERLAP, alive)
    null = group_stability(rotated_seeds(dec, None)[0], sizes, GROUP_OVERLAP, alive)
    return {"group_stability": real["mean"], "group_stability_null": null["mean"], "n_groups": len(sizes)}


def _mcc(dec_rows: list[torch.Tensor], truth, per: list | None = None) -> tuple[float | None, float | None]:
    """SynthSAEBench MCC averaged over dictionaries, and the same for a random dictionary of the first's shape
    (each dictionary's own MCC is appended to `per` when given)."""
    from synthsae.metrics.recovery import matched_mcc

    if truth is None or truth.n_atoms == 0:
        return None, None
    atoms = truth.atoms.float().cpu()
    g = torch.Generator().manual_seed(12345)
    vals = [matched_mcc(d.float().cpu(), atoms) for d in dec_rows]
    if per is not None:
        per.extend(vals)
    chance = matched_mcc(torch.randn(dec_rows[0].shape, generator=g), atoms)
    return sum(vals) / len(vals), chance


def cell_numbers(folder: Path, *, pool: bool = True, progress: bool = False) -> dict:
    """Every leaderboard number of one trained cell, from the project's metric functions.

    EV and L0: train.json's held-out evaluation. Stability (maxcos and strict), dead fraction, atom and subspace
    recovery: `analyze_run` (what `synthsae analyze` reports). MCC: SynthSAEBench's Hungarian on |cos|. Pooled
    SAE and bagging: `pooling_study` (primary pool, judged between disjoint halves of the seeds).
    """
    from synthsae.metrics.run_analysis import analysis_of, with_overrides
    from synthsae.source import Source
    from synthsae.pooling import PoolConfig
    from synthsae.study_stages import pool_run
    from synthsae.checkpoint import load_train_summary

    t0 = time.perf_counter()
    src = Source("run", folder, run_dir=folder, device="cpu")
    cfg, sae, truth = src.config, src.sae, src.truth
    summ = load_train_summary(folder)
    ev = summ["eval"]
    S = sae.n_seeds
    row: dict = {
        "variant": cfg.sae.variant, "d_sae": cfg.sae.d_sae, "seeds": S, "k": cfg.sae.k,
        "ev": 1.0 - sum(ev["fvu"]) / S, "l0": sum(ev["l0"]) / S,
        "train_seconds": summ["seconds"],
        "throughput": summ["steps"] * cfg.train.batch_size * S / max(summ["seconds"], 1e-9),
    }
    res, per = analysis_of(src)
    row.update(adapt_analysis(res))
    dec = sae.W_dec.detach().float().cpu()
    row.update(group_numbers(sae, dec, per.get("frequency")))
    strict_res = analysis_of(src, with_overrides(cfg.analysis, match="strict"))[0]
    strict = adapt_analysis(strict_res)
    row["stability_strict"], row["stability_strict_null"] = strict["stability"], strict["stability_null"]
    mcc_seeds: list = []
    row["mcc"], row["mcc_chance"] = _mcc(list(dec), truth, mcc_seeds)
    freq = per.get("frequency")
    row["per_seed"] = {  # the cell's numbers seed by seed (the columns are their means)
        "init_seed": list(cfg.train.resolved_init_seeds()), "ev": [1.0 - f for f in ev["fvu"]], "l0": list(ev["l0"]),
        "dead_fraction": (freq == 0).float().mean(1).tolist() if freq is not None else None,
        "stability": list(res.stability.per_seed_mean), "stability_strict": list(strict_res.stability.per_seed_mean),
        "mcc": mcc_seeds or None,
    }
    if pool and S >= 2:
        pooled = pool_run(src, {}, PoolConfig(widths=[cfg.sae.d_sae], rules=(cfg.analysis.pool_primary,),
                                              progress=progress))
        row["pooled"], row["bagging"] = adapt_pooling(pooled, truth, dec)
        row["pooled_stability"] = row["pooled"]["stability"]
    row["metric_seconds"] = time.perf_counter() - t0
    return row


# ----------------------------------------------------------------------------------------------- the bench


@dataclass
class BenchResult:
    out: Path
    rows: list[dict]
    trained: list[str] = field(default_factory=list)  # cells trained by this call (relative paths)
    seconds: float = 0.0


def check_out(out: Path, suite: Suite, resume: bool) -> None:
    """A bench folder is reused only with resume and only for the same suite (so cells stay comparable)."""
    marker = out / "suite.json"
    if out.exists() and any(out.iterdir()) and not resume:
        raise FileExistsError(f"{out}: is not empty (an earlier bench?); pass --resume to finish it or add variants to it")
    if marker.is_file():
        saved = json.loads(marker.read_text())
        have = dict(saved.get("suite") or {})
        have.setdefault("seed_mode", "shared_data")  # benches from before seed modes ...
        have.setdefault("long_factor", 0)  # ... and the long baseline
        if have != json.loads(json.dumps(asdict(suite))):
            raise ConfigError(f"--suite = {suite.name!r}: {out} holds a bench of suite {saved.get('name')!r} "
                              "with other settings; use another --out")


def default_jobs() -> int:
    """Cells trained at once: one on a GPU (a cell fills it), else min(2, CPU cores) (one torch thread each)."""
    import os

    if torch.cuda.is_available():
        return 1
    return max(1, min(2, os.cpu_count() or 1))


def check_jobs(jobs: int | None) -> int:
    if jobs is None:
        return default_jobs()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs = {jobs!r}: must be an integer >= 1 (cells trained at once)")
    cores = cpu_cores()
    if jobs > cores:  # each worker is a process with its own torch: more than the cores only thrashes (or hangs)
        raise ConfigError(f"--jobs = {jobs}: this machine has {cores} CPU core(s); give at most {cores}")
    return jobs


def bench_cell(out: Path, suite: Suite, spec: PresetSpec, l0: float, variant: str, wide: bool, *, pool: bool,
               progress: bool, long: bool = False) -> dict:
    """Train (if needed) and measure one cell, write its bench.json last; returns what the caller logs.

    Runs in the bench's process (--jobs 1) or in a worker process; every cell is seeded by its own config, so
    where it runs does not change its numbers.
    """
    t0 = time.perf_counter()
    folder = cell_dir(out, spec, l0, variant, wide, long)
    was_trained = (folder / "train.json").is_file()
    cfg, folder, cal = train_cell(suite, spec, variant, l0, out, wide=wide, long=long, progress=progress)
    from synthsae.threads import configure_threads

    configure_threads(cfg.train.batch_size, cfg.truth.d, cfg.sae.d_sae, "cpu")  # metrics: same threads as training
    row = cell_numbers(folder, pool=pool and not wide and not long, progress=progress)
    row.update({"preset": spec.label, "l0_target": l0, "wide": wide, "long": long, "calibration": cal,
                "calibration_seconds": _probe_seconds(folder)})
    # wall time from what is stored (so a resumed cell reports its whole cost): probes + training + metrics
    row["wall_seconds"] = row["calibration_seconds"] + row["train_seconds"] + row["metric_seconds"]
    atomic_write_json(folder / "bench.json", {"schema": BENCH_SCHEMA, **row})
    return {"folder": str(folder.relative_to(out)), "trained": not was_trained, "seconds": time.perf_counter() - t0}


def _worker_init(parent: int) -> None:
    """A bench worker: one torch thread (unless SYNTHSAE_THREADS says otherwise), and it stops if the bench dies.

    If the bench's process goes away (killed), the worker interrupts itself: training checkpoints after the
    current step and stops (as on Ctrl-C), so `--resume` finds the folder unlocked; after 15 s it exits anyway
    (a worker outside training, or one whose SIGINT is ignored: checkpoints are committed atomically, so an exit at
    any point leaves the last committed one).
    """
    import os
    import signal
    import threading

    os.environ.setdefault("SYNTHSAE_THREADS", "1")
    torch.set_num_threads(int(os.environ["SYNTHSAE_THREADS"]))

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(15.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="bench-parent-watch").start()


def _run_cells(todo: list[tuple[int, tuple]], n_jobs: int, run: Callable[[tuple], dict],
               on_done: Callable[[int, tuple, dict], None], log: Callable[[str], None], total: int) -> None:
    """Run the cells of `todo` (index, job) on n_jobs worker processes, at most n_jobs at once, in order except
    that a wide cell of a penalty variant waits for its own variant's cell (it starts from that calibration)."""
    import multiprocessing as mp
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pending = list(todo)
    narrow_left = {(j[0].label, j[1], j[2]) for _, j in todo if not (j[3] or j[4])}
    running: dict = {}
    ctx = mp.get_context("spawn")  # a fresh interpreter: no OpenMP state forked from this process
    ex = ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),))
    try:
        while pending or running:
            while pending and len(running) < n_jobs:
                ready = next((p for p in pending if not ((p[1][3] or p[1][4]) and sparsity_knob(p[1][2]) != "k"
                                                         and (p[1][0].label, p[1][1], p[1][2]) in narrow_left)), None)
                if ready is None:
                    break
                pending.remove(ready)
                i, (spec, l0, variant, wide, long) = ready
                log(f"[{i}/{total}] start {spec.label} L0 {l0:g} {variant}{suffix(wide, long)}")
                running[ex.submit(run, ready[1])] = ready
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                i, job = running.pop(fut)
                info = fut.result()  # a failed cell stops the bench (its error is raised here)
                if not (job[3] or job[4]):
                    narrow_left.discard((job[0].label, job[1], job[2]))
                on_done(i, job, info)
    except BaseException:
        for fut in running:
            fut.cancel()
        ex.shutdown(wait=True, cancel_futures=True)  # workers got the Ctrl-C too: let them checkpoint
        raise
    ex.shutdown(wait=True)


def run_bench(variants: list[str] | None, suite_name: str, out: str | Path, *, resume: bool = False,
              progress: bool = True, log: Callable[[str], None] = lambda m: None, pool: bool = True,
              jobs: int | None = None, seed_mode: str | None = None, matched_compute: bool = False) -> BenchResult:
    """Train and measure every missing cell, then write the leaderboard from every cell stored under `out`.

    jobs > 1 trains that many cells at once in worker processes (default: default_jobs()); the numbers are the
    same as with jobs = 1 (each cell is seeded by its own config and measured with the same torch threads).
    """
    import functools

    from synthsae.bench_report import write_leaderboard

    t0 = time.perf_counter()
    suite = get_suite(suite_name, seed_mode, matched_compute)
    names = resolve_variants(variants)
    n_jobs = check_jobs(jobs)
    out = Path(out)
    check_out(out, suite, resume)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "suite.json", {"schema": BENCH_SCHEMA, "name": suite.name, "suite": asdict(suite)})
    trained: list[str] = []
    # every variant's own cells first, then the wide baselines (a penalty variant's wide cell starts from its
    # calibration); within each, suite order
    jobs_list = [(spec, l0, v, wide, long) for wide, long in ((False, False), (True, False), (False, True))
                 if not long or suite.long_factor for spec in suite.presets for l0 in spec.l0s for v in names]
    todo = [(i, j) for i, j in enumerate(jobs_list, 1)
            if not (cell_dir(out, *j[:5]) / "bench.json").is_file()]
    n_done = len(jobs_list) - len(todo)

    def on_done(i: int, job: tuple, info: dict) -> None:
        nonlocal n_done
        n_done += 1
        if info["trained"]:
            trained.append(info["folder"])
        spec, l0, variant, wide, long = job
        log(f"[{n_done}/{len(jobs_list)} done] {spec.label} L0 {l0:g} {variant}{suffix(wide, long)}: "
            f"{info['seconds']:.0f} s ({time.perf_counter() - t0:.0f} s since start)")

    cell = functools.partial(_cell_job, out, suite, pool=pool)
    if n_jobs == 1 or len(todo) <= 1:
        for i, job in todo:
            spec, l0, variant, wide, long = job
            log(f"[{i}/{len(jobs_list)}] start {spec.label} L0 {l0:g} {variant}{suffix(wide, long)}")
            on_done(i, job, cell(job, progress=progress))
    else:
        _run_cells(todo, n_jobs, functools.partial(cell, progress=False), on_done, log, len(jobs_list))
    rows = collect_rows(out)
    write_leaderboard(out, rows, suite)
    return BenchResult(out, rows, trained, time.perf_counter() - t0)


def _cell_job(out: Path, suite: Suite, job: tuple, *, pool: bool, progress: bool) -> dict:
    spec, l0, variant, wide, long = job
    return bench_cell(out, suite, spec, l0, variant, wide, pool=pool, progress=progress, long=long)


def _probe_seconds(folder: Path) -> float:
    from synthsae.checkpoint import load_train_summary

    return float(sum(load_train_summary(p)["seconds"] for p in sorted(folder.glob("calibration/probe_*"))
                     if (p / "train.json").is_file()))


def collect_rows(out: Path) -> list[dict]:
    """Every stored cell's bench.json under out/cells (whatever variants earlier calls benched)."""
    rows = []
    for path in sorted(Path(out).glob("cells/*/*/*/bench.json")):
        rows.append(json.loads(path.read_text()))
    return rows
