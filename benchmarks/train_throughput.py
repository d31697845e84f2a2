"""Training throughput of the multi-seed trainer: tokens x seeds per second, batched vs one seed at a time,
against a dense-matmul ceiling measured in the same process (so ratios hold on a noisy shared machine).

    python benchmarks/train_throughput.py [--quick] [--variants topk,batchtopk] [--seeds 1,4,8] [--json out.json]

Bound: the TopK floor is the dense encoder forward, 2 * d * d_sae FLOPs per token and seed; at the measured
matmul ceiling C (FLOP/s) that is C / (2 d d_sae) tokens/s per seed. "fraction of bound" = measured tokens/s
per seed / that bound, where a batched step of S seeds counts as S seed-steps (1.0 = each seed's whole
training step costs no more than its encoder forward alone).
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # PyTorch's huge-page allocator (before importing torch)

import argparse
import json
import time

import torch

from synthsae.config import SAEConfig, TrainConfig
from synthsae.sae import build_sae
from synthsae.train import train_steps


def matmul_ceiling(B: int, d: int, m: int, reps: int) -> float:
    """FLOP/s of the encoder-shaped matmul [B, d] @ [d, m] into a reused output buffer (best of reps)."""
    x, w = torch.randn(B, d), torch.randn(d, m)
    out = torch.empty(B, m)
    torch.mm(x, w, out=out)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(x, w, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * B * d * m / best


def time_training(variant: str, seeds: list[int], B: int, d: int, m: int, k: int, steps: int, warmup: int) -> float:
    """Seconds per step (best of `steps` single-step timings after `warmup` steps) of one batched SAE over `seeds`."""
    cfg = SAEConfig(variant=variant, d_sae=m, k=k)
    tcfg = TrainConfig(seeds=len(seeds), steps=10**6, batch_size=B, lr=1e-4, warmup_steps=0)
    sae = build_sae(cfg, d, seeds)
    x = torch.randn(B, d)
    from synthsae.train import new_state

    state = new_state(sae, tcfg)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        train_steps(sae, iter([x]), state.step + 1, tcfg, progress=False, state=state, log_every=10**9)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]  # median: robust to other processes on the machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps, S in {1, 4} only (about a minute)")
    ap.add_argument("--variants", default="topk")
    ap.add_argument("--seeds", default=None, help="comma-separated S values (default 1,4,8; quick: 1,4)")
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    S_list = [int(s) for s in (args.seeds or ("1,4" if args.quick else "1,4,8")).split(",")]
    steps, warmup = (3, 1) if args.quick else (6, 2)
    d, m, k, B = args.d, args.d_sae, args.k, args.batch

    ceiling = matmul_ceiling(B, d, m, reps=5 if args.quick else 10)
    bound = ceiling / (2 * d * m)  # tokens/s per seed if a step cost only the encoder forward
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f}; d={d} d_sae={m} k={k} "
          f"batch={B} float32")
    print(f"dense matmul ceiling {ceiling / 1e9:.1f} GFLOP/s -> encoder-forward bound {bound:,.0f} tokens/s per seed")
    rows = []
    for variant in args.variants.split(","):
        one = time_training(variant, [0], B, d, m, k, steps, warmup)  # a single seed, also the sequential unit
        for S in S_list:
            batched = one if S == 1 else time_training(variant, list(range(S)), B, d, m, k, steps, warmup)
            seq = sum(time_training(variant, [s], B, d, m, k, max(2, steps // 2), 1) for s in range(S)) if S > 1 else one
            tps = B * S / batched
            row = {
                "variant": variant, "S": S, "step_s": batched, "tokens_x_seeds_per_s": tps,
                "sequential_tokens_x_seeds_per_s": B * S / seq, "batched_over_sequential": seq / batched,
                "fraction_of_bound_per_seed": tps / bound,  # seed-steps/s vs one seed's encoder forward at the ceiling
            }
            rows.append(row)
            print(f"{variant:10s} S={S}: {tps:10,.0f} tok*seeds/s (step {batched * 1e3:7.1f} ms) | sequential "
                  f"{row['sequential_tokens_x_seeds_per_s']:10,.0f} | batched/sequential {row['batched_over_sequential']:.2f}x "
                  f"| {row['fraction_of_bound_per_seed']:.0%} of encoder-forward bound per seed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ceiling_flops": ceiling, "bound_tokens_per_s": bound, "load_average": load,
                       "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
