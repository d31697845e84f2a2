"""Functional asymmetry (ablation): invariants of the costs, the groups and the study's summary."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from synthsae.config import preset
from synthsae.metrics.ablation import (
    GROUPS,
    ablate,
    AblationConfig,
    ablation_study,
    build_groups,
    freq_matched_group,
    fvu,
    head_kl,
    latent_stats,
    random_group,
)
from synthsae.serialize import to_json
from synthsae.truth import build_truth

from conftest import make_sae  # noqa: E402

FAST = settings(max_examples=12, deadline=None)


def sample_x(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.rand(d, generator=g) + torch.randn(d, generator=g)


def test_fvu_definition():
    x = sample_x(200, 6, 0)
    assert float(fvu(x, x)) == 0.0
    assert float(fvu(x, x.mean(0).expand_as(x))) == pytest.approx(1.0, rel=1e-5)
    x_hat = torch.stack([x, x.mean(0).expand_as(x)])
    assert fvu(x, x_hat).shape == (2,)


def test_head_kl_zero_on_identity_and_nonnegative():
    x = sample_x(100, 8, 1)
    W = torch.randn(8, 5, generator=torch.Generator().manual_seed(2))
    cost = head_kl(W)
    assert cost(x, x).abs().max() < 1e-5
    noisy = x + torch.randn(3, 100, 8, generator=torch.Generator().manual_seed(3))
    c = cost(x, noisy)
    assert c.shape == (3, 100)
    assert bool((c >= -1e-6).all())


@FAST
@given(S=st.integers(1, 3), d=st.integers(2, 9), m=st.integers(1, 24), seed=st.integers(0, 10_000),
       variant=st.sampled_from(["relu", "topk"]))
def test_ablating_nothing_changes_nothing(S, d, m, seed, variant):
    sae = make_sae(S, d, m, variant, seed=seed)
    x = sample_x(64, d, seed)
    W = torch.randn(d, 4, generator=torch.Generator().manual_seed(seed))
    none = torch.zeros(1, S, m, dtype=torch.bool)
    r = ablate(sae, x, none, head_kl(W), batch_size=17)  # odd chunking must not matter
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    assert torch.allclose(r["fvu"][0], fvu(x, x_hat), rtol=1e-4, atol=1e-6)
    assert torch.allclose(r["pred"][0], head_kl(W)(x, x_hat).mean(-1), rtol=1e-4, atol=1e-6)


@FAST
@given(S=st.integers(1, 3), d=st.integers(2, 9), m=st.integers(1, 24), seed=st.integers(0, 10_000),
       variant=st.sampled_from(["relu", "topk"]))
def test_ablating_every_latent_is_the_decoder_bias_alone(S, d, m, seed, variant):
    sae = make_sae(S, d, m, variant, seed=seed)
    x = sample_x(64, d, seed)
    W = torch.randn(d, 4, generator=torch.Generator().manual_seed(seed))
    every = torch.ones(1, S, m, dtype=torch.bool)
    r = ablate(sae, x, every, head_kl(W), batch_size=25)
    b = sae.b_dec.detach()[:, None, :].expand(S, x.shape[0], d)
    expect = ((x - b) ** 2).sum((1, 2)) / ((x - x.mean(0)) ** 2).sum()
    assert torch.allclose(r["fvu"][0], expect, rtol=1e-4, atol=1e-6)
    assert torch.allclose(r["pred"][0], head_kl(W)(x, b).mean(-1), rtol=1e-4, atol=1e-6)


def test_random_and_frequency_matched_groups():
    g = torch.Generator().manual_seed(0)
    m = 50
    eligible = torch.ones(m, dtype=torch.bool)
    eligible[:5] = False
    grp = random_group(eligible, 10, g)
    assert int(grp.sum()) == 10 and not bool((grp & ~eligible).any())
    assert int(random_group(eligible, 100, g).sum()) == 45  # capped at what is eligible
    freq = torch.logspace(-4, 0, m)  # increasing with the index
    target = torch.zeros(m, dtype=torch.bool)
    target[[10, 20, 30, 49]] = True
    for _ in range(5):
        fm = freq_matched_group(target, eligible, freq, g, n_bins=9)  # 45 eligible: bins of 5 latents
        picked = torch.nonzero(fm).squeeze(1).tolist()
        assert len(picked) == 4 and not bool((fm & ~eligible).any())
        bins = [(i - 5) // 5 for i in picked]  # the bin of each pick
        assert sorted(bins) == sorted((i - 5) // 5 for i in (10, 20, 30, 49))


def test_build_groups_sizes_and_liveness():
    S, m = 3, 40
    g = torch.Generator().manual_seed(1)
    stab = torch.rand(S, m, generator=g)
    freq = torch.rand(S, m, generator=g) * 0.1
    freq[:, :4] = 0.0  # dead: in no group
    groups = build_groups(stab, freq, 0.8, 0.2, 1e-5, n_draws=2, seed=0)
    assert set(groups) == set(GROUPS)
    for name, mask in groups.items():
        assert not bool(mask[..., :4].any()), name
    assert not bool((groups["stable"] & groups["unstable"]).any())
    assert torch.equal(groups["random_size_stable"].sum(-1), groups["stable"].sum(-1).expand(2, S))
    assert torch.equal(groups["random_freq_unstable"].sum(-1), groups["unstable"].sum(-1).expand(2, S))


@pytest.fixture(scope="module")
def tiny_study():
    cfg = preset("tiny")
    truth = build_truth(cfg.truth)
    sae = make_sae(3, truth.d, 48, "topk", k=4, seed=5)
    # make a third of the latents shared by every seed so there is a stable group
    with torch.no_grad():
        sae.W_dec[:, :16] = sae.W_dec[:1, :16]
        sae.W_enc[:, :, :16] = sae.W_enc[:1, :, :16]
    stab = None
    res = ablation_study(sae, truth, settings=AblationConfig(eval_tokens=2048, n_draws=2, progress=False))
    return sae, truth, res, stab


def test_study_is_json_and_consistent(tiny_study):
    sae, truth, res, _ = tiny_study
    json.dumps(to_json(res), allow_nan=False)
    assert set(res.groups) == set(GROUPS)
    assert res.groups["random_freq_stable"].controls == "stable" and res.groups["random_freq_stable"].matched_by == "frequency"
    st_ = res.groups["stable"]
    assert 0 < st_.size.mean <= 16  # the shared latents that fire on the eval sample
    base, full = res.baseline, res.all_ablated
    for name, row in res.groups.items():
        for metric in ("fvu", "pred"):
            c = row.costs[metric]
            assert len(c.share_per_mass_share_draws) == (1 if row.controls is None else 2)
            for s in range(3):
                size = row.size.per_seed[s]
                delta = c.delta.per_seed[s]
                if size == 0 or row.controls is not None:  # random rows are means over draws of ratios
                    continue
                total = full[metric].per_seed[s] - base[metric].per_seed[s]
                assert c.share.per_seed[s] == pytest.approx(delta / total, rel=1e-4, abs=1e-7)
                assert c.per_latent.per_seed[s] * size == pytest.approx(delta, rel=1e-4, abs=1e-7)
                ms = row.mass_share.per_seed[s]
                assert 0.0 <= ms <= 1.0 + 1e-6
                if ms > 0:
                    assert c.share_per_mass_share.per_seed[s] * ms == pytest.approx(c.share.per_seed[s], rel=1e-4, abs=1e-7)
                    assert c.share_per_mass_share_draws[0][s] == pytest.approx(c.share_per_mass_share.per_seed[s])
        m = row.costs["fvu"].delta
        if m.mean is not None:
            ok = [v for v in m.per_seed if v is not None]
            assert m.mean == pytest.approx(sum(ok) / len(ok))


def test_per_mass_matches_group_mass(tiny_study):
    sae, truth, res, _ = tiny_study
    from synthsae.metrics.ablation import eval_sample

    x = eval_sample(truth, 2048, res.eval_seed)
    _, mass = latent_stats(sae, x)
    row = res.groups["stable"]
    total = mass.sum(-1)
    for s in range(3):
        gmass = row.mass_share.per_seed[s] * float(total[s])
        if gmass > 0:
            assert row.costs["fvu"].per_mass.per_seed[s] * gmass == pytest.approx(row.costs["fvu"].delta.per_seed[s], rel=1e-3)


def test_pluggable_prediction_cost():
    sae = make_sae(2, 5, 12, "relu", seed=3)
    x = sample_x(300, 5, 4)

    def sq(x_, x_hat):  # any per-token cost works, e.g. a CE/KL of a spliced model on the real side
        return ((x_ - x_hat) ** 2).sum(-1)

    stab = torch.zeros(2, 12)
    stab[:, :6] = 1.0
    res = ablation_study(sae, settings=AblationConfig(n_draws=1, progress=False), x=x, stability=stab, pred_cost=sq,
                         pred_cost_name="sq")
    assert res.prediction_cost == "sq"
    # with this cost, pred = FVU * total variance / n
    var = float(((x - x.mean(0)) ** 2).sum()) / x.shape[0]
    for s in range(2):
        assert res.baseline["pred"].per_seed[s] == pytest.approx(res.baseline["fvu"].per_seed[s] * var, rel=1e-4)
    assert not math.isnan(res.groups["stable"].costs["pred"].delta.mean)
