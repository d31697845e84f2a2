"""TopK-family variants (topk, batchtopk, matryoshka): sparse codes in training, O(B*k*d) decode and backward.

The dense encoder forward runs once without autograd (the cost floor); the selected pre-activations then enter
autograd through `gather_pre`, and decoding is an embedding-bag (`sparse_decode`), both with hand-written
backward passes that touch only the selected latents.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from synthsae.sae import base as _base
from synthsae.sae import kernels
from synthsae.sae import register_variant
from synthsae.sae.base import SAE, SAEOutput, as_seed_batch, batch_fvu
from synthsae.sae.sparse import (SparseCode, block_topk, code_from_rows_cols, code_from_topk, fast_topk, gather_pre,
                                 rowwise_dots, sparse_decode)


@register_variant("topk")
class TopKSAE(SAE):
    """TopK SAE (Gao et al. 2024): keep the k largest pre-activations per token; AuxK loss revives dead latents.

    Dead latents (the trainer's definition: no firing in the last `dead_window_tokens` tokens) model the
    residual x - x_hat with their own top-`aux_k`; the loss adds aux_coeff times that residual's FVU.
    """

    saelens_architecture = "topk"
    saelens_reads = ("topk",)
    sparsity_knob = "k"

    def activation(self, pre: Float[Tensor, "S B m"]) -> Float[Tensor, "S B m"]:
        vals, idx = torch.topk(pre, self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))

    def saelens_cfg(self) -> dict[str, Any]:
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}

    def seed_tensors(self, s: int) -> dict[str, Tensor]:
        return {k: getattr(self, k)[s] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}

    # ------------------------------------------------------------------------------------------- training

    def select(self, pre: Float[Tensor, "S B m"]) -> tuple[SparseCode, Tensor]:
        """The sparse code chosen from dense pre-activations and the selected pre values (flat, row order)."""
        vals, idx = fast_topk(pre, self.cfg.k)
        return code_from_topk(idx, pre.shape[2]), vals.reshape(-1)

    @torch.no_grad()
    def exact_pre(self, x: Tensor, code: SparseCode, bias: Tensor) -> Float[Tensor, " nnz"]:
        """The selected pre-activations recomputed in the parameter dtype, O(nnz * d): after a low-precision
        selection matmul only the choice of latents is approximate, never the values that train."""
        S, m, d = self.n_seeds, self.d_sae, self.d_in
        B = x.shape[-2]
        xs = as_seed_batch(x, S).reshape(S * B, d).to(self.dtype)
        w_t = self.W_enc.detach().transpose(1, 2).reshape(S * m, d)
        if kernels.use_triton(xs):
            dots = kernels.entry_dots_triton(xs, code.rows, w_t, code.cols)
        else:
            dots = rowwise_dots(xs, code.rows, w_t, code.cols, code.per_row)
        return dots + bias.detach().reshape(-1)[code.cols]

    def decode_code(self, code: SparseCode, vals: Tensor, S: int, B: int) -> Float[Tensor, "S B d"]:
        return sparse_decode(vals, self.W_dec, code).view(S, B, self.d_in) + self.b_dec.unsqueeze(1)

    def selected_code(self, pre: Tensor, code: SparseCode) -> Tensor:
        """Code values of the selected latents from their pre-activations (ReLU; a hook for variants)."""
        return torch.relu(pre)

    def forward(self, x: Tensor, step: int = 0, dead: Bool[Tensor, "S m"] | None = None) -> SAEOutput:
        S, m = self.n_seeds, self.d_sae
        B = x.shape[-2]
        bias = self.bias_eff()
        with torch.no_grad():
            pre, exact = self.selection_pre_acts(x, bias.detach())
            code, pre_sel = self.select(pre)
            if not exact:
                pre_sel = self.exact_pre(x, code, bias)
        vals = self.selected_code(gather_pre(pre_sel, self.W_enc, bias, x, code), code)
        x_hat = self.decode_code(code, vals, S, B)
        aux = self.aux_loss(x, x_hat, pre, bias, dead, exact)
        del pre
        return self.sparse_output(x, x_hat, code, vals, aux, S, B)

    def sparse_output(self, x: Tensor, x_hat: Tensor, code: SparseCode, vals: Tensor, aux: Tensor | None, S: int, B: int,
                      recon: Tensor | None = None) -> SAEOutput:
        """SAEOutput from a sparse code (L0 and fired latents without a dense [S, B, m] tensor)."""
        with torch.no_grad():
            nz = vals != 0  # blocktopk codes are signed inside a group
            l0 = torch.zeros(S, dtype=vals.dtype, device=vals.device).index_add_(0, code.rows // B, nz.to(vals.dtype)) / B
            # count, not a boolean index: no nonzero() (a host sync on CUDA)
            fired = torch.zeros(S * self.d_sae, dtype=torch.int32, device=vals.device).index_add_(0, code.cols, nz.int()) > 0
        fvu = batch_fvu(x, x_hat)
        recon = fvu if recon is None else recon
        aux = torch.zeros_like(recon) if aux is None else aux
        losses = recon + aux
        return SAEOutput(x_hat=x_hat, loss=losses.sum(), losses=losses, recon=recon, aux=aux, l0=l0,
                         fvu=fvu.detach(), fired=fired.view(S, self.d_sae))

    def aux_loss(self, x: Tensor, x_hat: Tensor, pre: Tensor, bias: Tensor, dead: Tensor | None,
                 exact: bool = True) -> Tensor | None:
        """AuxK: the top aux_k dead latents reconstruct the residual; 0 for seeds without dead latents.

        On the CPU it is skipped when no latent is dead (a free check); on CUDA it always runs (no host sync): with
        no dead latent it adds exactly 0 to the loss and its gradient is 0, so the result is the same."""
        cfg = self.cfg
        if dead is None or cfg.aux_k <= 0 or cfg.aux_coeff <= 0:
            return None
        if _base.cheap_sync(dead.device) and not bool(dead.any()):
            return None
        S, B, m = pre.shape
        with torch.no_grad():
            masked = pre.masked_fill(~dead.unsqueeze(1), float("-inf"))
            a_vals, a_idx = fast_topk(masked, min(cfg.aux_k, m))
            valid = torch.isfinite(a_vals).reshape(-1)
            code = code_from_topk(a_idx, m)
            sel = a_vals.reshape(-1) if exact else self.exact_pre(x, code, bias)
            a_pre = torch.where(valid, sel.to(self.dtype), torch.zeros((), dtype=self.dtype, device=pre.device))
        a_vals = torch.relu(gather_pre(a_pre, self.W_enc, bias, x, code)) * valid
        e = (as_seed_batch(x, S) - x_hat).detach()
        e_hat = sparse_decode(a_vals, self.W_dec, code).view(S, B, self.d_in)
        err = (e - e_hat).pow(2).sum(dim=(1, 2))
        var = (e - e.mean(dim=1, keepdim=True)).pow(2).sum(dim=(1, 2)).clamp_min(1e-12)
        has_dead = dead.any(dim=1).to(err.dtype)
        return cfg.aux_coeff * has_dead * torch.nan_to_num(err / var, nan=0.0, posinf=0.0)


@register_variant("batchtopk")
class BatchTopKSAE(TopKSAE):
    """BatchTopK (Bussmann et al. 2024): the top B*k pre-activations of the whole batch per seed.

    At inference it is a JumpReLU with one global threshold per seed: a running mean (EMA, decay 0.99) of the
    smallest positive selected activation per training batch. Saved for SAELens as `jumprelu`.
    """

    saelens_architecture = "jumprelu"
    saelens_reads = ("batchtopk",)  # a SAELens training checkpoint keeps this name and a scalar `topk_threshold`
    threshold_decay = 0.99

    def __init__(self, cfg, d_in, init_seeds, device=None, dtype=torch.float32):
        super().__init__(cfg, d_in, init_seeds, device=device, dtype=dtype)
        self.register_buffer("topk_threshold", torch.full((len(self.init_seeds),), -1.0, device=device, dtype=dtype))

    @property
    def threshold(self) -> Float[Tensor, "S m"]:
        """Per-latent inference threshold (the global one repeated; 0 before any training step)."""
        return self.topk_threshold.clamp_min(0).unsqueeze(1).expand(-1, self.d_sae)

    def activation(self, pre: Float[Tensor, "S B m"]) -> Float[Tensor, "S B m"]:
        thr = self.topk_threshold.clamp_min(0).view(-1, 1, 1)
        return torch.relu(pre) * (pre > thr)

    def saelens_cfg(self) -> dict[str, Any]:
        return {}

    def seed_tensors(self, s: int) -> dict[str, Tensor]:
        t = super().seed_tensors(s)
        t["threshold"] = self.threshold[s].contiguous()
        return t

    def load_seed_tensors(self, per_seed: list[dict[str, Tensor]]) -> None:
        # saved as SAELens jumprelu: every threshold equals the global one
        self._load_core_and_threshold(per_seed, lambda th: self.topk_threshold.copy_(th.reshape(len(per_seed), -1)[:, 0]))

    def select(self, pre: Float[Tensor, "S B m"]) -> tuple[SparseCode, Tensor]:
        S, B, m = pre.shape
        K = min(B * self.cfg.k, B * m)
        if kernels.use_block_topk(pre, B * m, K):  # CUDA: block maxima first (see sparse.block_topk)
            vals, flat = block_topk(pre.reshape(S, B * m), K)
        else:
            vals, flat = torch.topk(pre.reshape(S, B * m), K, dim=-1, sorted=False)
        seed = torch.arange(S, device=pre.device).view(S, 1)
        rows = (seed * B + flat // m).reshape(-1)
        cols = (seed * m + flat % m).reshape(-1)
        code, perm = code_from_rows_cols(rows, cols, S * B, S * m)
        return code, vals.reshape(-1)[perm]

    @torch.no_grad()
    def update_running_stats(self, out: SAEOutput) -> None:
        mins = getattr(out, "_min_positive", None)
        if mins is None:
            return
        fresh = self.topk_threshold < 0
        ema = self.threshold_decay * self.topk_threshold + (1 - self.threshold_decay) * mins
        self.topk_threshold.copy_(torch.where(fresh, mins, ema))

    def sparse_output(self, x, x_hat, code, vals, aux, S, B, recon=None) -> SAEOutput:
        out = super().sparse_output(x, x_hat, code, vals, aux, S, B, recon=recon)
        with torch.no_grad():
            pos = torch.where(vals > 0, vals.detach(), torch.full_like(vals, float("inf")))
            mins = torch.full((S,), float("inf"), dtype=vals.dtype, device=vals.device)
            mins = mins.scatter_reduce(0, code.rows // B, pos, reduce="amin")
            out._min_positive = torch.where(torch.isfinite(mins), mins, torch.zeros_like(mins))  # type: ignore[attr-defined]
        return out


@register_variant("matryoshka")
class MatryoshkaSAE(BatchTopKSAE):
    """Matryoshka BatchTopK (Bussmann et al. 2025; Nabeshima 2024): every prefix of latents must reconstruct.

    The loss is the mean FVU over nested prefixes (sae.matryoshka_prefixes, default powers of two from 2k up
    to d_sae). One banded sparse decode gives every prefix's reconstruction by a cumulative sum.
    """

    saelens_reads = ("matryoshka_batchtopk",)  # a SAELens training checkpoint, as for batchtopk

    def prefixes(self) -> list[int]:
        cfg = self.cfg
        if cfg.matryoshka_prefixes:
            p = sorted(set(int(v) for v in cfg.matryoshka_prefixes))
            return p if p[-1] == cfg.d_sae else p + [cfg.d_sae]
        out, v = [], cfg.d_sae
        while v >= max(2 * cfg.k, 1) and len(out) < 12:
            out.append(v)
            v //= 2
        return sorted(out) or [cfg.d_sae]

    def forward(self, x: Tensor, step: int = 0, dead: Bool[Tensor, "S m"] | None = None) -> SAEOutput:
        S, m, d = self.n_seeds, self.d_sae, self.d_in
        B = x.shape[-2]
        bias = self.bias_eff()
        with torch.no_grad():
            pre, exact = self.selection_pre_acts(x, bias.detach())
            code, pre_sel = self.select(pre)
            if not exact:
                pre_sel = self.exact_pre(x, code, bias)
            bounds = torch.tensor(self.prefixes(), device=x.device)
            band = torch.bucketize(code.cols % m, bounds, right=True)  # latent j < prefixes[i] -> band <= i
            n_bands = len(bounds)
            banded, perm = code_from_rows_cols(band * (S * B) + code.rows, code.cols, n_bands * S * B, S * m)
        vals = torch.relu(gather_pre(pre_sel, self.W_enc, bias, x, code))
        parts = sparse_decode(vals[perm], self.W_dec, banded).view(n_bands, S, B, d)
        recons = torch.cumsum(parts, dim=0) + self.b_dec.unsqueeze(1)  # [n_prefixes, S, B, d]
        x_hat = recons[-1]
        recon = torch.stack([batch_fvu(x, recons[i]) for i in range(n_bands)]).mean(dim=0)
        return self.sparse_output(x, x_hat, code, vals, None, S, B, recon=recon)

