"""Sparse codes (indices + values) and hand-written autograd for their encode/decode: O(nnz * d), not O(B * m * d).

A sparse code over S seeds is a flat list of nnz entries (token row in [S*B], latent column in [S*m] with the
seed offset s*m folded in, value). Rows are sorted, so the code is a CSR matrix [S*B, S*m] that is block
diagonal over seeds. The dense encoder forward (the cost floor) runs outside autograd; these functions then
carry the gradient only through the selected entries:

- `gather_pre`: identity on the selected pre-activations; backward scatters their gradient into W_enc and the
  effective encoder bias (an embedding-bag over each latent's tokens, i.e. CSR^T @ x).
- `sparse_decode`: sum_j v_j W_dec[c_j] per row (embedding-bag); backward gives dL/dv by per-entry dot products
  and dL/dW_dec by CSR^T @ grad.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from synthsae.sae import kernels
from synthsae.threads import one_thread

_CHUNK_ELEMS = 1 << 22  # entries x d per chunk of the per-entry dot products (16 MB of float32)


@dataclass
class SparseCode:
    """Selected (row, latent) pairs of a batch of S*B tokens over S*m latents; rows sorted ascending."""

    rows: Int[Tensor, " nnz"]  # token row in [0, S*B)
    cols: Int[Tensor, " nnz"]  # latent in [0, S*m), seed offset folded in
    offsets: Int[Tensor, " SB"]  # start of each row's entries (embedding-bag offsets)
    n_rows: int  # S * B
    n_cols: int  # S * m
    per_row: int | None = None  # k when every row has exactly k entries (TopK), else None
    _by_col: tuple[Tensor, Tensor] | None = None

    def by_col(self) -> tuple[Int[Tensor, " nnz"], Int[Tensor, " Sm"]]:
        """(permutation sorting entries by latent, stable in row order; offsets of each latent's run)."""
        if self._by_col is None:
            perm = stable_argsort(self.cols)
            counts = _counts(self.cols, self.n_cols)
            offs = torch.zeros(self.n_cols, dtype=torch.long, device=self.cols.device)
            offs[1:] = torch.cumsum(counts, 0)[:-1]
            self._by_col = (perm, offs)
        return self._by_col


def stable_argsort(keys: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
    """Stable ascending argsort of integer keys, on one CPU thread: every training step sorts its sparse code, and
    torch's parallel CPU sort stalled (160 ms for 32k keys against 0.3 ms) when another process held the other core."""
    with one_thread(keys.device):
        return torch.sort(keys, stable=True).indices


TOPK_BLOCK = 16  # fast_topk's block size (measured best of 8/16/32/64 at d_sae 4096, k 32)


def fast_topk(pre: Float[Tensor, "... m"], k: int) -> tuple[Tensor, Tensor]:
    """Exact top-k (unsorted) along the last dim, on the CPU through block maxima: split each row into
    m / 16 strided blocks, keep the k blocks with the largest maxima (the k-th largest block maximum is a lower
    bound on the k-th largest value, so every top-k entry lies in one of them), then top-k over those k * 16
    candidates. torch.topk is used on CUDA and wherever the shape does not fit (few blocks, m not a multiple)."""
    m = pre.shape[-1]
    b = TOPK_BLOCK
    nb = m // b
    if kernels.topk_fits(m, k) and kernels.use_triton(pre, "topk"):  # CUDA: one read of the row, see kernels.triton_sparse
        return kernels.row_topk_triton(pre, k)
    if pre.device.type != "cpu" or m % b or nb < 4 * k:
        return torch.topk(pre, k, dim=-1, sorted=False)
    return block_topk(pre, k)


def block_topk(pre: Float[Tensor, "... m"], k: int) -> tuple[Tensor, Tensor]:
    """fast_topk's block-maxima top-k in torch ops on any device (needs m % 16 == 0 and m / 16 >= k): one read of
    `pre` for the block maxima, then torch.topk over m / 16 maxima and k * 16 candidates. BatchTopK uses it on CUDA,
    where k = B * k_per_token is too large for the Triton kernel."""
    m = pre.shape[-1]
    b = TOPK_BLOCK
    nb = m // b
    lead = pre.shape[:-1]
    flat = pre.reshape(-1, b, nb)  # block c = entries c, c + nb, c + 2 nb, ...: its max is a contiguous SIMD max
    rows = flat.shape[0]
    _, blocks = torch.topk(flat.amax(dim=1), k, dim=1, sorted=False)  # [R, k]
    cand = torch.gather(flat, 2, blocks.unsqueeze(1).expand(rows, b, k)).reshape(rows, b * k)
    vals, pos = torch.topk(cand, k, dim=1, sorted=False)
    idx = blocks.gather(1, pos % k) + nb * torch.div(pos, k, rounding_mode="floor")
    return vals.view(*lead, k), idx.view(*lead, k)


def _counts(idx: Int[Tensor, " nnz"], n: int) -> Int[Tensor, " n"]:
    """bincount with a known length, by scatter-add: bincount reads the max on the host (a sync on CUDA)."""
    return torch.zeros(n, dtype=torch.long, device=idx.device).index_add_(0, idx, torch.ones_like(idx))


def code_from_topk(idx: Int[Tensor, "S B k"], m: int) -> SparseCode:
    """A code with exactly k entries per token from per-seed latent indices [S, B, k]."""
    S, B, k = idx.shape
    dev = idx.device
    cols = (idx + torch.arange(S, device=dev).view(S, 1, 1) * m).reshape(-1)
    rows = torch.arange(S * B, device=dev).repeat_interleave(k)
    offsets = torch.arange(0, S * B * k, k, device=dev)
    return SparseCode(rows=rows, cols=cols, offsets=offsets, n_rows=S * B, n_cols=S * m, per_row=k)


def code_from_rows_cols(rows: Int[Tensor, " nnz"], cols: Int[Tensor, " nnz"], n_rows: int, n_cols: int) -> tuple[SparseCode, Tensor]:
    """A code from unsorted entries; also returns the permutation that sorted them by row (stable)."""
    perm = stable_argsort(rows)
    rows, cols = rows[perm], cols[perm]
    counts = _counts(rows, n_rows)
    offsets = torch.zeros(n_rows, dtype=torch.long, device=rows.device)
    offsets[1:] = torch.cumsum(counts, 0)[:-1]
    return SparseCode(rows=rows, cols=cols, offsets=offsets, n_rows=n_rows, n_cols=n_cols), perm


def rowwise_dots(a: Tensor, a_idx: Tensor | None, b: Tensor, b_idx: Tensor, per_row: int | None) -> Tensor:
    """out[e] = <a[a_idx[e]], b[b_idx[e]]> for every entry, in chunks so no [nnz, d] temporary is kept."""
    nnz, d = b_idx.numel(), b.shape[1]
    out = torch.empty(nnz, dtype=b.dtype, device=b.device)
    if per_row is not None:  # a row per k consecutive entries: a batched (k x d) @ (d x 1) per row
        rows_per_chunk = max(1, _CHUNK_ELEMS // max(1, per_row * d))
        n_rows = nnz // per_row
        buf = None
        for r0 in range(0, n_rows, rows_per_chunk):
            r1 = min(n_rows, r0 + rows_per_chunk)
            sel = b_idx[r0 * per_row : r1 * per_row]
            if buf is None or buf.shape[0] != sel.numel():
                buf = torch.empty(sel.numel(), d, dtype=b.dtype, device=b.device)
            torch.index_select(b, 0, sel, out=buf)
            torch.bmm(buf.view(r1 - r0, per_row, d), a[r0:r1].unsqueeze(2), out=out[r0 * per_row : r1 * per_row].view(r1 - r0, per_row, 1))
        return out
    step = max(1, _CHUNK_ELEMS // max(1, d))
    for e0 in range(0, nnz, step):
        e1 = min(nnz, e0 + step)
        ra = a.index_select(0, a_idx[e0:e1])
        rb = b.index_select(0, b_idx[e0:e1])
        out[e0:e1] = (ra * rb).sum(1)
    return out


_PSW_BACKWARD = getattr(torch.ops.aten, "_embedding_bag_per_sample_weights_backward", None)


def _entry_dots(grad: Tensor, W_flat: Tensor, code: SparseCode) -> Float[Tensor, " nnz"]:
    """dL/dv[e] = <grad[row_e], W_flat[col_e]>: a sampled dense-dense matmul on the code's CSR pattern (CPU: 2x faster
    than ATen's embedding-bag per-sample-weights kernel, measured), else that kernel, else chunked dot products;
    the Triton kernel where synthsae.sae.kernels selects it (CUDA)."""
    if kernels.use_triton(grad):
        return kernels.entry_dots_triton(grad, code.rows, W_flat, code.cols)
    if grad.device.type == "cpu" and grad.dtype in (torch.float32, torch.float64):
        try:
            nnz = code.cols.numel()
            crow = torch.cat([code.offsets, code.offsets.new_full((1,), nnz)])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                pattern = torch.sparse_csr_tensor(crow, code.cols, torch.zeros(nnz, dtype=grad.dtype),
                                                  (grad.shape[0], W_flat.shape[0]))
                return torch.sparse.sampled_addmm(pattern, grad, W_flat.t(), beta=0.0).values()
        except (RuntimeError, NotImplementedError):  # pragma: no cover - a build without CPU sampled_addmm
            pass
    if _PSW_BACKWARD is not None and grad.device.type == "cpu" and grad.dtype in (torch.float32, torch.float64):
        try:
            return _PSW_BACKWARD(grad, W_flat, code.cols, code.offsets, code.rows, 0, -1)
        except RuntimeError:  # pragma: no cover - signature changed in some torch version
            pass
    return rowwise_dots(grad, code.rows, W_flat, code.cols, code.per_row)


def _bag_by_col(code: SparseCode, weights: Tensor, table: Tensor, table_rows: Tensor) -> Float[Tensor, "Sm d"]:
    """sum over each latent's entries e of weights[e] * table[table_rows[e]]: CSR^T @ table in O(nnz * d)."""
    perm, offs = code.by_col()
    return kernels.bag(table_rows[perm], table, offs, weights[perm])


class _GatherPre(torch.autograd.Function):
    """Selected pre-activations (computed densely outside autograd); backward reaches W_enc and the bias only."""

    @staticmethod
    def forward(ctx, pre_vals, W_enc, bias_eff, x, code: SparseCode, S: int, B: int):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.code, ctx.S, ctx.B = code, S, B
        ctx.m, ctx.d = W_enc.shape[2], W_enc.shape[1]
        return pre_vals.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        code, S, B, m, d = ctx.code, ctx.S, ctx.B, ctx.m, ctx.d
        g_W = g_b = None
        if ctx.needs_input_grad[1]:
            if x.dim() == 2:  # shared batch: token row s*B + b reads x[b]
                table, table_rows = x, code.rows % B
            else:
                table, table_rows = x.reshape(S * B, d), code.rows
            g_WT = _bag_by_col(code, grad, table, table_rows)  # [S*m, d]
            g_W = g_WT.view(S, m, d).transpose(1, 2).contiguous()  # one copy here keeps every later pass contiguous
        if ctx.needs_input_grad[2]:
            g_b = torch.zeros(S * m, dtype=grad.dtype, device=grad.device).index_add_(0, code.cols, grad).view(S, m)
        return None, g_W, g_b, None, None, None, None


class _SparseDecode(torch.autograd.Function):
    """x_hat rows (without b_dec) = sum of values times decoder rows; backward in O(nnz * d)."""

    @staticmethod
    def forward(ctx, vals, W_dec, code: SparseCode):  # type: ignore[override]
        S, m, d = W_dec.shape
        W_flat = W_dec.reshape(S * m, d)
        ctx.save_for_backward(vals, W_dec)
        ctx.code = code
        return kernels.bag(code.cols, W_flat, code.offsets, vals)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        vals, W_dec = ctx.saved_tensors
        code = ctx.code
        S, m, d = W_dec.shape
        grad = grad.contiguous()
        g_vals = g_W = None
        if ctx.needs_input_grad[0]:
            g_vals = _entry_dots(grad, W_dec.reshape(S * m, d), code)
        if ctx.needs_input_grad[1]:
            g_W = _bag_by_col(code, vals, grad, code.rows).view(S, m, d)
        return g_vals, g_W, None


def gather_pre(pre_vals: Tensor, W_enc: Tensor, bias_eff: Tensor, x: Tensor, code: SparseCode) -> Tensor:
    """Differentiable view of the selected pre-activations (see module docstring)."""
    S = W_enc.shape[0]
    B = x.shape[-2]
    return _GatherPre.apply(pre_vals, W_enc, bias_eff, x, code, S, B)


def sparse_decode(vals: Float[Tensor, " nnz"], W_dec: Float[Tensor, "S m d"], code: SparseCode) -> Float[Tensor, "SB d"]:
    """Decode a sparse code without the decoder bias."""
    return _SparseDecode.apply(vals, W_dec, code)
