"""Run-time choice between the reference sparse ops (ATen: embedding_bag, sampled matmul, torch.topk) and the Triton
kernels of `triton_sparse`, which serve the same three calls on CUDA.

SYNTHSAE_KERNELS (read at every call, so a test or the device check can switch it):
  auto (default)  Triton for CUDA tensors when triton imports, else the reference;
  reference       always the reference (the fallback, and what the kernels are tested against);
  triton          Triton for CUDA tensors, and for CPU tensors when TRITON_INTERPRET=1 (the interpreter; tests).
Per op, after an optional default: e.g. `auto,topk:reference` (ops: decode = the bag and per-entry dots of the
decode and its gradients, topk = the row top-k of TopK / AuxK, batch_topk = BatchTopK's block-maxima selection).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from synthsae.errors import ConfigError

MODES = ("auto", "reference", "triton")
ENV = "SYNTHSAE_KERNELS"
_triton_error: str | None = None


OPS = ("decode", "topk", "batch_topk")


def mode(op: str | None = None) -> str:
    """The kernel choice for `op` (or the default) from SYNTHSAE_KERNELS (one-line error naming the allowed values)."""
    raw = os.environ.get(ENV, "auto").strip().lower() or "auto"
    default, per = "auto", {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        name, _, val = part.rpartition(":")
        if val not in MODES or (name and name not in OPS):
            raise ConfigError(f"{ENV} = {raw!r} is not one of {', '.join(MODES)}, optionally followed by op:choice "
                              f"for op in {', '.join(OPS)} (e.g. auto,topk:reference)")
        if name:
            per[name] = val
        else:
            default = val
    return per.get(op, default) if op else default


def triton_available() -> bool:
    """True when the Triton kernels import (the first failure's reason is kept in `triton_unavailable_reason`)."""
    global _triton_error
    if _triton_error is not None:
        return False
    try:
        from synthsae.sae.kernels import triton_sparse  # noqa: F401
    except Exception as e:  # ImportError, or a triton that fails to initialise
        _triton_error = f"{type(e).__name__}: {e}"
        return False
    return True


def triton_unavailable_reason() -> str | None:
    """Why the Triton kernels could not be used (None when they can or have not been tried)."""
    return _triton_error


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # the kernels accumulate in float32: not for float64


def use_triton(t: Tensor, op: str = "decode") -> bool:
    """Whether op on tensor `t` goes to the Triton kernels under the present mode (float64 always stays on ATen)."""
    v = mode(op)
    if v == "reference" or t.dtype not in KERNEL_DTYPES:
        return False
    if t.device.type == "cuda":
        if v == "triton" and not triton_available():
            raise ConfigError(f"{ENV} = triton but triton cannot be used: {_triton_error}")
        return triton_available()
    if v == "triton" and _interpreting():
        if not triton_available():
            raise ConfigError(f"{ENV} = triton but triton cannot be used: {_triton_error}")
        return True
    return False


@contextlib.contextmanager
def forced(choice: str) -> Iterator[None]:
    """Run a block under SYNTHSAE_KERNELS = choice (validated; restored afterwards)."""
    old = os.environ.get(ENV)
    os.environ[ENV] = choice
    try:
        mode()
    except ConfigError:
        _restore(old)
        raise
    try:
        yield
    finally:
        _restore(old)


def _restore(old: str | None) -> None:
    if old is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = old


def bag(idx: Tensor, table: Tensor, offsets: Tensor, weights: Tensor) -> Tensor:
    """Weighted row sums per bag: embedding_bag(mode="sum", per_sample_weights=weights), Triton on CUDA."""
    if use_triton(table):
        from synthsae.sae.kernels import triton_sparse

        return triton_sparse.bag(idx, table, offsets, weights)
    return F.embedding_bag(idx, table, offsets, mode="sum", per_sample_weights=weights)


def entry_dots_triton(a: Tensor, a_idx: Tensor, b: Tensor, b_idx: Tensor) -> Tensor:
    """out[e] = <a[a_idx[e]], b[b_idx[e]]> by the Triton kernel (callers check `use_triton` first)."""
    from synthsae.sae.kernels import triton_sparse

    return triton_sparse.entry_dots(a, a_idx, b, b_idx)


TOPK_MAX_K = 128  # larger k (e.g. a wide AuxK) goes to torch.topk: the kernel's in-register sort holds k * block keys
TOPK_MAX_BLOCKS = 4096  # ... and m / block block maxima


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def topk_block(m: int, k: int) -> int:
    """Block size of the Triton top-k: the power of two near sqrt(m / k) (balances its two in-register sorts, m / block
    block maxima and k * block candidates), at least 16 and at most 256, dividing m and leaving at least k blocks."""
    block = 16
    while block < 256 and (2 * block) ** 2 * _pow2(k) <= m and m % (2 * block) == 0 and k <= m // (2 * block):
        block *= 2
    return block


def topk_fits(m: int, k: int) -> bool:
    """Whether the Triton top-k handles this shape (m a multiple of 16, 1 <= k <= 128, at least k and at most 4096
    blocks); other shapes use torch.topk."""
    if m % 16 or not 1 <= k <= min(TOPK_MAX_K, m // 16):
        return False
    return _pow2(m // topk_block(m, k)) <= TOPK_MAX_BLOCKS


def use_block_topk(t: Tensor, n: int, k: int) -> bool:
    """Whether a top-k of k among n (a BatchTopK selection) takes sparse.block_topk instead of torch.topk: on CUDA
    unless SYNTHSAE_KERNELS=reference (and on the CPU under SYNTHSAE_KERNELS=triton, so tests reach it), when the
    16-entry blocks number at least 4k."""
    v = mode("batch_topk")
    if v == "reference" or n % 16 or n // 16 < 4 * k:
        return False
    return t.device.type == "cuda" or v == "triton"


def row_topk_triton(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k along the last dim by the Triton kernel (values largest first); callers check `use_triton`."""
    from synthsae.sae.kernels import triton_sparse

    return triton_sparse.row_topk(pre, k)
