"""CPU cost of one `synthsae bench` cell per variant, from short runs, and the suite's extrapolated total.

For every variant, on the suite's first truth at its first L0 target: a normal cell (S seeds) and a wide cell
(wide_factor x d_sae, wide_seeds seeds) are trained for --short and --long steps (the difference gives the
per-step CPU, the rest is the fixed cost: truth, evaluation, files), a one-seed calibration probe (normal and wide
width) for --long steps, and the leaderboard metrics of the normal cell (analysis x 2, MCC, pooling) and of the wide one (no
pooling). Times are this process's CPU seconds (time.process_time, one torch thread): other tenants of a shared
machine inflate them far less than wall time (cache sharing only); on an idle core wall time ~= CPU time.

    python benchmarks/bench_cell_cost.py --suite standard [--variants topk,relu] [--probes 2]

The total is sum over cells of (fixed + steps x per-step + metrics) + probes per penalty cell x the probe's
cost at the suite's steps (a one-seed probe of --long steps, fixed cost included); --probes / --wide-probes are
the mean numbers of calibration probes per penalty variant's cell and wide cell (a stored bench folder's
calibration.json files say how many were used: --from-bench DIR reads them).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("SYNTHSAE_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthsae.bench import cell_config, cell_numbers, get_suite, resolve_variants, sparsity_knob  # noqa: E402
from synthsae.train import train_run  # noqa: E402


def cpu_of(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def train_cost(cfg, steps: int, folder: Path) -> float:
    c = copy.deepcopy(cfg)
    c.train.steps, c.train.checkpoint_every = steps, max(1, steps // 3)
    c.sae.l1_warmup_steps = min(c.sae.l1_warmup_steps, max(1, steps // 5))
    return cpu_of(lambda: train_run(c, folder, progress=False))


def measure(suite, variant: str, short: int, long: int, root: Path) -> dict:
    spec, l0 = suite.presets[0], suite.presets[0].l0s[0]
    out = {"variant": variant, "knob": sparsity_knob(variant)}
    for wide in (False, True):
        cfg = cell_config(suite, spec, variant, l0, wide)
        tag = "wide" if wide else "normal"
        a = train_cost(cfg, short, root / f"{variant}_{tag}_short")
        b = train_cost(cfg, long, root / f"{variant}_{tag}_long")
        per = (b - a) / (long - short)
        out[tag] = {"per_step": per, "fixed": max(0.0, a - short * per)}
        folder = root / f"{variant}_{tag}_long"
        out[tag]["metrics"] = cpu_of(lambda: cell_numbers(folder, pool=not wide))
    if out["knob"] != "k":
        for wide in (False, True):
            cfg = cell_config(suite, spec, variant, l0, wide)
            cfg.train.seeds, cfg.train.init_seeds = 1, [0]
            tag = "wide" if wide else "normal"
            out[tag]["probe"] = train_cost(cfg, long, root / f"{variant}_probe_{tag}") / long  # per step, fixed cost in
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="standard")
    ap.add_argument("--variants", default="")
    ap.add_argument("--short", type=int, default=100)
    ap.add_argument("--long", type=int, default=300)
    ap.add_argument("--probes", type=float, default=None, help="mean calibration probes per penalty variant's cell")
    ap.add_argument("--wide-probes", type=float, default=None, help="the same for its wide cell (starts from the "
                    "variant's penalty, so usually 1)")
    ap.add_argument("--from-bench", type=Path, default=None, help="read the probe count from a bench folder")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    suite = get_suite(args.suite)
    names = resolve_variants([v for v in args.variants.split(",") if v] or None)
    probes, wprobes = args.probes, args.wide_probes
    if args.from_bench is not None:
        cal = {p: len(json.loads(p.read_text())["probes"]) for p in args.from_bench.glob("cells/*/*/*/calibration.json")}
        n = [c for p, c in cal.items() if not p.parent.name.endswith("@wide")]
        w = [c for p, c in cal.items() if p.parent.name.endswith("@wide")]
        probes = statistics.mean(n) if n else probes
        wprobes = statistics.mean(w) if w else wprobes
        print(f"{len(cal)} calibrated cells in {args.from_bench}: {probes} / {wprobes} probes per cell / wide cell")
    probes = 3.0 if probes is None else probes
    wprobes = 1.0 if wprobes is None else wprobes
    steps = suite.steps
    n_cells = sum(len(s.l0s) for s in suite.presets)  # per variant and kind
    total = 0.0
    print(f"suite {suite.name}: {steps} steps, {n_cells} (truth, L0) per variant, {suite.seeds} seeds, "
          f"{probes:.2f} / {wprobes:.2f} probes per penalty cell / its wide cell; CPU seconds, one torch thread")
    print("variant | normal ms/step | wide ms/step | normal fixed s | wide fixed s | metrics normal s | metrics wide s"
          " | probe ms/step | cell normal s | cell wide s")
    with tempfile.TemporaryDirectory() as tmp:
        for v in names:
            m = measure(suite, v, args.short, args.long, Path(tmp))
            n, w = m["normal"], m["wide"]
            probe_step = n.get("probe", 0.0)
            cell_n = n["fixed"] + steps * n["per_step"] + n["metrics"] + probes * steps * n.get("probe", 0.0)
            cell_w = w["fixed"] + steps * w["per_step"] + w["metrics"] + wprobes * steps * w.get("probe", 0.0)
            total += n_cells * (cell_n + cell_w)
            print(f"{v} | {1e3 * n['per_step']:.1f} | {1e3 * w['per_step']:.1f} | {n['fixed']:.1f} | {w['fixed']:.1f} | "
                  f"{n['metrics']:.1f} | {w['metrics']:.1f} | {1e3 * probe_step:.1f} | {cell_n:.0f} | {cell_w:.0f}",
                  flush=True)
    print(f"total: {total:.0f} CPU s = {total / 60:.1f} CPU min for {2 * n_cells * len(names)} cells; "
          f"with {args.jobs} jobs on {args.jobs} idle cores ~ {total / 60 / args.jobs:.1f} min wall")


if __name__ == "__main__":
    main()
