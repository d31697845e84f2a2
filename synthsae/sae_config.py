"""What SAE to train: the variant name, width, sparsity and each variant's knobs (a plain dataclass, apart from
synthsae.config so the variants can take it without importing the config loader that looks them up)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SAEConfig:
    """Which SAE to train and its width/sparsity; variant-specific knobs have defaults here."""

    variant: str = "topk"
    d_sae: int = 256
    k: int = 8  # TopK-family: active latents per token (BatchTopK: on average)
    l1_coeff: float = 0.3  # relu / gated L1 penalty (after warm-up), in units of the batch's RMS norm
    l1_warmup_steps: int = 500
    jumprelu_init_threshold: float = 0.3
    jumprelu_bandwidth: float = 0.05
    l0_coeff: float = 0.03  # jumprelu L0 penalty (FVU units per active latent; warmed up like l1)
    aux_k: int = 32  # TopK auxiliary loss: dead latents used to model the residual
    aux_coeff: float = 1.0 / 32
    matryoshka_prefixes: list[int] = field(default_factory=list)  # empty = powers-of-two prefixes up to d_sae
    # blocktopk: latents in contiguous groups; k then counts active groups. group_sizes (summing to d_sae) gives
    # mixed sizes in latent order; empty = d_sae / group_size groups of group_size latents
    group_size: int = 1
    group_sizes: list[int] = field(default_factory=list)
    # blocktopk: score a group of >= 2 latents by its norm minus that group's running mean norm (EMA over training
    # batches), so a group that is on for every token (a dense component) does not win the top-k by its size alone
    group_centre: bool = False
    apply_b_dec_to_input: bool = True
