"""Per-latent stability across S seeds: the fraction of the other seeds in which a latent is matched at cos >= tau.

The cross-seed work is one [S, S, m] table of match scores, filled pair by pair and chunk by chunk on the
device: never an (S*m) x (S*m) matrix.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from synthsae.metrics.matching import BLOCK_ELEMS, DEFAULT_CHUNK, hungarian, maxcos_both, strict_match, unit_rows

BATCHED = True  # the batched pair paths (here and in subspaces.span_reproducibility); False = the pair loops
PROGRESS_PAIRS = 1000  # show a progress line from this many seed pairs on (about 45 seeds)

RULES = ("maxcos", "hungarian", "strict")


def pair_scores(
    dec: Float[Tensor, "S m d"],
    rule: str = "maxcos",
    enc: Float[Tensor, "S d m"] | None = None,
    chunk: int = DEFAULT_CHUNK,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    batched: bool | None = None,
) -> tuple[Float[Tensor, "S S m"], Int[Tensor, "S S m"]]:
    """Match score and partner of every latent of seed a in every seed b (diagonal: nan / -1), on the CPU.

    maxcos: best signed cosine; hungarian: cosine to the one-to-one partner; strict: min(dec, enc) cosine
    where the decoder and encoder Hungarian assignments agree, else 0 (see matching.strict_match).
    Inside `distributed.sharing_pairs()` under torchrun the unordered seed pairs are dealt round-robin to the
    ranks and summed back (every entry comes from exactly one rank), so each rank gets the full table.
    maxcos with small dictionaries takes the batched path (one seed against a block of seeds per matmul, see
    _maxcos_batched); progress (default: from PROGRESS_PAIRS pairs on) prints a progress line.
    """
    from synthsae import distributed

    if rule not in RULES:
        raise ValueError(f"match rule {rule!r}: must be one of {', '.join(RULES)}")
    if rule == "strict" and enc is None:
        raise ValueError("match rule 'strict' needs the encoder W_enc [S, d, m]")
    S, m, _ = dec.shape
    dev = torch.device(device) if device is not None else dec.device
    D = unit_rows(dec.to(dev, torch.float32))
    E = unit_rows(enc.to(dev, torch.float32).transpose(1, 2)) if enc is not None else None
    scores = torch.full((S, S, m), float("nan"))
    partner = torch.full((S, S, m), -1, dtype=torch.long)
    share = distributed.pair_share()
    pairs = [(a, b) for a in range(S) for b in range(a + 1, S)]
    if share is not None:
        pairs = pairs[share.rank :: share.world]
    from synthsae.progress import progress_bar

    bar = progress_bar(total=len(pairs), desc=f"seed pairs ({rule})", unit="pair",
                       disable=not (len(pairs) >= PROGRESS_PAIRS if progress is None else progress))
    if rule == "maxcos" and share is None and (BATCHED if batched is None else batched) and m * m * 2 <= BLOCK_ELEMS:
        _maxcos_batched(D, scores, partner, bar)
        pairs = []
    for a, b in pairs:
        bar.update(1)
        if rule == "maxcos":
            va, ia, vb, ib = maxcos_both(D[a], D[b], chunk)
            scores[a, b], partner[a, b], scores[b, a], partner[b, a] = va.cpu(), ia.cpu(), vb.cpu(), ib.cpu()
            continue
        if rule == "hungarian":
            p, s = hungarian(D[a], D[b])
        else:
            p, s = strict_match(D[a], D[b], E[a], E[b])
        p, s = p.cpu(), s.cpu().float()
        scores[a, b], partner[a, b] = s, p
        ok = p >= 0  # the same assignment read from b's side
        partner[b, a, p[ok]] = torch.nonzero(ok).squeeze(1)
        scores[b, a, p[ok]] = s[ok]
    bar.close()
    if share is not None:
        own = torch.zeros(S, S, dtype=torch.bool)
        for a, b in pairs:
            own[a, b] = own[b, a] = True
        scores = distributed.all_sum(torch.where(own[:, :, None], scores, 0.0), "pair scores")  # nan + 0 = nan: kept
        partner = distributed.all_sum(torch.where(own[:, :, None], partner, 0), "pair partners")
        eye = torch.eye(S, dtype=torch.bool)
        scores[eye], partner[eye] = float("nan"), -1
    return scores, partner


def _maxcos_batched(D: Float[Tensor, "S m d"], scores: Tensor, partner: Tensor, bar) -> None:
    """maxcos of every seed pair, seed a against a block of later seeds in one [m, n*m] matmul (a block holds at
    most BLOCK_ELEMS cosines): the same numbers as the pair loop, without its per-pair Python overhead."""
    S, m, d = D.shape
    per = max(1, BLOCK_ELEMS // (m * m))  # seeds per block
    for a in range(S - 1):
        for b0 in range(a + 1, S, per):
            b1 = min(S, b0 + per)
            c = (D[a] @ D[b0:b1].reshape(-1, d).T).view(m, b1 - b0, m)  # [latent of a, seed b, latent of b]
            va, ia = c.max(dim=2)  # a -> each b: [m, n]
            vb, ib = c.max(dim=0)  # each b -> a: [n, m]
            scores[a, b0:b1], partner[a, b0:b1] = va.T.cpu(), ia.T.cpu()
            scores[b0:b1, a], partner[b0:b1, a] = vb.cpu(), ib.cpu()
            bar.update(b1 - b0)


def stability(scores: Float[Tensor, "S S m"], tau: float) -> Float[Tensor, "S m"]:
    """Fraction of the other S-1 seeds in which each latent is matched with score >= tau."""
    S = scores.shape[0]
    if S < 2:
        raise ValueError("stability needs at least 2 seeds")
    return (scores >= tau).sum(dim=1).float() / (S - 1)  # nan (diagonal, unmatched) compares False


def soft_stability(scores: Float[Tensor, "S S m"]) -> Float[Tensor, "S m"]:
    """Mean best score over the other seeds (unmatched counts as 0)."""
    S = scores.shape[0]
    eye = torch.eye(S, dtype=torch.bool)[:, :, None].expand_as(scores)
    return torch.where(eye, 0.0, scores.nan_to_num(0.0)).sum(dim=1) / (S - 1)


def classify(stab: Float[Tensor, "S m"], stable_cutoff: float = 0.8, unstable_cutoff: float = 0.2) -> dict[str, Tensor]:
    """Boolean masks of stable (>= stable_cutoff) and unstable (<= unstable_cutoff) latents."""
    return {"stable": stab >= stable_cutoff, "unstable": stab <= unstable_cutoff}


def threshold_sweep(
    scores: Float[Tensor, "S S m"], taus: list[float], stable_cutoff: float = 0.8, unstable_cutoff: float = 0.2,
    mask: Tensor | None = None,
) -> list[dict]:
    """Mean stability and the stable / unstable fractions at every tau (over latents in `mask`, default all)."""
    rows = []
    for tau in taus:
        st = stability(scores, tau)
        v = st[mask] if mask is not None else st.reshape(-1)
        rows.append({
            "tau": float(tau),
            "mean_stability": float(v.mean()) if v.numel() else float("nan"),
            "frac_stable": float((v >= stable_cutoff).float().mean()) if v.numel() else float("nan"),
            "frac_unstable": float((v <= unstable_cutoff).float().mean()) if v.numel() else float("nan"),
        })
    return rows


def random_dictionary_baseline(
    m: int, d: int, tau: float, rule: str = "maxcos", seeds: int = 2, gen_seed: int = 0, device: str | torch.device = "cpu"
) -> dict:
    """Chance level: stability and soft stability of `seeds` Gaussian-random dictionaries of the same shape."""
    g = torch.Generator().manual_seed(gen_seed)
    dec = torch.randn(seeds, m, d, generator=g)
    enc = torch.randn(seeds, d, m, generator=g) if rule == "strict" else None
    sc, _ = pair_scores(dec, rule, enc, device=device)
    return {"mean_stability": float(stability(sc, tau).mean()), "mean_soft_stability": float(soft_stability(sc).mean())}
