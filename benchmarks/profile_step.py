"""Where a TopK training step's time goes: torch.profiler over a few steps, self time per op, next to the dense
encoder matmul alone (the bound) measured in the same process.

    python benchmarks/profile_step.py [--seeds 1,4,8] [--steps 4] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from synthsae.config import SAEConfig, TrainConfig
from synthsae.sae import build_sae
from synthsae.loop import new_state, train_steps


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,4,8")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--top", type=int, default=14)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    d, m, k, B = args.d, args.d_sae, args.k, args.batch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}, "
          f"d={d} d_sae={m} k={k} batch={B}")
    for S in [int(s) for s in args.seeds.split(",")]:
        sae = build_sae(SAEConfig(variant="topk", d_sae=m, k=k), d, list(range(S)), device=dev)
        tcfg = TrainConfig(seeds=S, steps=10**6, batch_size=B, lr=1e-4, warmup_steps=0)
        x = torch.randn(B, d, device=dev)
        state = new_state(sae, tcfg)
        for _ in range(2):  # warm-up
            train_steps(sae, iter([x]), state.step + 1, tcfg, progress=False, state=state, log_every=10**9)
        # the bound: the encoder matmul alone, same shapes, same buffers
        pre = torch.empty(S, B, m, device=dev)
        xs = x.unsqueeze(0).expand(S, B, d)
        enc = []
        for _ in range(args.steps):
            sync(dev)
            t = time.perf_counter()
            torch.baddbmm(sae.b_enc.detach().unsqueeze(1), xs, sae.W_enc.detach(), out=pre)
            sync(dev)
            enc.append(time.perf_counter() - t)
        def timed_steps() -> list[float]:
            out = []
            for _ in range(args.steps):
                sync(dev)
                t = time.perf_counter()
                train_steps(sae, iter([x]), state.step + 1, tcfg, progress=False, state=state, log_every=10**9)
                sync(dev)
                out.append(time.perf_counter() - t)
            return out

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            steps = timed_steps()
        plain = timed_steps()
        e, st = min(enc), min(plain)
        print(f"\nS={S}: step {st * 1e3:.1f} ms (profiled {min(steps) * 1e3:.1f} ms), encoder matmul alone {e * 1e3:.1f} ms "
              f"-> step at {e / st:.0%} of the encoder-forward bound")
        key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        events = sorted(prof.key_averages(), key=lambda ev: getattr(ev, key), reverse=True)
        total = sum(getattr(ev, key) for ev in events)
        for ev in events[: args.top]:
            print(f"  {ev.key[:48]:48s} {getattr(ev, key) / args.steps / 1e3:8.2f} ms/step {getattr(ev, key) / total:6.1%}"
                  f"  x{ev.count // args.steps}")


if __name__ == "__main__":
    main()
