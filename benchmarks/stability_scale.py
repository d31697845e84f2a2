"""Scale check: maxcos stability of S seeds x m latents x d, chunked (never an (S*m) x (S*m) matrix).

    python benchmarks/stability_scale.py            # S=8, m=32768, d=768
    python benchmarks/stability_scale.py --quick    # S=4, m=4096, d=768
    torchrun --standalone --nproc-per-node N benchmarks/stability_scale.py ...   # seed pairs split over N ranks
Prints wall time, throughput and peak resident memory; the numbers go into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from synthsae.metrics.matching import BLOCK_ELEMS, DEFAULT_CHUNK
from synthsae.metrics.stability import pair_scores, soft_stability, stability


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--m", "--latents", dest="m", type=int, default=32768)  # --latents under torchrun (it claims --m)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--quick", action="store_true", help="S=4, m=4096")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.m = 4, 4096
    if args.threads:
        torch.set_num_threads(args.threads)
    S, m, d = args.seeds, args.m, args.d
    g = torch.Generator().manual_seed(0)
    # correlated seeds: a shared dictionary plus per-seed noise of a per-latent level, so stability varies
    base = torch.randn(m, d, generator=g)
    level = torch.empty(m, 1).uniform_(0.3, 1.2, generator=g)
    dec = torch.stack([base + level * torch.randn(m, d, generator=g) for _ in range(S)])
    from synthsae import distributed

    dev = torch.device(args.device)
    dd = distributed.setup(dev)
    dev = distributed.rank_device(dev, dd)
    rss0 = peak_rss_mb()
    distributed.barrier("start")
    t0 = time.perf_counter()
    with distributed.sharing_pairs():  # one process: a no-op
        scores, _ = pair_scores(dec, "maxcos", device=dev)
    stab = stability(scores, 0.7)
    soft = soft_stability(scores)
    wall = time.perf_counter() - t0
    pairs = S * (S - 1) // 2
    flops = pairs * 2.0 * m * m * d
    out = {
        "seeds": S, "m": m, "d": d, "device": str(dev), "threads": torch.get_num_threads(), "processes": dd.world,
        "wall_s": round(wall, 2), "gflops_per_s": round(flops / wall / 1e9, 1),
        "latent_pairs_per_s": round(pairs * m * m / wall / 1e6, 1),
        "peak_rss_mb": round(peak_rss_mb(), 0), "rss_before_mb": round(rss0, 0),
        "dictionary_mb": round(dec.numel() * 4 / 2**20, 0),
        "cos_block_mb": round(min(DEFAULT_CHUNK, BLOCK_ELEMS // m) * m * 4 / 2**20, 0),
        "full_Sm_x_Sm_matrix_gb": round((S * m) ** 2 * 4 / 2**30, 1),
        "mean_stability": round(float(stab.mean()), 4), "mean_soft_stability": round(float(soft.mean()), 4),
    }
    if dd.is_main:
        print(json.dumps(out))
    distributed.teardown()


if __name__ == "__main__":
    main()
