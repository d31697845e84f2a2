"""Pooled SAEs: clustering invariants, identical seeds pool to the same SAE, save/load round trip, the protocol."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from synthsae.config import preset
from synthsae.metrics.matching import unit_rows
from synthsae.pooling import (
    cluster_latents,
    gather_and_cluster,
    heldout_stability,
    pooled_sae,
    pooled_state,
    rank_clusters,
)

from conftest import make_sae  # noqa: E402

FAST = settings(max_examples=15, deadline=None)


def identical_seeds(sae1, S: int):
    """An S-seed SAE whose every seed is a copy of the single-seed sae1."""
    return sae1.select_seeds([0] * S)


@FAST
@given(S=st.integers(2, 5), m=st.integers(2, 30), d=st.integers(2, 8), tau=st.floats(0.3, 0.95), seed=st.integers(0, 9999))
def test_clusters_hold_at_most_one_latent_per_seed(S, m, d, tau, seed):
    g = torch.Generator().manual_seed(seed)
    dec = unit_rows(torch.randn(S * m, d, generator=g))
    seed_of = torch.arange(S).repeat_interleave(m)
    labels = cluster_latents(dec, seed_of, tau)
    assert labels.shape == (S * m,)
    for c in torch.unique(labels):
        members = seed_of[labels == c]
        assert members.numel() == torch.unique(members).numel()
    assert bool((cluster_latents(dec, seed_of, 1.01) == torch.arange(S * m)).all())  # no links: singletons


@FAST
@given(S=st.integers(2, 4), m=st.integers(2, 20), seed=st.integers(0, 9999),
       variant=st.sampled_from(["topk", "relu", "batchtopk", "jumprelu", "gated", "matryoshka"]))
def test_pooling_identical_seeds_returns_the_sae_up_to_permutation(S, m, seed, variant):
    d = 6
    one = make_sae(1, d, m, variant, seed=seed)
    many = identical_seeds(one, S)
    freq = torch.full((S, m), 0.1)
    cl = gather_and_cluster(many.W_dec, list(range(S)), freq, tau=0.7)
    assert cl.n_clusters == m and bool((cl.coverage == S).all())
    keep = rank_clusters(cl, "coverage", width=m)
    psae, pcfg = pooled_sae(one.cfg, [pooled_state(many, cl, keep, list(range(S)))], d)
    assert type(psae) is type(one) and pcfg.d_sae == m
    P = (psae.W_dec[0] @ one.W_dec[0].T).argmax(1)
    assert sorted(P.tolist()) == list(range(m))
    assert torch.allclose(psae.W_dec[0], one.W_dec[0][P], atol=1e-5)
    assert torch.allclose(psae.W_enc[0], one.W_enc[0][:, P], atol=1e-5)
    assert torch.allclose(psae.b_enc[0], one.b_enc[0][P], atol=1e-5)
    assert torch.allclose(psae.b_dec[0], one.b_dec[0], atol=1e-6)
    x = torch.randn(50, d, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert torch.allclose(psae.decode(psae.encode(x)), one.decode(one.encode(x)), atol=1e-4)


def test_dead_latents_do_not_enter_a_pool():
    sae = make_sae(3, 8, 10, "topk")
    freq = torch.full((3, 10), 0.1)
    freq[:, :4] = 0.0
    cl = gather_and_cluster(sae.W_dec, [0, 1, 2], freq, 0.7)
    assert cl.labels.numel() == 18 and not bool((cl.latent_of < 4).any())


def test_rank_rules_order_by_coverage():
    S, m, d = 4, 12, 16
    base = make_sae(1, d, m, "topk", seed=1)
    sae = base.select_seeds([0] * S)
    with torch.no_grad():  # latents 0..3 are seed-specific in seeds 1..3 (random directions): coverage 1
        g = torch.Generator().manual_seed(3)
        sae.W_dec[1:, :4] = unit_rows(torch.randn(S - 1, 4, d, generator=g))
    freq = torch.rand(S, m, generator=torch.Generator().manual_seed(0)) + 0.01
    cl = gather_and_cluster(sae.W_dec, list(range(S)), freq, 0.9)
    for rule in ("coverage", "coverage_freq"):
        order = rank_clusters(cl, rule, width=m)
        cov = cl.coverage[order]
        assert bool((cov[:-1] >= cov[1:]).all())
        assert int(cov[: m - 4].min()) == S  # the shared latents come first
    union = rank_clusters(cl, "union", width=3)
    assert union.numel() == cl.n_clusters  # the union ignores the width


def test_heldout_stability_counts_fraction_of_dictionaries():
    d = 5
    a = unit_rows(torch.eye(d)[:3])
    others = [a.clone(), unit_rows(torch.eye(d)[[0, 3, 4]]), unit_rows(torch.eye(d)[3:])]
    st_ = heldout_stability(a, others, tau=0.7)
    assert st_.tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 3])


@pytest.mark.parametrize("variant", ["topk", "batchtopk", "jumprelu", "gated", "relu"])
def test_pooled_sae_round_trips_through_save_and_load(tmp_path, variant):
    from synthsae.io import load_sae_folders
    from synthsae.pooling import save_pooled

    S, m, d = 3, 10, 6
    sae = make_sae(S, d, m, variant)
    freq = torch.full((S, m), 0.2)
    cl = gather_and_cluster(sae.W_dec, list(range(S)), freq, 0.7)
    keep = rank_clusters(cl, "coverage", width=8)
    psae, _ = pooled_sae(sae.cfg, [pooled_state(sae, cl, keep, list(range(S)))], d)
    save_pooled(tmp_path / "p", psae, 0, {"rule": "coverage"}, torch.full((8,), 0.1))
    back = load_sae_folders([tmp_path / "p"])
    assert type(back) is type(psae) and back.W_dec.shape == (1, 8, d)
    for k, v in psae.seed_tensors(0).items():  # the file view (BatchTopK stores its threshold clamped at 0)
        assert torch.allclose(back.seed_tensors(0)[k], v), k
    x = torch.randn(40, d, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(back.decode(back.encode(x)), psae.decode(psae.encode(x)), atol=1e-5)


@pytest.mark.slow
def test_pooling_study_on_tiny_run(tmp_path):
    """The protocol end to end on a tiny freshly trained run (short training; checks shapes, files and keys)."""
    import dataclasses

    from synthsae.io import load_sae_folders
    from synthsae.pooling import PoolConfig, pooling_study
    from synthsae.sae import build_sae
    from synthsae.loop import train_steps
    from synthsae.truth import build_truth, stream

    cfg = preset("tiny")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seeds=4, steps=150))
    truth = build_truth(cfg.truth)
    sae = build_sae(cfg.sae, truth.d, [0, 1, 2, 3], "cpu", torch.float32)
    train_steps(sae, stream(truth, 256, 0), 150, cfg.train, freeze_decoder=False)
    res = pooling_study((cfg, sae, truth), PoolConfig(refit_steps=20, eval_tokens=2048, progress=False), out_dir=tmp_path)
    from synthsae.serialize import to_json

    json.dumps(to_json(res), allow_nan=False)
    m = cfg.sae.d_sae
    assert set(res.variants) == {f"coverage_w{m}", f"coverage_w{2 * m}", f"coverage_freq_w{m}", f"coverage_freq_w{2 * m}", "union"}
    assert res.primary == f"coverage_w{m}" and list(res.variants)[0] == res.primary
    assert [v.role for v in res.variants.values()].count("primary") == 1
    row = res.variants[f"coverage_w{m}"]
    assert set(row.pools) == {"all", "A", "B"}
    for p in row.pools.values():
        assert 0 < p.width <= m
        back = load_sae_folders([p.folder])
        assert back.W_dec.shape[1] == p.width
    assert res.variants[f"coverage_w{2 * m}"].pools["A"].width <= 2 * m
    for key in ("stability_pool_vs_pool", "stability_null", "stability_vs_heldout", "ev_halves", "l0_halves"):
        assert getattr(row, key).mean is not None
    assert res.single.stability_between_halves.mean is not None
    assert res.bagging.width == 2 * m and res.bagging.stability_between_halves.mean is not None
    # a bag holds every latent of its seeds: its averaged reconstruction is at least as good as the worst seed's
    assert res.bagging.ev_halves.mean >= min(res.single.ev.per_seed) - 1e-6
