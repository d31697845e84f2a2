"""Timing of the reference sparse ops against the Triton kernels at one shape, for the device check.

Times are per call in milliseconds (CUDA events on CUDA, perf_counter elsewhere), mean of `repeats` calls after
two warm-up calls; each result also reports the largest difference between the two paths' outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from synthsae.sae import kernels


def _timer(device: torch.device, fn: Callable[[], object], repeats: int) -> float:
    """Mean milliseconds per call of fn after two warm-up calls."""
    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) * 1e3 / repeats


def random_topk_indices(S: int, B: int, m: int, k: int, device: torch.device, gen: torch.Generator) -> Tensor:
    """Duplicate-free latent indices [S, B, k] without an [S, B, m] draw: entry j lies in its own stretch of m // k
    latents after a random per-row start (stretches are disjoint mod m)."""
    s = m // k
    start = torch.randint(0, m, (S, B, 1), generator=gen, device=device)
    jitter = torch.randint(0, s, (S, B, k), generator=gen, device=device)
    return (start + torch.arange(k, device=device) * s + jitter) % m


def _triton_usable(device: torch.device) -> str | None:
    """None when the Triton path can run on `device`, else why not."""
    if not kernels.triton_available():
        return f"triton unavailable: {kernels.triton_unavailable_reason()}"
    if device.type != "cuda" and not kernels._interpreting():
        return "triton runs on CUDA tensors (or on the CPU with TRITON_INTERPRET=1)"
    return None


def bench_decoder(S: int, B: int, m: int, d: int, k: int, device: str | torch.device = "cuda",
                  dtype: torch.dtype = torch.float32, repeats: int = 10, seed: int = 0) -> dict:
    """Sparse decode of a TopK code (S seeds, B tokens, k of m latents, width d), forward and forward + backward
    (gradients of the values and of W_dec; the by-latent sort of the code included, as in training)."""
    from synthsae.sae.sparse import code_from_topk, sparse_decode

    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)  # drawn on the device: W is GBs at real sizes
    W = (torch.randn(S, m, d, generator=gen, device=dev) / d**0.5).to(dtype).requires_grad_(True)
    idx = random_topk_indices(S, B, m, k, dev, gen)
    vals = torch.rand(S * B * k, generator=gen, device=dev).to(dtype).requires_grad_(True)
    g_out = torch.randn(S * B, d, generator=gen, device=dev).to(dtype)
    code = code_from_topk(idx, m)

    def forward() -> Tensor:
        with torch.no_grad():
            return sparse_decode(vals, W, code)

    def both() -> tuple[Tensor, Tensor, Tensor]:
        code._by_col = None
        vals.grad = W.grad = None
        out = sparse_decode(vals, W, code)
        out.backward(g_out)
        return out, vals.grad, W.grad

    res: dict = {"S": S, "B": B, "m": m, "d": d, "k": k, "device": str(dev), "dtype": str(dtype).replace("torch.", ""),
                 "repeats": repeats}
    with kernels.forced("reference"):
        res["reference_forward_ms"] = _timer(dev, forward, repeats)
        res["reference_ms"] = _timer(dev, both, repeats)
        ref = [t.detach().clone() for t in both()]
    why = _triton_usable(dev)
    res["triton_skipped"] = why
    if why is None:
        with kernels.forced("triton"):
            res["triton_forward_ms"] = _timer(dev, forward, repeats)
            res["triton_ms"] = _timer(dev, both, repeats)
            got = both()
        res["speedup"] = res["reference_ms"] / res["triton_ms"] if res["triton_ms"] > 0 else None
        res["forward_speedup"] = (res["reference_forward_ms"] / res["triton_forward_ms"]
                                  if res["triton_forward_ms"] > 0 else None)
        for name, a, b in zip(("out", "grad_values", "grad_W_dec"), ref, got):
            a, b = a.detach().float(), b.detach().float()
            res[f"max_abs_diff_{name}"] = float((a - b).abs().max()) if a.numel() else 0.0
            res[f"max_abs_{name}"] = float(a.abs().max()) if a.numel() else 0.0
    return res


def bench_topk(S: int, B: int, m: int, k: int, device: str | torch.device = "cuda", dtype: torch.dtype = torch.float32,
               repeats: int = 10, seed: int = 0) -> dict:
    """Row top-k of [S, B, m] pre-activations: torch.topk (unsorted) against the Triton block-maxima kernel."""
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    pre = torch.randn(S, B, m, generator=gen, device=dev).to(dtype)
    res: dict = {"S": S, "B": B, "m": m, "k": k, "device": str(dev), "dtype": str(dtype).replace("torch.", ""),
                 "repeats": repeats}
    res["reference_ms"] = _timer(dev, lambda: torch.topk(pre, k, dim=-1, sorted=False), repeats)
    why = _triton_usable(dev) or (None if kernels.topk_fits(m, k) else f"m = {m}, k = {k}: needs m % 16 == 0, k <= m / 16")
    res["triton_skipped"] = why
    if why is None:
        res["triton_ms"] = _timer(dev, lambda: kernels.row_topk_triton(pre, k), repeats)
        res["speedup"] = res["reference_ms"] / res["triton_ms"] if res["triton_ms"] > 0 else None
        rv = torch.topk(pre, k, dim=-1).values
        tv, ti = kernels.row_topk_triton(pre, k)
        res["values_equal"] = bool(torch.equal(rv, tv.sort(dim=-1, descending=True).values))
        res["indices_point_at_values"] = bool(torch.equal(pre.gather(-1, ti), tv))
    return res


def bench_batch_topk(S: int, B: int, m: int, k: int, device: str | torch.device = "cuda",
                     dtype: torch.dtype = torch.float32, repeats: int = 10, seed: int = 0) -> dict:
    """BatchTopK's selection (the top B * k of each seed's B * m pre-activations): torch.topk against
    sparse.block_topk (block maxima in torch ops), the path BatchTopK takes on CUDA."""
    from synthsae.sae.sparse import block_topk

    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    pre = torch.randn(S, B * m, generator=gen, device=dev).to(dtype)
    K = B * k
    res: dict = {"S": S, "B": B, "m": m, "k": k, "device": str(dev), "dtype": str(dtype).replace("torch.", ""),
                 "repeats": repeats}
    res["reference_ms"] = _timer(dev, lambda: torch.topk(pre, K, dim=-1, sorted=False), repeats)
    if not kernels.use_block_topk(pre, B * m, K) and dev.type == "cuda":
        res["block_skipped"] = f"B * m = {B * m} has fewer than 4 x {K} blocks of 16"
        return res
    res["block_ms"] = _timer(dev, lambda: block_topk(pre, K), repeats)
    res["speedup"] = res["reference_ms"] / res["block_ms"] if res["block_ms"] > 0 else None
    rv = torch.topk(pre, K, dim=-1).values
    bv, bi = block_topk(pre, K)
    res["values_equal"] = bool(torch.equal(rv, bv.sort(dim=-1, descending=True).values))
    res["indices_point_at_values"] = bool(torch.equal(pre.gather(-1, bi), bv))
    return res


if __name__ == "__main__":  # python -m synthsae.sae.kernels.bench S B m d k [device] [dtype]: one JSON line each
    import json
    import sys

    S_, B_, m_, d_, k_ = (int(a) for a in sys.argv[1:6])
    dev_ = sys.argv[6] if len(sys.argv) > 6 else ("cuda" if torch.cuda.is_available() else "cpu")
    dt_ = getattr(torch, sys.argv[7]) if len(sys.argv) > 7 else torch.float32
    print(json.dumps(bench_decoder(S_, B_, m_, d_, k_, device=dev_, dtype=dt_)))
    print(json.dumps(bench_topk(S_, B_, m_, k_, device=dev_, dtype=dt_)))
    print(json.dumps(bench_batch_topk(S_, B_, m_, k_, device=dev_, dtype=dt_)))
