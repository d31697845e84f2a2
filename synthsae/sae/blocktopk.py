"""Block-sparse TopK (`blocktopk`): latents in groups, a token activates its k groups with the largest code norm.

A group of g >= 2 latents is a subspace feature: its code is the group's raw pre-activations (signed, so any
direction of the span can be written) and it decodes as a whole; its score is the L2 norm of that code. A group
of one latent is an ordinary TopK latent (ReLU code, score = its pre-activation), so with every group of size 1
the variant is TopK exactly. Groups are contiguous runs of latents (`sae.group_size`, or mixed `sae.group_sizes`);
`sae.k` counts active groups. In the spirit of subspace-aware SAEs (SASA): the groups, not the latents, are what
should reproduce across seeds (see synthsae.metrics.atlas.group_stability).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from synthsae.errors import ConfigError
from synthsae.sae_config import SAEConfig
from synthsae.sae import register_variant
from synthsae.sae.sparse import SparseCode, code_from_topk, fast_topk
from synthsae.sae.topk import TopKSAE


def group_sizes(cfg) -> list[int]:
    """The size of every group, in latent order (cfg.group_sizes, else d_sae / group_size equal groups)."""
    if cfg.group_sizes:
        return [int(g) for g in cfg.group_sizes]
    return [int(cfg.group_size)] * (cfg.d_sae // cfg.group_size)


def group_slices(cfg) -> list[tuple[int, int]]:
    """(first latent, end latent) of every group."""
    out, a = [], 0
    for g in group_sizes(cfg):
        out.append((a, a + g))
        a += g
    return out


@register_variant("blocktopk")
class BlockTopKSAE(TopKSAE):
    """Top-k groups per token by the norm of the group's pre-activations; a group decodes as a whole.

    Saved for SAELens as `topk` when every group has size 1 (it is TopK then); otherwise cfg.json says
    architecture "blocktopk" with `group_sizes` and a `note` on how to encode (SAELens has no group encoder).
    """

    saelens_reads = ()  # SAELens has no group encoder: only our own folders (metadata.variant) load as blocktopk
    # `synthsae bench` trains it with pairs of latents (the smallest real group; 2 divides every suite's width) and
    # k = L0 target / 2 groups: with groups of one it would be TopK exactly and add nothing to the board
    bench_sae = {"group_size": 2, "group_sizes": []}

    @classmethod
    def check_config(cls, cfg: SAEConfig, prefix: str = "sae") -> None:
        """Equal groups must tile d_sae, and k counts groups, so it is at most their number."""
        if not cfg.group_sizes and cfg.d_sae % cfg.group_size:
            raise ConfigError(f"{prefix}.group_size = {cfg.group_size!r}: must divide d_sae = {cfg.d_sae} "
                              "(or give group_sizes)")
        n_groups = len(cfg.group_sizes) if cfg.group_sizes else cfg.d_sae // cfg.group_size
        if cfg.k > n_groups:
            raise ConfigError(f"{prefix}.k = {cfg.k!r}: must be an integer 1..{n_groups}")

    @staticmethod
    def latents_per_k(cfg) -> float:
        """Latents one unit of k turns on (bench: k for an L0 target): the mean group size."""
        sizes = group_sizes(cfg)
        return sum(sizes) / len(sizes)

    def latent_groups(self) -> list[int]:
        return list(self.sizes)

    def __init__(self, cfg, d_in, init_seeds, device=None, dtype=torch.float32):
        sizes = group_sizes(cfg)
        if sum(sizes) != cfg.d_sae:
            raise ValueError(f"sae.group_sizes sum to {sum(sizes)}, not d_sae = {cfg.d_sae}")
        super().__init__(cfg, d_in, init_seeds, device=device, dtype=dtype)
        self.sizes = sizes
        # contiguous runs of equal-size groups: (first latent, end latent, group size); scores are computed per run
        self.runs: list[tuple[int, int, int]] = []
        self.run_group0: list[int] = []  # index of the first group of each run
        a = 0
        for gi, g in enumerate(sizes):
            if self.runs and self.runs[-1][2] == g:
                self.runs[-1] = (self.runs[-1][0], a + g, g)
            else:
                self.runs.append((a, a + g, g))
                self.run_group0.append(gi)
            a += g
        self.centre = bool(getattr(cfg, "group_centre", False)) and any(g > 1 for g in sizes)
        # running mean norm of every group over training batches (used when group_centre; 1-latent groups: 0)
        self.register_buffer("group_offset", torch.zeros(len(self.init_seeds), len(sizes), device=device, dtype=dtype),
                             persistent=self.centre)
        self._batch_norm_mean: Tensor | None = None
        self.uniform = len(self.runs) == 1
        self.g = sizes[0] if self.uniform else None
        gid = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        self.register_buffer("_gid", gid.to(device), persistent=False)
        self.register_buffer("_gsize", torch.tensor(sizes, device=device), persistent=False)
        self.register_buffer("_gstart", (torch.cumsum(torch.tensor(sizes), 0) - torch.tensor(sizes)).to(device),
                             persistent=False)
        self.register_buffer("_linear", (torch.tensor(sizes)[gid] > 1).to(device), persistent=False)

    @property
    def n_groups(self) -> int:
        return len(self.sizes)

    @property
    def all_singletons(self) -> bool:
        return self.uniform and self.g == 1

    # ------------------------------------------------------------------------------------------- maths

    def group_scores(self, pre: Float[Tensor, "S B m"]) -> Float[Tensor, "S B G"]:
        """Score of every group: its pre-activation for a single latent, the norm of its pre-activations otherwise
        (minus the group's running mean norm with group_centre)."""
        S, B, _ = pre.shape
        parts = []
        for a, b, g in self.runs:
            seg = pre[..., a:b]
            parts.append(seg if g == 1 else torch.linalg.vector_norm(seg.reshape(S, B, (b - a) // g, g), dim=-1))
        raw = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        if not self.centre or self.all_singletons:
            return raw
        if self.training:
            self._batch_norm_mean = raw.detach().mean(dim=1) * (self._gsize > 1)
        return raw - self.group_offset.unsqueeze(1)

    @torch.no_grad()
    def update_running_stats(self, out) -> None:
        """EMA (decay 0.99) of each group's mean norm over training batches (group_centre only)."""
        m = self._batch_norm_mean
        if m is None:
            return
        fresh = (self.group_offset == 0).all(dim=1, keepdim=True)
        self.group_offset.copy_(torch.where(fresh, m, 0.99 * self.group_offset + 0.01 * m))
        self._batch_norm_mean = None

    def code_of(self, pre: Tensor, cols: Tensor | None = None) -> Tensor:
        """Latent code from pre-activations: ReLU for single-latent groups, identity inside larger groups."""
        if self.all_singletons:
            return torch.relu(pre)
        lin = self._linear if cols is None else self._linear[cols]
        return torch.where(lin, pre, torch.relu(pre))

    def selected_code(self, pre: Tensor, code: SparseCode) -> Tensor:
        return self.code_of(pre, code.cols % self.d_sae)

    def top_groups(self, pre: Float[Tensor, "S B m"]) -> Int[Tensor, "S B k"]:
        return fast_topk(self.group_scores(pre), self.cfg.k)[1]

    def activation(self, pre: Float[Tensor, "S B m"]) -> Float[Tensor, "S B m"]:
        gidx = self.top_groups(pre)
        on = torch.zeros(pre.shape[:2] + (self.n_groups,), dtype=torch.bool, device=pre.device).scatter_(-1, gidx, True)
        return self.code_of(pre) * on[..., self._gid]

    def select(self, pre: Float[Tensor, "S B m"]) -> tuple[SparseCode, Tensor]:
        S, B, m = pre.shape
        gidx = self.top_groups(pre)
        if self.uniform:
            g = self.g
            lat = (gidx * g).unsqueeze(-1) + torch.arange(g, device=pre.device)
            lat = lat.reshape(S, B, -1)
            return code_from_topk(lat, m), torch.gather(pre, -1, lat).reshape(-1)
        sz = self._gsize[gidx].reshape(-1)  # entries per selected group, rows already in token order
        st = self._gstart[gidx].reshape(-1)
        row_of_group = torch.arange(S * B, device=pre.device).repeat_interleave(self.cfg.k)
        rows = row_of_group.repeat_interleave(sz)
        first = torch.cumsum(sz, 0) - sz
        within = torch.arange(rows.numel(), device=pre.device) - first.repeat_interleave(sz)
        lat = st.repeat_interleave(sz) + within
        cols = lat + (rows // B) * m
        counts = sz.view(S * B, self.cfg.k).sum(dim=1)
        offsets = torch.cumsum(counts, 0) - counts
        code = SparseCode(rows=rows, cols=cols, offsets=offsets, n_rows=S * B, n_cols=S * m)
        return code, pre.reshape(S * B, m)[rows, lat]

    # ------------------------------------------------------------------------------------------- files

    @property
    def saelens_architecture(self) -> str:  # type: ignore[override]
        return "topk" if self.all_singletons else "blocktopk"

    def seed_tensors(self, s: int) -> dict[str, Tensor]:
        t = super().seed_tensors(s)
        if self.centre:
            t["group_offset"] = self.group_offset[s].contiguous()
        return t

    def saelens_cfg(self) -> dict[str, Any]:
        if self.all_singletons:
            return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}
        return {
            "k": self.cfg.k,
            "group_sizes": list(self.sizes),
            "note": ("blocktopk (synthsae): SAELens has no group encoder, so this folder does not load there. "
                     "Weights use SAELens names. Encode: pre = (x - b_dec) @ W_enc + b_enc; latents form contiguous "
                     "groups of group_sizes; score = pre for a 1-latent group, L2 norm of the group's pre otherwise; "
                     "with group_centre, subtract group_offset (a tensor in the weights file) from each score; "
                     "keep the k top-scoring groups; code = relu(pre) in 1-latent groups, pre itself in larger ones; "
                     "decode: code @ W_dec + b_dec."),
        }
