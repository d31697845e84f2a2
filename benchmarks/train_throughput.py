"""Training throughput of the multi-seed trainer: tokens x seeds per second, batched vs one seed at a time,
against a dense-matmul ceiling measured in the same process (so ratios hold on a noisy shared machine).

    python benchmarks/train_throughput.py [--quick] [--variants topk,batchtopk] [--seeds 1,4,8] [--json out.json]
    python benchmarks/train_throughput.py --device cuda [--dtype bfloat16|tf32]    # on a GPU: same ratios

On CUDA every timing is bracketed by torch.cuda.synchronize, the ceiling is the same [B, d] x [d, m] matmul in the
dtype the selection matmul uses (bfloat16 / TF32 / float32), and the step runs with train.dtype = --dtype.

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
from synthsae.loop import train_steps


CLOCK = time.perf_counter  # --clock cpu: time.process_time (this process's CPU seconds: on a shared machine the
                           # other tenants' load drops out; only valid for CPU runs with one torch thread)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(B: int, d: int, m: int, reps: int, device: torch.device = torch.device("cpu"),
                   dtype: str = "float32") -> float:
    """FLOP/s of the encoder-shaped matmul [B, d] @ [d, m] into a reused output buffer (best of reps), in the
    precision the training step's selection matmul uses."""
    mm_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}.get(dtype, torch.float32)
    x, w = torch.randn(B, d, device=device, dtype=mm_dtype), torch.randn(d, m, device=device, dtype=mm_dtype)
    out = torch.empty(B, m, device=device, dtype=mm_dtype)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    try:
        torch.mm(x, w, out=out)
        best = float("inf")
        for _ in range(reps):
            sync(device)
            t = CLOCK()
            torch.mm(x, w, out=out)
            sync(device)
            best = min(best, CLOCK() - t)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return 2 * B * d * m / best


def time_training(variant: str, seeds: list[int], B: int, d: int, m: int, k: int, steps: int, warmup: int,
                  device: torch.device = torch.device("cpu"), dtype: str = "float32") -> float:
    """Seconds per step (median of `steps` single-step timings after `warmup` steps) of one batched SAE over `seeds`."""
    from synthsae.loop import new_state

    cfg = SAEConfig(variant=variant, d_sae=m, k=k)
    tcfg = TrainConfig(seeds=len(seeds), steps=10**6, batch_size=B, lr=1e-4, warmup_steps=0, dtype=dtype)
    try:
        from synthsae.loop import PARAM_DTYPE, set_precision
    except ImportError:  # an older checkout (before/after comparisons): float32 only
        PARAM_DTYPE, set_precision = {}, lambda sae, name: None
    sae = build_sae(cfg, d, seeds, device=device, dtype=PARAM_DTYPE.get(dtype, torch.float32))
    set_precision(sae, dtype)
    x = torch.randn(B, d, device=device, dtype=sae.dtype)
    state = new_state(sae, tcfg)
    times = []
    for i in range(warmup + steps):
        sync(device)
        t = CLOCK()
        train_steps(sae, iter([x]), state.step + 1, tcfg, progress=False, state=state, log_every=10**9)
        sync(device)
        if i >= warmup:
            times.append(CLOCK() - t)
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
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    ap.add_argument("--dtype", default="float32", help="train.dtype: float32, bfloat16, float16, tf32")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: time.process_time (CPU runs with --threads 1 on a shared machine)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    global CLOCK
    if args.clock == "cpu":
        if args.device != "cpu" or args.threads != 1:
            ap.error("--clock cpu needs --device cpu --threads 1 (CPU seconds of one thread = its busy time)")
        CLOCK = time.process_time
    dev = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    S_list = [int(s) for s in (args.seeds or ("1,4" if args.quick else "1,4,8")).split(",")]
    steps, warmup = (3, 1) if args.quick else (6, 2)
    if dev.type == "cuda":
        steps, warmup = steps * 5, warmup * 5  # GPU steps are short: more of them for a stable median
    d, m, k, B = args.d, args.d_sae, args.k, args.batch

    ceiling = matmul_ceiling(B, d, m, reps=5 if args.quick else 10, device=dev, dtype=args.dtype)
    bound = ceiling / (2 * d * m)  # tokens/s per seed if a step cost only the encoder forward
    load = os.getloadavg()[0]
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, load average {load:.1f}; d={d} d_sae={m} k={k} batch={B} "
          f"dtype {args.dtype}, {args.clock} clock")
    print(f"dense matmul ceiling {ceiling / 1e9:.1f} GFLOP/s -> encoder-forward bound {bound:,.0f} tokens/s per seed")
    rows = []
    for variant in args.variants.split(","):
        run = dict(device=dev, dtype=args.dtype)
        one = time_training(variant, [0], B, d, m, k, steps, warmup, **run)  # a single seed, also the sequential unit
        for S in S_list:
            batched = one if S == 1 else time_training(variant, list(range(S)), B, d, m, k, steps, warmup, **run)
            seq = (sum(time_training(variant, [s], B, d, m, k, max(2, steps // 2), 1, **run) for s in range(S))
                   if S > 1 else one)
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
                       "device": str(dev), "dtype": args.dtype, "clock": args.clock,
                       "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
