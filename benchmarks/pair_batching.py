"""Speed-up of the batched maxcos pair path over the per-pair loop (stability of many small dictionaries).

    python benchmarks/pair_batching.py                 # S = 50, 100 (loop and batched), 1000 (batched only)
    python benchmarks/pair_batching.py --seeds 60 --m 64 --d 32 --no-large

Both paths run in this process on the same decoders; the ratio (loop time / batched time) is the number to read,
and the two score tables are compared entry by entry. Numbers go into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from synthsae.metrics.stability import pair_scores, stability


def decoders(S: int, m: int, d: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(m, d, generator=g)
    return torch.stack([base + 0.8 * torch.randn(m, d, generator=g) for _ in range(S)])


def timed(dec: torch.Tensor, batched: bool) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    sc, _ = pair_scores(dec, "maxcos", batched=batched, progress=False)
    return time.perf_counter() - t0, sc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="*", default=[50, 100])
    ap.add_argument("--m", type=int, default=64)
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--large", type=int, default=1000, help="seeds timed on the batched path only (0 = skip)")
    ap.add_argument("--no-large", action="store_true")
    ap.add_argument("--analyze", type=int, default=0, help="also time the whole analysis of this many seeds both ways")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for S in args.seeds:
        dec = decoders(S, args.m, args.d)
        t_loop, a = timed(dec, False)
        t_bat, b = timed(dec, True)
        same = bool(torch.equal(stability(a, 0.7), stability(b, 0.7)))
        diff = float((a - b).abs().nan_to_num(0.0).max())
        print(f"S={S} m={args.m} d={args.d}: {S * (S - 1) // 2} pairs; loop {t_loop:.2f}s, batched {t_bat:.2f}s, "
              f"ratio {t_loop / t_bat:.1f}x; max |score diff| {diff:.2e}; stability equal {same}", flush=True)
    if args.analyze:
        import synthsae.metrics.stability as stab_mod
        from synthsae.config import AnalysisConfig
        from synthsae.metrics.analyze import analyze_with_latents

        dec = decoders(args.analyze, args.m, args.d)
        times = {}
        for flag in (False, True):
            stab_mod.BATCHED = flag
            t0 = time.perf_counter()
            analyze_with_latents(dec, dec.transpose(1, 2).contiguous(), None, None, AnalysisConfig(), "cpu", None)
            times[flag] = time.perf_counter() - t0
        print(f"analyze S={args.analyze} m={args.m} d={args.d}: loops {times[False]:.1f}s, batched {times[True]:.1f}s, "
              f"ratio {times[False] / times[True]:.2f}x", flush=True)
    if args.large and not args.no_large:
        S = args.large
        t_bat, _ = timed(decoders(S, args.m, args.d), True)
        print(f"S={S} m={args.m} d={args.d}: {S * (S - 1) // 2} pairs; batched {t_bat:.1f}s", flush=True)


if __name__ == "__main__":
    main()
