"""Samples per second of the ground-truth model for the `default` and `paper` presets.

Sampling must never be what limits training: compare these numbers with the trainer's tokens/s in
benchmarks/RESULTS.md. Usage: python benchmarks/sample_throughput.py [--device cpu] [--batch 4096] [--repeats 5] [--threads 1]
(--threads 0 = torch's default; on a machine other processes share, one thread is the robust choice: see
synthsae/threads.py). The header prints the load average, so a loaded run is recognisable.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from synthsae.config import preset
from synthsae.truth import build_truth, make_generator, sample


def measure(name: str, device: str, batch: int, repeats: int) -> tuple[float, float]:
    """(samples/s with details=False as training uses it, samples/s with the full firing record)."""
    truth = build_truth(preset(name).truth, device=device)
    rates = []
    for details in (False, True):
        gen = make_generator(0, device)
        sample(truth, batch, gen, details=details)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            sample(truth, batch, gen, details=details)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rates.append(batch * repeats / (time.perf_counter() - t0))
    return rates[0], rates[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--presets", nargs="+", default=["default", "paper", "synthbench16k"])
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"device {args.device}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, batch {args.batch}, "
          f"load average {load}")
    print(f"{'preset':<14} {'d':>4} {'components':>10} {'samples/s (x only)':>19} {'samples/s (full record)':>24}")
    for name in args.presets:
        cfg = preset(name).truth
        fast, full = measure(name, args.device, args.batch, args.repeats)
        print(f"{name:<14} {cfg.d:>4} {cfg.n_components:>10} {fast:>19,.0f} {full:>24,.0f}")


if __name__ == "__main__":
    main()
