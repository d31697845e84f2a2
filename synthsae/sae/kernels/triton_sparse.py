"""Triton kernels for the sparse code's three hot spots: the weighted row bag (decode forward, decoder and encoder
gradients), the per-entry dot products (gradient of the code values), and a row top-k that reads the
pre-activations once and keeps only 1/16 of them (block maxima) plus k * 16 candidates per row.

Every kernel accumulates in float32 whatever the storage dtype. Imported only when a kernel is used: set
TRITON_INTERPRET=1 before the first import to run them on CPU tensors (tests); see synthsae.sae.kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from jaxtyping import Float, Int
from torch import Tensor

TOPK_BLOCK = 16  # smallest block of the top-k's block maxima (contiguous entries, one 64-byte line in float32)


@triton.jit
def _bag_kernel(idx_ptr, w_ptr, table_ptr, bounds_ptr, out_ptr, d, stride_t, stride_o,
                BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[r, :] = sum_{e in [bounds[r], bounds[r+1])} w[e] * table[idx[e], :] for one row r and one d tile."""
    r = tl.program_id(0).to(tl.int64)
    cd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = cd < d
    start = tl.load(bounds_ptr + r)
    end = tl.load(bounds_ptr + r + 1)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for e0 in range(start, end, BLOCK_E):
        e = e0 + tl.arange(0, BLOCK_E)
        emask = e < end
        j = tl.load(idx_ptr + e, mask=emask, other=0).to(tl.int64)
        w = tl.load(w_ptr + e, mask=emask, other=0.0).to(tl.float32)
        rows = tl.load(table_ptr + j[:, None] * stride_t + cd[None, :], mask=emask[:, None] & dmask[None, :], other=0.0)
        acc += tl.sum(w[:, None] * rows.to(tl.float32), axis=0)
    tl.store(out_ptr + r * stride_o + cd, acc.to(out_ptr.dtype.element_ty), mask=dmask)


@triton.jit
def _dots_kernel(a_ptr, a_idx_ptr, b_ptr, b_idx_ptr, out_ptr, nnz, d, stride_a, stride_b,
                 BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[e] = <a[a_idx[e], :], b[b_idx[e], :]> for a tile of BLOCK_E entries."""
    e = tl.program_id(0).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = e < nnz
    ra = tl.load(a_idx_ptr + e, mask=emask, other=0).to(tl.int64)
    rb = tl.load(b_idx_ptr + e, mask=emask, other=0).to(tl.int64)
    acc = tl.zeros([BLOCK_E], dtype=tl.float32)
    for d0 in range(0, d, BLOCK_D):
        cd = d0 + tl.arange(0, BLOCK_D)
        m2 = emask[:, None] & (cd < d)[None, :]
        x = tl.load(a_ptr + ra[:, None] * stride_a + cd[None, :], mask=m2, other=0.0).to(tl.float32)
        y = tl.load(b_ptr + rb[:, None] * stride_b + cd[None, :], mask=m2, other=0.0).to(tl.float32)
        acc += tl.sum(x * y, axis=1)
    tl.store(out_ptr + e, acc.to(out_ptr.dtype.element_ty), mask=emask)


@triton.jit
def _order_key(v, pos):
    """An int64 key whose signed order is (float value, position): flip the low 31 bits of negative floats."""
    bits = v.to(tl.float32).to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (ordered.to(tl.int64) << 32) | pos.to(tl.int64)


@triton.jit
def _topk_kernel(pre_ptr, maxima_ptr, val_ptr, idx_ptr, m, n_blocks, k, stride_p,
                 BLOCK: tl.constexpr, TILE: tl.constexpr, NB_P2: tl.constexpr, K_P2: tl.constexpr):
    """Exact top-k of one row: block maxima (one read of the row), the K_P2 blocks with the largest maxima, then
    the top K_P2 of their K_P2 * BLOCK entries. Writes the first k (largest first)."""
    r = tl.program_id(0).to(tl.int64)
    row = pre_ptr + r * stride_p
    lane = tl.arange(0, BLOCK)
    for c0 in range(0, n_blocks, TILE):
        c = c0 + tl.arange(0, TILE)
        cmask = c < n_blocks
        x = tl.load(row + c[:, None] * BLOCK + lane[None, :], mask=cmask[:, None], other=float("-inf"))
        tl.store(maxima_ptr + r * n_blocks + c, tl.max(x.to(tl.float32), axis=1), mask=cmask)
    tl.debug_barrier()
    c = tl.arange(0, NB_P2)
    cmask = c < n_blocks
    bm = tl.load(maxima_ptr + r * n_blocks + c, mask=cmask, other=float("-inf"))
    bkeys = tl.where(cmask, _order_key(bm, c), -9223372036854775807 - 1)
    top_blocks = (tl.topk(bkeys, K_P2) & 0xFFFFFFFF).to(tl.int64)  # top K_P2 >= k blocks: a superset of the top k
    q = tl.arange(0, K_P2)
    bvalid = (q < n_blocks)[:, None]
    col = top_blocks[:, None] * BLOCK + lane[None, :]
    cand = tl.load(row + col, mask=bvalid, other=float("-inf"))
    ckeys = tl.where(bvalid, _order_key(cand, col), -9223372036854775807 - 1)
    best = tl.topk(tl.reshape(ckeys, [K_P2 * BLOCK]), K_P2)
    best_col = (best & 0xFFFFFFFF).to(tl.int64)
    out = q < k
    tl.store(idx_ptr + r * k + q, best_col, mask=out)
    tl.store(val_ptr + r * k + q, tl.load(row + best_col, mask=out, other=0.0), mask=out)


def _block_d(d: int) -> int:
    return max(16, min(128, triton.next_power_of_2(d)))


def bag(idx: Int[Tensor, " nnz"], table: Float[Tensor, "n d"], offsets: Int[Tensor, " R"],
        weights: Float[Tensor, " nnz"]) -> Float[Tensor, "R d"]:
    """F.embedding_bag(idx, table, offsets, mode="sum", per_sample_weights=weights) by a Triton kernel."""
    R, d = offsets.numel(), table.shape[1]
    table = table.contiguous()
    bounds = torch.cat([offsets, offsets.new_full((1,), idx.numel())])
    out = torch.empty(R, d, dtype=table.dtype, device=table.device)
    if R == 0 or d == 0:
        return out
    bd = _block_d(d)
    _bag_kernel[(R, triton.cdiv(d, bd))](idx.contiguous(), weights.contiguous(), table, bounds, out, d,
                                         table.stride(0), out.stride(0), BLOCK_E=16, BLOCK_D=bd)
    return out


def entry_dots(a: Float[Tensor, "n d"], a_idx: Int[Tensor, " nnz"], b: Float[Tensor, "p d"],
               b_idx: Int[Tensor, " nnz"]) -> Float[Tensor, " nnz"]:
    """out[e] = <a[a_idx[e]], b[b_idx[e]]> (a sampled dense-dense matmul) by a Triton kernel."""
    nnz, d = a_idx.numel(), b.shape[1]
    a, b = a.contiguous(), b.contiguous()
    out = torch.empty(nnz, dtype=b.dtype, device=b.device)
    if nnz == 0:
        return out
    be = 32
    _dots_kernel[(triton.cdiv(nnz, be),)](a, a_idx.contiguous(), b, b_idx.contiguous(), out, nnz, d,
                                          a.stride(0), b.stride(0), BLOCK_E=be, BLOCK_D=min(_block_d(d), 64))
    return out


def row_topk(pre: Float[Tensor, "... m"], k: int, block: int | None = None) -> tuple[Tensor, Tensor]:
    """Exact top-k along the last dim (largest first); needs m % 16 == 0 and k <= m / 16 (else use torch.topk)."""
    m = pre.shape[-1]
    if m % TOPK_BLOCK or k > m // TOPK_BLOCK or k < 1:
        raise ValueError(f"row_topk needs m % {TOPK_BLOCK} == 0 and 1 <= k <= m / {TOPK_BLOCK}, got m = {m}, k = {k}")
    from synthsae.sae.kernels import topk_block

    block = block or topk_block(m, k)
    nb = m // block
    lead = pre.shape[:-1]
    flat = pre.reshape(-1, m)
    if flat.stride(1) != 1:
        flat = flat.contiguous()
    R = flat.shape[0]
    vals = torch.empty(R, k, dtype=pre.dtype, device=pre.device)
    idx = torch.empty(R, k, dtype=torch.long, device=pre.device)
    if R:
        maxima = torch.empty(R, nb, dtype=torch.float32, device=pre.device)
        nb_p2 = triton.next_power_of_2(nb)
        k_p2 = min(triton.next_power_of_2(k), nb_p2)
        _topk_kernel[(R,)](flat, maxima, vals, idx, m, nb, k, flat.stride(0), BLOCK=block,
                           TILE=min(nb_p2, 256), NB_P2=nb_p2, K_P2=k_p2, num_warps=8 if nb_p2 >= 2048 else 4)
    return vals.view(*lead, k), idx.view(*lead, k)
