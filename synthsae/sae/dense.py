"""Dense-code variants (relu, jumprelu, gated): plain autograd over [S, B, m] activations.

Sparsity penalties are divided by the batch's RMS norm (`batch_scale`), so their coefficients do not depend on
the scale of the data; the reconstruction term is the batch FVU.
"""

from __future__ import annotations

import math
import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from synthsae.sae import register_variant
from synthsae.sae.base import SAE, SAEOutput, batch_fvu, batch_scale, l1_warmup


@register_variant("relu")
class ReLUSAE(SAE):
    """Standard ReLU SAE with an L1 penalty weighted by decoder row norms (coefficient warmed up linearly)."""

    saelens_architecture = "standard"
    saelens_reads = ("standard",)

    def seed_tensors(self, s: int) -> dict[str, Tensor]:
        return {k: getattr(self, k)[s] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}

    def forward(self, x: Tensor, step: int = 0, dead: Bool[Tensor, "S m"] | None = None) -> SAEOutput:
        acts = self.encode(x)
        x_hat = self.decode(acts)
        l1 = (acts * self.decoder_norms().unsqueeze(1)).sum(dim=2).mean(dim=1) / batch_scale(x, self.n_seeds)
        return self.output(x, x_hat, acts, aux=l1_warmup(self.cfg, step) * l1)


class _JumpReLU(torch.autograd.Function):
    """z * H(z - theta); straight-through (rectangle kernel) pseudo-derivative for theta."""

    @staticmethod
    def forward(ctx, z, theta, bandwidth: float):  # type: ignore[override]
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        gz = g * (z > theta)
        near = ((z - theta).abs() < eps / 2).to(g.dtype)
        gt = (-(theta / eps) * near * g).sum(dim=1)  # theta is [S, 1, m] broadcast over B
        return gz, gt.unsqueeze(1), None


class _Step(torch.autograd.Function):
    """H(z - theta) for the L0 penalty; gradient only for theta (rectangle kernel)."""

    @staticmethod
    def forward(ctx, z, theta, bandwidth: float):  # type: ignore[override]
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        near = ((z - theta).abs() < eps / 2).to(g.dtype)
        gt = (-(1.0 / eps) * near * g).sum(dim=1)
        return None, gt.unsqueeze(1), None


@register_variant("jumprelu")
class JumpReLUSAE(SAE):
    """JumpReLU SAE (Rajamanoharan et al. 2024): per-latent threshold trained by straight-through estimators.

    The threshold is stored as log_threshold (kept positive); loss = FVU + l0_coeff(step) * L0, with the
    bandwidth of the rectangle kernel `jumprelu_bandwidth` in units of the pre-activations.
    """

    saelens_architecture = "jumprelu"
    saelens_reads = ("jumprelu",)
    sparsity_knob = "l0_coeff"

    def __init__(self, cfg, d_in, init_seeds, device=None, dtype=torch.float32):
        super().__init__(cfg, d_in, init_seeds, device=device, dtype=dtype)
        thr = max(cfg.jumprelu_init_threshold, 1e-6)
        self.log_threshold = nn.Parameter(torch.full((len(self.init_seeds), cfg.d_sae), math.log(thr), device=device, dtype=dtype))

    @property
    def threshold(self) -> Float[Tensor, "S m"]:
        return self.log_threshold.exp()

    def activation(self, pre: Float[Tensor, "S B m"]) -> Float[Tensor, "S B m"]:
        return torch.relu(pre) * (pre > self.threshold.unsqueeze(1))

    def seed_tensors(self, s: int) -> dict[str, Tensor]:
        t = {k: getattr(self, k)[s] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
        t["threshold"] = self.threshold[s].detach()
        return t

    def load_seed_tensors(self, per_seed: list[dict[str, Tensor]]) -> None:
        self._load_core_and_threshold(per_seed, lambda th: self.log_threshold.copy_(th.clamp_min(1e-12).log()))

    def forward(self, x: Tensor, step: int = 0, dead: Bool[Tensor, "S m"] | None = None) -> SAEOutput:
        pre = self.pre_acts(x)
        theta = self.threshold.unsqueeze(1)
        eps = self.cfg.jumprelu_bandwidth
        acts = _JumpReLU.apply(pre, theta, eps)
        x_hat = self.decode(acts)
        l0 = _Step.apply(pre, theta, eps).sum(dim=2).mean(dim=1)
        coeff = self.cfg.l0_coeff * min(1.0, (step + 1) / max(1, self.cfg.l1_warmup_steps))
        return self.output(x, x_hat, acts, aux=coeff * l0)


@register_variant("gated")
class GatedSAE(SAE):
    """Gated SAE (Rajamanoharan et al. 2024): a gate (W_enc, b_enc = SAELens's b_gate) decides which latents fire,
    a magnitude path W_enc * exp(r_mag) + b_mag sets their size. Loss = FVU + L1 on the gate (decoder-norm
    weighted, warmed up) + the FVU of the gate's own reconstruction through a frozen decoder.
    """

    saelens_architecture = "gated"
    saelens_reads = ("gated",)

    def __init__(self, cfg, d_in, init_seeds, device=None, dtype=torch.float32):
        super().__init__(cfg, d_in, init_seeds, device=device, dtype=dtype)
        S = len(self.init_seeds)
        self.r_mag = nn.Parameter(torch.zeros(S, cfg.d_sae, device=device, dtype=dtype))
        self.b_mag = nn.Parameter(torch.zeros(S, cfg.d_sae, device=device, dtype=dtype))

    def _paths(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u = self.pre_acts(x, self.bias_eff() - self.b_enc)  # (x - b_dec) @ W_enc, no bias
        pi_gate = u + self.b_enc.unsqueeze(1)
        pi_mag = u * self.r_mag.exp().unsqueeze(1) + self.b_mag.unsqueeze(1)
        return pi_gate, pi_mag

    def encode(self, x: Tensor) -> Float[Tensor, "S B m"]:
        pi_gate, pi_mag = self._paths(x)
        return (pi_gate > 0).to(pi_mag.dtype) * torch.relu(pi_mag)

    def seed_tensors(self, s: int) -> dict[str, Tensor]:
        return {"W_enc": self.W_enc[s], "b_gate": self.b_enc[s], "b_mag": self.b_mag[s], "r_mag": self.r_mag[s],
                "W_dec": self.W_dec[s], "b_dec": self.b_dec[s]}

    def load_seed_tensors(self, per_seed: list[dict[str, Tensor]]) -> None:
        names = {"W_enc": "W_enc", "b_enc": "b_gate", "b_mag": "b_mag", "r_mag": "r_mag", "W_dec": "W_dec", "b_dec": "b_dec"}
        for v in names.values():
            if v not in per_seed[0]:
                raise KeyError(f"missing tensor {v}")
        with torch.no_grad():
            for ours, theirs in names.items():
                getattr(self, ours).copy_(torch.stack([t[theirs] for t in per_seed]))

    def forward(self, x: Tensor, step: int = 0, dead: Bool[Tensor, "S m"] | None = None) -> SAEOutput:
        pi_gate, pi_mag = self._paths(x)
        acts = (pi_gate > 0).to(pi_mag.dtype) * torch.relu(pi_mag)
        x_hat = self.decode(acts)
        gate = torch.relu(pi_gate)
        l1 = (gate * self.decoder_norms().unsqueeze(1)).sum(dim=2).mean(dim=1) / batch_scale(x, self.n_seeds)
        x_gate = torch.baddbmm(self.b_dec.detach().unsqueeze(1), gate, self.W_dec.detach())
        aux = l1_warmup(self.cfg, step) * l1 + batch_fvu(x, x_gate)
        return self.output(x, x_hat, acts, aux=aux)

