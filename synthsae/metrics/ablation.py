"""Functional asymmetry: zero a group of latents, decode, and measure what the reconstruction loses.

Costs (docs/metrics.md, "Functional asymmetry"):
- reconstruction: FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the eval sample (pooled, mean-centred);
- prediction: a pluggable per-token cost `(x [B, d], x_hat [..., B, d]) -> [..., B]`, averaged over tokens. On
  synthetic data it is KL(softmax(x W_head) || softmax(x_hat W_head)) through the truth's readout head
  (`head_kl`); the real side plugs next-token CE/KL of the spliced model into the same slot.

Groups per seed, all drawn among *live* latents (firing frequency > `live_threshold` on the eval sample):
stable (stability >= stable_cutoff), unstable (<= unstable_cutoff), and for each of those two a random group of
the same size and a random group matched in firing frequency (stratified by deciles of log frequency among the
live latents). Random groups may overlap the group they control for (they are random draws from all live
latents, not its complement). Random groups are drawn `n_draws` times and their costs averaged per seed.

Each group's effect is reported as the change against the full reconstruction, as a share of what ablating
every latent costs, per latent and per unit of activation mass (mass of latent i on a token = a_i * ||d_i||,
averaged over tokens), always per seed and as mean / std over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from jaxtyping import Bool, Float
from torch import Tensor

CostFn = Callable[[Tensor, Tensor], Tensor]
"""Per-token prediction cost: (x [B, d], x_hat [..., B, d]) -> cost [..., B] (0 when x_hat == x)."""

GROUPS = ("stable", "unstable", "random_size_stable", "random_freq_stable", "random_size_unstable", "random_freq_unstable")


# ----------------------------------------------------------------------------------------------- costs


def head_kl(W_head: Float[Tensor, "d C"]) -> CostFn:
    """KL(softmax(x W_head) || softmax(x_hat W_head)) per token: the synthetic stand-in for next-token KL."""

    memo: dict = {}

    def cost(x: Tensor, x_hat: Tensor) -> Tensor:
        # KL = sum p log p - p . z_q + logsumexp(z_q) with z_q = x_hat W: the clean side (p log p and p W^T) is
        # computed once per x and reused across the many ablated reconstructions of the same batch
        W = W_head.to(x_hat.dtype)
        if memo.get("x") is not x:
            logp = torch.log_softmax(x.to(x_hat.dtype) @ W, dim=-1)
            p = logp.exp()
            memo.update(x=x, neg_ent=(p * logp).sum(-1), pw=p @ W.T)
        zq = x_hat @ W
        return memo["neg_ent"] - (memo["pw"] * x_hat).sum(-1) + torch.logsumexp(zq, dim=-1)

    cost.__name__ = "head_kl"
    return cost


def fvu(x: Float[Tensor, "n d"], x_hat: Float[Tensor, "... n d"]) -> Tensor:
    """Fraction of variance unexplained, pooled over tokens and dimensions, mean-centred: one number per leading index."""
    total = ((x - x.mean(0)) ** 2).sum()
    return ((x - x_hat) ** 2).sum((-1, -2)) / total


# ----------------------------------------------------------------------------------------------- passes


def _decoder_norms(sae) -> Float[Tensor, "S m"]:
    return sae.W_dec.detach().norm(dim=-1)


@torch.no_grad()
def latent_stats(sae, x: Float[Tensor, "n d"], batch_size: int = 4096) -> tuple[Tensor, Tensor]:
    """Firing frequency [S, m] and mean activation mass a_i * ||d_i|| per token [S, m] on a sample."""
    norms = _decoder_norms(sae)
    fires = torch.zeros_like(norms, dtype=torch.float64)
    mass = torch.zeros_like(norms, dtype=torch.float64)
    for xb in x.split(batch_size):
        acts = sae.encode(xb)  # [S, B, m]
        fires += (acts != 0).sum(1).double()
        mass += acts.abs().sum(1).double() * norms.double()
    n = x.shape[0]
    return (fires / n).float(), (mass / n).float()


@torch.no_grad()
def ablate(
    sae,
    x: Float[Tensor, "n d"],
    masks: Bool[Tensor, "G S m"],
    pred_cost: CostFn | None = None,
    batch_size: int = 4096,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Zero the latents in each mask (after encoding, so the others keep their values) and decode.

    Returns {"fvu": [G, S], "pred": [G, S] (if pred_cost)}: the FVU of the ablated reconstruction and the
    mean per-token prediction cost against the clean x. An all-False mask is the plain reconstruction.
    """
    G, S, m = masks.shape
    keep = (~masks).to(x.dtype)  # [G, S, m]
    sse = torch.zeros(G, S, dtype=torch.float64, device=x.device)
    pred = torch.zeros(G, S, dtype=torch.float64, device=x.device)
    from synthsae.progress import progress_bar as tqdm

    for xb in tqdm(x.split(batch_size), desc="ablation", disable=not progress, leave=False):
        acts = sae.encode(xb)  # [S, B, m]
        for g in range(G):
            x_hat = sae.decode(acts * keep[g][:, None, :])  # [S, B, d]
            sse[g] += ((xb - x_hat) ** 2).sum((-1, -2)).double()
            if pred_cost is not None:
                pred[g] += pred_cost(xb, x_hat).sum(-1).double()
    total = ((x - x.mean(0)) ** 2).sum().double()
    out = {"fvu": (sse / total).float()}
    if pred_cost is not None:
        out["pred"] = (pred / x.shape[0]).float()
    return out


# ----------------------------------------------------------------------------------------------- groups


def random_group(eligible: Bool[Tensor, " m"], size: int, gen: torch.Generator, exclude: Tensor | None = None) -> Bool[Tensor, " m"]:
    """A uniformly random set of `size` eligible latents (fewer if not enough are eligible)."""
    pool = eligible.clone()
    if exclude is not None:
        pool &= ~exclude
    idx = torch.nonzero(pool.cpu()).squeeze(1)
    pick = idx[torch.randperm(idx.numel(), generator=gen)[:size]]
    out = torch.zeros_like(eligible)
    out[pick.to(eligible.device)] = True
    return out


def freq_matched_group(
    target: Bool[Tensor, " m"], eligible: Bool[Tensor, " m"], freq: Float[Tensor, " m"], gen: torch.Generator,
    n_bins: int = 10,
) -> Bool[Tensor, " m"]:
    """A random group with the target's firing-frequency profile: eligible latents are split into `n_bins`
    equal-count bins of log frequency, and from each bin as many latents are drawn (uniformly, without
    replacement) as the target has there. Members of the target may be drawn too (a random group, not the
    complement), so the size equals the target's wherever the bins allow it.
    """
    el = torch.nonzero(eligible.cpu()).squeeze(1)
    out = torch.zeros_like(target)
    if el.numel() == 0 or not bool(target.any()):
        return out
    logf = torch.log(freq.detach().cpu().double().clamp_min(1e-12))[el]
    order = el[torch.argsort(logf + torch.rand(el.numel(), generator=gen, dtype=torch.float64) * 1e-9)]
    bins = torch.tensor_split(order, min(n_bins, order.numel()))
    tgt = target.cpu()
    for b in bins:
        want = int(tgt[b].sum())
        if want:
            pick = b[torch.randperm(b.numel(), generator=gen)[:want]]
            out[pick.to(out.device)] = True
    return out


def build_groups(
    stability: Float[Tensor, "S m"],
    freq: Float[Tensor, "S m"],
    stable_cutoff: float = 0.8,
    unstable_cutoff: float = 0.2,
    live_threshold: float = 1e-5,
    n_draws: int = 3,
    seed: int = 0,
) -> dict[str, Bool[Tensor, "D S m"]]:
    """Masks per group name: stable / unstable [1, S, m]; the four random controls [n_draws, S, m]."""
    S, m = stability.shape
    live = freq > live_threshold
    stable = live & (stability >= stable_cutoff)
    unstable = live & (stability <= unstable_cutoff)
    gen = torch.Generator().manual_seed(seed)
    groups: dict[str, Tensor] = {"stable": stable[None], "unstable": unstable[None]}
    for name, target in (("stable", stable), ("unstable", unstable)):
        size_m = torch.zeros(n_draws, S, m, dtype=torch.bool, device=stability.device)
        freq_m = torch.zeros_like(size_m)
        for r in range(n_draws):
            for s in range(S):
                size_m[r, s] = random_group(live[s], int(target[s].sum()), gen)
                freq_m[r, s] = freq_matched_group(target[s], live[s], freq[s], gen)
        groups[f"random_size_{name}"] = size_m
        groups[f"random_freq_{name}"] = freq_m
    return groups


# ----------------------------------------------------------------------------------------------- summary


def _clean(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def spread(values: Iterable[float | None]) -> Spread:
    """Mean / std (ddof = 0) over the finite per-seed values, and the values themselves (None where undefined)."""
    per = [_clean(v) for v in values]
    ok = [v for v in per if v is not None]
    mean = sum(ok) / len(ok) if ok else None
    std = math.sqrt(sum((v - mean) ** 2 for v in ok) / len(ok)) if ok else None
    return Spread(mean, std, per)


def _div(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(b != 0, a / torch.where(b != 0, b, torch.ones_like(b)), torch.full_like(a, math.nan))


def _control_of(name: str) -> tuple[str | None, str | None]:
    """('stable', 'frequency') for 'random_freq_stable'; (None, None) for a group that is not a control."""
    if not name.startswith("random_"):
        return None, None
    _, how, target = name.split("_", 2)
    return target, {"size": "size", "freq": "frequency"}[how]


def summarize(
    groups: dict[str, Bool[Tensor, "D S m"]],
    costs: dict[str, dict[str, Tensor]],
    base: dict[str, Tensor],
    full: dict[str, Tensor],
    mass: Float[Tensor, "S m"],
) -> dict[str, GroupResult]:
    """Typed per-group numbers. costs[name][metric] is [D, S] (per draw), base/full [S] (no / every latent ablated).

    Empty groups give None for every normalised number of that seed.
    """
    total_mass = mass.sum(-1)  # [S]
    out: dict[str, GroupResult] = {}
    for name, masks in groups.items():
        size = masks.sum(-1).float()  # [D, S]
        gmass = (masks.float() * mass[None]).sum(-1)  # [D, S]
        nonempty = size > 0
        ms = _div(gmass, total_mass[None].expand_as(gmass))
        per_metric = {}
        for metric in costs[name]:
            delta = costs[name][metric] - base[metric][None]  # [D, S]
            delta = torch.where(nonempty, delta, math.nan)
            share = _div(delta, (full[metric] - base[metric])[None].expand_as(delta))
            spm = _div(share, ms)
            per_metric[metric] = GroupCost(
                delta=spread(delta.nanmean(0).tolist()), share=spread(share.nanmean(0).tolist()),
                per_latent=spread(_div(delta, size).nanmean(0).tolist()),
                per_mass=spread(_div(delta, gmass).nanmean(0).tolist()),
                share_per_mass_share=spread(spm.nanmean(0).tolist()),
                share_per_mass_share_draws=[[_clean(v) for v in row] for row in spm.tolist()])
        target, how = _control_of(name)
        out[name] = GroupResult(name=name, controls=target, matched_by=how, size=spread(size.mean(0).tolist()),
                                mass_share=spread(torch.where(nonempty, ms, math.nan).nanmean(0).tolist()),
                                costs=per_metric)
    return out


# ----------------------------------------------------------------------------------------------- entry point


def eval_sample(truth, n: int, seed: int) -> Tensor:
    """A held-out eval sample of n activations from the truth, on its device (stream seed `seed`)."""
    from synthsae.truth import make_generator, sample

    return sample(truth, n, make_generator(seed, truth.device), details=False).x


from synthsae.source import EVAL_DATA_SEED_OFFSET, eval_data_seed  # noqa: E402
from synthsae.results import AblationResult, GroupCost, GroupResult, Spread  # noqa: E402  (one eval stream for every stage)


@dataclass
class AblationConfig:
    """What an ablation study varies; None = the run's analysis config (tau, match, cut-offs, eval_tokens) and its
    eval stream's seed."""

    tau: float | None = None
    match: str | None = None
    stable_cutoff: float | None = None
    unstable_cutoff: float | None = None
    eval_tokens: int | None = None
    eval_seed: int | None = None
    live_threshold: float = 1e-5
    n_draws: int = 3  # random control groups per seed
    group_seed: int = 0
    batch_size: int = 4096
    progress: bool = True


def ablation_study(sae, truth=None, cfg=None, settings: AblationConfig | None = None, *, x: Tensor | None = None,
                   stability: Tensor | None = None, pred_cost: CostFn | None = None,
                   pred_cost_name: str | None = None) -> AblationResult:
    """Functional asymmetry of stable vs unstable latents across all S seeds of `sae` (an AblationResult).

    `cfg` (a RunConfig) supplies tau, match, cut-offs, eval_tokens and the eval seed (data_seed + 1_000_003);
    `settings` overrides it, AnalysisConfig's defaults fill in without it. `x` is the eval sample (default: fresh
    samples of `truth`); `pred_cost` defaults to the truth's readout-head KL (no prediction cost when neither is
    given). `stability` [S, m] defaults to the per-latent cross-seed stability at `tau` under `match`.
    """
    s = settings or AblationConfig()
    tau, match, stable_cutoff, unstable_cutoff = s.tau, s.match, s.stable_cutoff, s.unstable_cutoff
    eval_tokens, eval_seed, live_threshold, n_draws = s.eval_tokens, s.eval_seed, s.live_threshold, s.n_draws
    group_seed, batch_size, progress = s.group_seed, s.batch_size, s.progress
    from synthsae.config import AnalysisConfig

    acfg = cfg.analysis if cfg is not None else AnalysisConfig()
    tau = acfg.tau if tau is None else tau
    match = acfg.match if match is None else match
    stable_cutoff = acfg.stable_cutoff if stable_cutoff is None else stable_cutoff
    unstable_cutoff = acfg.unstable_cutoff if unstable_cutoff is None else unstable_cutoff
    eval_tokens = acfg.eval_tokens if eval_tokens is None else eval_tokens
    if eval_seed is None:
        eval_seed = eval_data_seed(cfg) if cfg is not None else 1234 + EVAL_DATA_SEED_OFFSET
    if x is None:
        if truth is None:
            raise ValueError("ablation_study needs an eval sample x or a truth to draw one from")
        x = eval_sample(truth, eval_tokens, eval_seed)
    if pred_cost is None and truth is not None:
        pred_cost, pred_cost_name = head_kl(truth.W_head), "head_kl"
    x = x.to(sae.W_dec.device, sae.W_dec.dtype)
    S, m = sae.W_dec.shape[0], sae.W_dec.shape[1]
    if stability is None:
        stability = latent_stability(sae, tau=tau, match=match)
    stability = stability.to(x.device)

    freq, mass = latent_stats(sae, x, batch_size)
    groups = build_groups(stability, freq, stable_cutoff, unstable_cutoff, live_threshold, n_draws, group_seed)
    names = list(groups)
    none = torch.zeros(1, S, m, dtype=torch.bool, device=x.device)
    every = torch.ones(1, S, m, dtype=torch.bool, device=x.device)
    stacked = torch.cat([none, every] + [groups[n] for n in names])
    bounds, start = {}, 2
    for n in names:
        bounds[n] = (start, start + groups[n].shape[0])
        start += groups[n].shape[0]

    agg = ablate(sae, x, stacked, pred_cost, batch_size, progress=progress)
    base = {k: v[0] for k, v in agg.items()}
    full = {k: v[1] for k, v in agg.items()}
    costs = {n: {k: v[bounds[n][0] : bounds[n][1]] for k, v in agg.items()} for n in names}
    live = freq > live_threshold
    pred_unit = f"mean per-token {pred_cost_name or 'prediction cost'} against the clean input (nats)"
    return AblationResult(
        eval_tokens=int(x.shape[0]), eval_seed=eval_seed, tau=tau, match=match, stable_cutoff=stable_cutoff,
        unstable_cutoff=unstable_cutoff, live_threshold=live_threshold, n_draws=n_draws,
        prediction_cost=pred_cost_name if pred_cost is not None else None,
        units={"fvu": "fraction of variance unexplained (pooled, mean-centred)",
               **({"pred": pred_unit} if pred_cost is not None else {})},
        n_live=spread(live.sum(-1).float().tolist()),
        baseline={k: spread(v.tolist()) for k, v in base.items()},
        all_ablated={k: spread(v.tolist()) for k, v in full.items()},
        groups=summarize(groups, costs, base, full, mass),
    )


def latent_stability(sae, tau: float = 0.7, match: str = "maxcos") -> Float[Tensor, "S m"]:
    """Per-latent cross-seed stability [S, m] at `tau` under `match` (synthsae.metrics.stability)."""
    from synthsae.metrics.stability import pair_scores, stability

    enc = sae.W_enc.detach() if match == "strict" else None
    scores, _ = pair_scores(sae.W_dec.detach(), match, enc)
    return stability(scores, tau)
