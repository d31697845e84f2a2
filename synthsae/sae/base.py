"""The base SAE: S independently initialised SAEs stacked on a leading seed axis, trained in one batched step.

Layout (SAELens's, plus the seed axis): W_enc [S, d_in, d_sae], b_enc [S, d_sae], W_dec [S, d_sae, d_in] with
unit-norm rows, b_dec [S, d_in]. Every parameter and persistent buffer has S as its first dimension, so a seed
subset is a slice (`select_seeds`) and S folders stack into one SAE. Losses are summed over seeds and every
per-seed quantity (gradient clipping included, in the trainer) is computed per seed, so seed s follows exactly
the trajectory it would follow alone.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from synthsae.sae_config import SAEConfig

_SKIP_INIT: contextvars.ContextVar[bool] = contextvars.ContextVar("synthsae_skip_init", default=False)


def cheap_sync(device: torch.device | str) -> bool:
    """Whether reading a tensor's value on the host is free here: yes on the CPU; on CUDA it stalls the queue, so the
    training step does without (divergence flags and AuxK are then handled without reading values per step)."""
    return torch.device(device).type == "cpu"


@dataclass
class SAEOutput:
    """What one training forward pass returns (per-seed values have shape [S])."""

    x_hat: Float[Tensor, "S B d"]
    loss: Float[Tensor, ""]  # sum over seeds of `losses` (seeds are independent, so their gradients are too)
    losses: Float[Tensor, " S"]
    recon: Float[Tensor, " S"]  # reconstruction term (the batch FVU)
    aux: Float[Tensor, " S"]  # sparsity / auxiliary terms (variant-specific, 0 if none)
    l0: Float[Tensor, " S"]  # mean number of non-zero latents per token
    fvu: Float[Tensor, " S"]  # sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the batch (detached)
    fired: Bool[Tensor, "S m"]  # which latents were non-zero on at least one token of the batch


def as_seed_batch(x: Tensor, S: int) -> Tensor:
    """[B, d] (shared by all seeds) or [S, B, d] -> a [S, B, d] view."""
    if x.dim() == 2:
        return x.unsqueeze(0).expand(S, *x.shape)
    if x.dim() != 3 or x.shape[0] != S:
        raise ValueError(f"input has shape {tuple(x.shape)}; expected [B, d] or [S={S}, B, d]")
    return x


def centred_sq(x: Tensor) -> Tensor:
    """sum ||x - mean(x)||^2 over a batch: a scalar for [B, d], one per seed for [S, B, d] (no autograd needed)."""
    with torch.no_grad():
        dims = (-2, -1)
        return torch.linalg.vector_norm(x - x.mean(dim=-2, keepdim=True), dim=dims).pow(2).clamp_min(1e-12)


class _FVU(torch.autograd.Function):
    """Per-seed ||x_hat - x||^2 / var with a one-pass backward (2 r g / var): autograd's sub / norm / pow / div chain
    made six passes over [S, B, d] per step."""

    @staticmethod
    def forward(ctx, x_hat, x, var):  # type: ignore[override]
        r = x_hat - x
        ctx.save_for_backward(r, var)
        return torch.linalg.vector_norm(r, dim=(1, 2)).pow(2) / var

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        r, var = ctx.saved_tensors
        return r * (2 * g / var).view(-1, 1, 1), None, None


def batch_fvu(x: Tensor, x_hat: Float[Tensor, "S B d"]) -> Float[Tensor, " S"]:
    """Per-seed fraction of variance unexplained on this batch (pooled, mean-centred)."""
    var = centred_sq(x)
    if x_hat.requires_grad and torch.is_grad_enabled():
        return _FVU.apply(x_hat, as_seed_batch(x, x_hat.shape[0]), var.expand(x_hat.shape[0]).contiguous())
    err = torch.linalg.vector_norm(as_seed_batch(x, x_hat.shape[0]) - x_hat, dim=(1, 2)).pow(2)
    return err / var


def batch_scale(x: Tensor, S: int) -> Float[Tensor, " S"]:
    """Per-seed RMS norm of the centred batch: sparsity penalties are divided by it, so they are scale-free."""
    xs = as_seed_batch(x, S)
    return (xs - xs.mean(dim=1, keepdim=True)).pow(2).sum(dim=2).mean(dim=1).clamp_min(1e-12).sqrt()


class SAE(nn.Module):
    """Base of every variant: parameters, init, dense encode/decode and the decoder-norm housekeeping."""

    # ---- the variant protocol: what a variant may declare (defaults here; see tests/test_variant_protocol.py)
    variant: ClassVar[str] = "base"  # the registered name (set by register_variant / the plug-in loader)
    saelens_architecture: ClassVar[str] = "standard"  # the architecture name written to cfg.json
    saelens_reads: ClassVar[tuple[str, ...]] = ()  # SAELens architectures loaded as this variant (own, not inherited)
    sparsity_knob: ClassVar[str] = "l1_coeff"  # the SAEConfig field that sets L0 (bench): k, l0_coeff or l1_coeff
    bench_sae: ClassVar[dict[str, Any]] = {}  # SAEConfig fields `synthsae bench` sets for this variant (read-only)

    @classmethod
    def check_config(cls, cfg: SAEConfig, prefix: str = "sae") -> None:
        """This variant's own config rules (after the shared field checks); raise a one-line ConfigError."""

    @staticmethod
    def latents_per_k(cfg: SAEConfig) -> float:
        """Latents one unit of k turns on (bench: k = L0 target / this); 1 unless latents come in groups."""
        return 1.0

    def latent_groups(self) -> list[int]:
        """Sizes of the contiguous latent groups that act as one feature, in latent order ([] = every latent alone)."""
        return []

    def __init__(self, cfg: SAEConfig, d_in: int, init_seeds: list[int], device=None, dtype=torch.float32):
        super().__init__()
        if not init_seeds:
            raise ValueError("an SAE needs at least one init seed")
        self.cfg = cfg
        self.d_in = int(d_in)
        self.init_seeds = [int(s) for s in init_seeds]
        S, m, d = len(self.init_seeds), cfg.d_sae, self.d_in
        kw = dict(device=device, dtype=dtype)
        self.W_enc = nn.Parameter(torch.empty(S, d, m, **kw))
        self.b_enc = nn.Parameter(torch.zeros(S, m, **kw))
        self.W_dec = nn.Parameter(torch.empty(S, m, d, **kw))
        self.b_dec = nn.Parameter(torch.zeros(S, d, **kw))
        # precision of the dense encoder forward that only *selects* latents (TopK family): None = parameter dtype;
        # torch.bfloat16 / torch.float16 = that dtype; "tf32" = float32 with TF32 matmuls (CUDA). See loop.DTYPES.
        self.select_precision: torch.dtype | str | None = None
        if not _SKIP_INIT.get():
            self.reset_parameters()

    # ------------------------------------------------------------------------------------------- init

    def reset_parameters(self) -> None:
        """Each seed from its own CPU generator: random unit decoder rows, encoder = decoder^T, zero biases."""
        with torch.no_grad():
            for s, seed in enumerate(self.init_seeds):  # init only: the training step has no seed loop
                gen = torch.Generator().manual_seed(seed)
                w = torch.randn(self.cfg.d_sae, self.d_in, generator=gen, dtype=torch.float64)
                w.div_(w.norm(dim=1, keepdim=True).clamp_min(1e-12))
                self.W_dec[s].copy_(w.to(self.W_dec.dtype))  # rounded once on the CPU: half the bytes to a GPU
                # the encoder is the decoder transposed, copied from it on its device: the same values as copying the
                # float64 w.T, ~15x faster (a strided float64 transpose took 10 s a seed at 65,536 x 2,304)
                self.W_enc[s].copy_(self.W_dec[s].T if self.W_enc.dtype == self.W_dec.dtype else w.T)
                self.init_seed_extras(s, gen)

    def init_seed_extras(self, s: int, gen: torch.Generator) -> None:
        """Hook for variants whose extra parameters need per-seed random init (default: none)."""

    # ------------------------------------------------------------------------------------------- shapes

    @property
    def n_seeds(self) -> int:
        return len(self.init_seeds)

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    # ------------------------------------------------------------------------------------------- maths

    def bias_eff(self) -> Float[Tensor, "S m"]:
        """b_enc - b_dec @ W_enc: subtracting b_dec from the input folded into the bias (no extra B x d x m matmul)."""
        if not self.cfg.apply_b_dec_to_input:
            return self.b_enc
        return self.b_enc - torch.bmm(self.b_dec.unsqueeze(1), self.W_enc).squeeze(1)

    def pre_acts(self, x: Tensor, bias: Tensor | None = None, out: Tensor | None = None) -> Float[Tensor, "S B m"]:
        """Encoder pre-activations (x - b_dec) @ W_enc + b_enc for every seed (into `out` when given, no grad)."""
        bias = self.bias_eff() if bias is None else bias
        xs = as_seed_batch(x, self.n_seeds)
        if out is not None:
            return torch.baddbmm(bias.unsqueeze(1), xs, self.W_enc, out=out)
        return torch.baddbmm(bias.unsqueeze(1), xs, self.W_enc)

    def selection_pre_acts(self, x: Tensor, bias: Tensor) -> tuple[Float[Tensor, "S B m"], bool]:
        """Dense pre-activations used to pick latents (no grad, reused buffer); True when they are exact, False when
        computed at lower precision (callers then recompute the selected values in the parameter dtype)."""
        S, B, m = self.n_seeds, x.shape[-2], self.d_sae
        prec = self.select_precision
        if prec is None or prec == self.dtype:
            return self.pre_acts(x, bias, out=self.scratch("pre", (S, B, m), self.dtype)), True
        if prec == "tf32":
            old = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                return self.pre_acts(x, bias, out=self.scratch("pre", (S, B, m), self.dtype)), self.device.type != "cuda"
            finally:
                torch.backends.cuda.matmul.allow_tf32 = old
        xs = as_seed_batch(x, S).to(prec)
        out = self.scratch("pre_lowp", (S, B, m), prec)
        return torch.baddbmm(bias.to(prec).unsqueeze(1), xs, self.W_enc.detach().to(prec), out=out), False

    def scratch(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """A reused work buffer (not state): fresh large temporaries cost page faults every step."""
        bufs = self.__dict__.setdefault("_scratch", {})
        t = bufs.get(name)
        if t is None or t.shape != shape or t.dtype != dtype or t.device != self.device:
            t = bufs[name] = torch.empty(shape, dtype=dtype, device=self.device)
        return t

    def activation(self, pre: Float[Tensor, "S B m"]) -> Float[Tensor, "S B m"]:
        """Inference non-linearity (ReLU unless the variant says otherwise)."""
        return torch.relu(pre)

    def encode(self, x: Tensor) -> Float[Tensor, "S B m"]:
        """Dense inference activations (>= 0); x is [S, B, d] or [B, d] shared by all seeds."""
        return self.activation(self.pre_acts(x))

    def decode(self, acts: Float[Tensor, "S B m"]) -> Float[Tensor, "S B d"]:
        return torch.baddbmm(self.b_dec.unsqueeze(1), acts, self.W_dec)

    def forward(self, x: Tensor, step: int = 0, dead: Bool[Tensor, "S m"] | None = None) -> SAEOutput:
        """One training forward pass; `dead` marks latents the trainer counts as dead (for auxiliary losses)."""
        acts = self.encode(x)
        x_hat = self.decode(acts)
        return self.output(x, x_hat, acts, aux=None)

    def output(self, x: Tensor, x_hat: Tensor, acts: Tensor | None, aux: Tensor | None,
               l0: Tensor | None = None, fired: Tensor | None = None) -> SAEOutput:
        """Assemble an SAEOutput with the FVU as reconstruction loss plus `aux` (per seed)."""
        recon = batch_fvu(x, x_hat)
        aux = torch.zeros_like(recon) if aux is None else aux
        losses = recon + aux
        with torch.no_grad():
            if acts is not None:
                nz = acts != 0
                l0 = nz.sum(dim=2).to(recon.dtype).mean(dim=1)
                fired = nz.any(dim=1)
        return SAEOutput(x_hat=x_hat, loss=losses.sum(), losses=losses, recon=recon, aux=aux, l0=l0,
                         fvu=recon.detach(), fired=fired)

    # ------------------------------------------------------------------------------------------- decoder norm

    def decoder_norms(self) -> Float[Tensor, "S m"]:
        return self.W_dec.norm(dim=2)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm (after every optimiser step)."""
        self.W_dec.div_(self.W_dec.norm(dim=2, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the gradient component parallel to each (unit) decoder row: it would only change the norm."""
        g = self.W_dec.grad
        if g is None:
            return
        w = self.W_dec
        g.addcmul_(torch.linalg.vecdot(g, w, dim=2).unsqueeze(2), w, value=-1.0)

    def update_running_stats(self, out: SAEOutput) -> None:
        """Hook called by the trainer after each step (BatchTopK's threshold estimate lives here)."""

    # ------------------------------------------------------------------------------------------- seeds & files

    def select_seeds(self, idx: list[int]) -> "SAE":
        """A new SAE of the same class holding the seeds at positions idx (copies)."""
        idx = [int(i) for i in idx]
        new = self.empty_like(self.cfg, self.d_in, [self.init_seeds[i] for i in idx], self.device, self.dtype)
        sel = torch.tensor(idx, dtype=torch.long, device=self.device)
        new.load_state_dict({k: v.index_select(0, sel).clone() for k, v in self.state_dict().items()})
        return new

    @classmethod
    def empty_like(cls, cfg: SAEConfig, d_in: int, init_seeds: list[int], device=None, dtype=torch.float32) -> "SAE":
        """An instance whose weights will be overwritten (skips the random init)."""
        token = _SKIP_INIT.set(True)
        try:
            return cls(cfg, d_in, init_seeds, device=device, dtype=dtype)
        finally:
            _SKIP_INIT.reset(token)

    def saelens_cfg(self) -> dict[str, Any]:
        """Architecture-specific cfg.json fields (beyond d_in, d_sae, dtype, ...)."""
        return {}

    def seed_tensors(self, s: int) -> dict[str, Tensor]:
        """Weights of seed s as SAELens names them (no S axis)."""
        return {k: v[s] for k, v in self.state_dict().items()}

    def load_seed_tensors(self, per_seed: list[dict[str, Tensor]]) -> None:
        """Inverse of seed_tensors over all seeds (stacks them); raises KeyError/RuntimeError on a mismatch."""
        own = self.state_dict()
        missing = [k for k in own if k not in per_seed[0]]
        if missing:
            raise KeyError(f"missing tensor(s) {', '.join(missing)}")
        self.load_state_dict({k: torch.stack([t[k] for t in per_seed]).to(own[k].dtype) for k in own})

    def _load_core_and_threshold(self, per_seed: list[dict[str, Tensor]], set_threshold) -> None:
        """load_seed_tensors for variants that save a `threshold` but hold it in another form (log, scalar)."""
        for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            if k not in per_seed[0]:
                raise KeyError(f"missing tensor {k}")
        with torch.no_grad():
            for k in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(self, k).copy_(torch.stack([t[k] for t in per_seed]))
            set_threshold(torch.stack([t["threshold"] for t in per_seed]))

    def extra_repr(self) -> str:
        return f"variant={self.variant}, S={self.n_seeds}, d_in={self.d_in}, d_sae={self.d_sae}"


def l1_warmup(cfg: SAEConfig, step: int) -> float:
    """Sparsity coefficient ramped linearly from 0 to l1_coeff over l1_warmup_steps."""
    if cfg.l1_warmup_steps <= 0:
        return cfg.l1_coeff
    return cfg.l1_coeff * min(1.0, (step + 1) / cfg.l1_warmup_steps)

