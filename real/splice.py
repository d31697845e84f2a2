"""Next-token CE and KL with an SAE's reconstruction spliced in after block L, optionally with latent groups zeroed.

The spliced positions are the ones the SAE is trained on (position > 0, norm under the collection's outlier
threshold); other positions keep their clean activations. Costs are averaged over spliced positions that
predict a next token. All S seeds run in one forward pass (the batch is repeated S times). Blocks 0..L run once
per batch (with the clean forward pass); each variant runs only blocks L+1.. from its spliced stream (the hook path,
which reruns the whole model, is kept for model layouts real.model does not recognise). The SAE works in
normalised units: it sees h * scale and its reconstruction is divided by scale before splicing.
CE loss recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean), where CE_zero splices zeros instead.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def valid_positions(h: Float[Tensor, "B T d"], threshold: float | None) -> Bool[Tensor, "B T"]:
    """Positions an SAE sees: not position 0, norm not above the outlier threshold."""
    keep = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
    keep[:, 0] = False
    if threshold is not None:
        keep &= h.norm(dim=-1) <= threshold
    return keep


def _ce_kl(logits: Float[Tensor, "N T V"], clean_logp: Float[Tensor, "N T V"], ids: Int[Tensor, "N T"],
           use: Bool[Tensor, "N T"]) -> tuple[Tensor, Tensor]:
    """Per-context sums over the used positions of CE(next token) and KL(clean || spliced)."""
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    tgt = ids[:, 1:]
    ce = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    cl = clean_logp[:, :-1]
    kl = (cl.exp() * (cl - logp)).sum(-1)
    u = use[:, :-1].to(ce.dtype)
    return (ce * u).sum(-1), (kl * u).sum(-1)


PATHS = ("auto", "suffix", "hook")
SUFFIX_ATOL = 1e-3  # the suffix path must reproduce the clean logits to this (else the hook path is used)


@torch.no_grad()
def splice_eval(
    lm,
    sae,
    tokens: Int[Tensor, "N T"],
    layer: int,
    *,
    scale: float = 1.0,
    threshold: float | None = None,
    masks: Bool[Tensor, "G S m"] | None = None,
    batch_contexts: int = 4,
    progress: bool = False,
    path: str = "auto",
) -> dict[str, Tensor | float | str]:
    """CE, KL and FVU per mask and seed with the reconstruction spliced in; plus clean and zero-ablation CE.

    masks[g, s] are the latents of seed s zeroed in variant g (None = one variant, nothing zeroed). Returns
    {"ce": [G, S], "kl": [G, S], "fvu": [G, S], "ce_clean", "ce_zero", "kl_zero", "n_tokens", "path"}.
    path "suffix" runs blocks 0..layer once per batch and only the later blocks per variant (real.model.Suffix);
    "hook" reruns the whole model with block `layer`'s output replaced; "auto" takes the suffix path when the model's
    layout is recognised and it reproduces the clean logits on the first batch, else the hook path.
    """
    from synthsae.progress import progress_bar as tqdm

    from real.model import hidden_after, logits_with, model_suffix

    if path not in PATHS:
        raise ValueError(f"path = {path!r}: must be one of {', '.join(PATHS)}")
    suffix = model_suffix(lm, layer) if path != "hook" else None
    if path == "suffix" and suffix is None:
        raise ValueError(f"path = 'suffix': the layout of {type(lm.model).__name__} is not recognised; use 'hook'")
    checked = path == "suffix"
    S, m = sae.W_dec.shape[0], sae.W_dec.shape[1]
    if masks is None:
        masks = torch.zeros(1, S, m, dtype=torch.bool)
    G = masks.shape[0]
    keep = (~masks).float().to(sae.W_dec.device)
    ce = torch.zeros(G, S, dtype=torch.float64)
    kl = torch.zeros(G, S, dtype=torch.float64)
    sse = torch.zeros(G, S, dtype=torch.float64)
    xs, xsq, nx = None, torch.zeros((), dtype=torch.float64), 0
    ce_clean = ce_zero = kl_zero = 0.0
    n_used = 0
    bar = tqdm(total=tokens.shape[0], desc="splice", unit="ctx", disable=not progress, leave=False)
    for a in range(0, tokens.shape[0], batch_contexts):
        ids = tokens[a : a + batch_contexts].long()
        B, T = ids.shape
        if suffix is not None:
            h_dev, clean, calls = suffix.clean(ids)
            h = h_dev.float().cpu()
            calls_rep = calls.repeated(S)
        else:
            h = hidden_after(lm, ids, layer).cpu()
            clean = logits_with(lm, ids)
        dev = clean.device
        use = valid_positions(h, threshold)
        use_d = use.to(dev)
        n_used += int(use[:, :-1].sum())
        ids_d = ids.to(dev)
        clean_logp = torch.log_softmax(clean[:, :-1], dim=-1)
        clean_logp = torch.cat([clean_logp, clean_logp[:, -1:]], dim=1)  # keep T positions for _ce_kl
        c, _ = _ce_kl(clean, clean_logp, ids_d, use_d)
        ce_clean += float(c.sum())
        ids_rep, use_rep, clean_rep = ids_d.repeat(S, 1), use_d.repeat(S, 1), clean_logp.repeat(S, 1, 1)
        if suffix is not None and not checked:  # the suffix path must give the clean logits from the clean stream
            r = min(S, 2)  # a repeated batch, as the variants run (two copies test the repetition at a fraction of S)
            same = suffix.run(h_dev.repeat(r, 1, 1), calls.repeated(r))
            checked = True
            if not torch.allclose(same, clean.repeat(r, 1, 1), atol=SUFFIX_ATOL, rtol=SUFFIX_ATOL):
                suffix = None
        if suffix is not None:
            zeroed = suffix.run(torch.where(use_d[..., None], torch.zeros_like(h_dev), h_dev), calls)
        else:
            zeroed = logits_with(lm, ids, layer, lambda hh: torch.where(use.to(hh.device)[..., None], torch.zeros_like(hh), hh))
        c, k = _ce_kl(zeroed.to(dev), clean_logp, ids_d, use_d)
        ce_zero += float(c.sum())
        kl_zero += float(k.sum())
        x = h[use] * scale  # [n, d] normalised units
        xs = x.double().sum(0) if xs is None else xs + x.double().sum(0)
        xsq += x.double().pow(2).sum()
        nx += x.shape[0]
        acts = sae.encode(x.to(sae.W_dec.device))  # [S, n, m]
        for g in range(G):
            x_hat = sae.decode(acts * keep[g][:, None, :]).cpu()  # [S, n, d]
            sse[g] += ((x_hat - x) ** 2).sum((-1, -2)).double()
            spliced = h.repeat(S, 1, 1)
            spliced[use.repeat(S, 1)] = (x_hat / scale).reshape(-1, x.shape[-1])
            if suffix is not None:
                logits = suffix.run(spliced, calls_rep)
            else:
                logits = logits_with(lm, ids.repeat(S, 1), layer, lambda hh, sp=spliced: sp.to(hh.device))
            c, k = _ce_kl(logits.to(dev), clean_rep, ids_rep, use_rep)
            ce[g] += c.view(S, B).sum(-1).double().cpu()
            kl[g] += k.view(S, B).sum(-1).double().cpu()
        bar.update(B)
    bar.close()
    n = max(n_used, 1)
    var = xsq - xs.pow(2).sum() / max(nx, 1)
    return {"ce": (ce / n).float(), "kl": (kl / n).float(), "fvu": (sse / var).float(), "ce_clean": ce_clean / n,
            "ce_zero": ce_zero / n, "kl_zero": kl_zero / n, "n_tokens": n_used,
            "path": "suffix" if suffix is not None else "hook"}


def ce_recovered(ce_spliced: Tensor | float, ce_clean: float, ce_zero: float) -> Tensor | float:
    """(CE_zero - CE_spliced) / (CE_zero - CE_clean): 1 = as good as the clean model, 0 = as bad as zeros."""
    return (ce_zero - ce_spliced) / (ce_zero - ce_clean)
