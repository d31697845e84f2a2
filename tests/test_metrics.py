"""Metric invariants on dictionaries we build by hand: identical, permuted, random, rotated inside a subspace."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from synthsae.config import AnalysisConfig, preset
from synthsae.metrics.analyze import analyze, analyze_with_latents
from synthsae.metrics.frequency import FrequencyCounter, firing_frequency, frequency_from_log10, frequency_vs_stability, spearman
from synthsae.metrics.matching import hungarian, hungarian_dense, hungarian_sparse, maxcos, maxcos_both, strict_match, topk_cos, unit_rows
from synthsae.metrics.recovery import atom_recovery, block_members, subspace_recovery
from synthsae.metrics.stability import pair_scores, soft_stability, stability, threshold_sweep
from synthsae.metrics.subspaces import (
    cluster_by_span,
    describe_clusters,
    effective_rank,
    orthonormal_basis,
    overlap_baseline,
    random_points_null,
    random_rotation_in,
    rotation_null,
    span_projection,
    span_reproducibility,
    subspace_overlap,
)
from synthsae.results import AnalysisResult
from synthsae.serialize import from_json, to_json
from synthsae.truth import build_truth

FAST = settings(max_examples=15, deadline=None)


def rand_dict(seed: int, m: int, d: int) -> torch.Tensor:
    return unit_rows(torch.randn(m, d, generator=torch.Generator().manual_seed(seed)))


def haar(r: int, seed: int) -> torch.Tensor:
    q, rr = torch.linalg.qr(torch.randn(r, r, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(rr))).float()


# ----------------------------------------------------------------------------------------------- matching


def test_maxcos_both_matches_two_one_sided_calls():
    a, b = rand_dict(0, 37, 12), rand_dict(1, 53, 12)
    va, ia, vb, ib = maxcos_both(a, b, chunk=7)
    wa, ja = maxcos(a, b)
    wb, jb = maxcos(b, a)
    assert torch.allclose(va, wa) and torch.equal(ia, ja)
    assert torch.allclose(vb, wb) and torch.equal(ib, jb)
    v, i = topk_cos(a, b, 3, chunk=5)
    assert torch.equal(i[:, 0], ja) and (v[:, :-1] >= v[:, 1:]).all()


@FAST
@given(m=st.integers(2, 40), d=st.integers(4, 24), seed=st.integers(0, 10_000))
def test_hungarian_on_permuted_copy_returns_the_permutation(m, d, seed):
    a = rand_dict(seed, m, d)
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed + 1))
    b = a[perm]  # b[j] = a[perm[j]], so a[i] sits at b[inv[i]]
    inv = torch.argsort(perm)
    for sparse in (False, True):
        p, c = hungarian(a, b, sparse=sparse)
        assert torch.equal(p, inv)
        assert torch.allclose(c, torch.ones(m), atol=1e-5)


@FAST
@given(m=st.integers(1, 30), n=st.integers(1, 30), d=st.integers(3, 16), seed=st.integers(0, 10_000))
def test_sparse_and_dense_hungarian_agree_on_small_problems(m, n, d, seed):
    a, b = rand_dict(seed, m, d), rand_dict(seed + 7, n, d)
    pd, cd = hungarian_dense(a, b)
    ps, cs = hungarian_sparse(a, b, k=max(m, n))  # complete candidate graph: the same optimum
    assert float(cd.nan_to_num(0).sum()) == pytest.approx(float(cs.nan_to_num(0).sum()), abs=1e-4)
    assert int((pd >= 0).sum()) == int((ps >= 0).sum()) == min(m, n)


def test_sparse_hungarian_with_few_candidates_is_near_optimal():
    a = rand_dict(3, 200, 32)
    b = unit_rows(a[torch.randperm(200, generator=torch.Generator().manual_seed(4))] + 0.3 * rand_dict(5, 200, 32))
    _, cd = hungarian_dense(a, b)
    _, cs = hungarian_sparse(a, b, k=8)
    assert float(cs.sum()) >= float(cd.sum()) - 1e-3 * 200


def test_strict_needs_encoder_agreement():
    dec = rand_dict(0, 20, 16)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(1))
    enc = rand_dict(2, 20, 16)
    _, s = strict_match(dec, dec[perm], enc, enc[perm])
    assert torch.allclose(s, torch.ones(20), atol=1e-5)
    _, s2 = strict_match(dec, dec[perm], enc, rand_dict(9, 20, 16))  # encoders disagree
    assert float((s2 >= 0.7).float().mean()) < 0.2


# ----------------------------------------------------------------------------------------------- stability


@FAST
@given(S=st.integers(2, 4), m=st.integers(2, 30), seed=st.integers(0, 10_000), rule=st.sampled_from(["maxcos", "hungarian", "strict"]))
def test_stability_invariant_to_permuting_latents_inside_a_seed(S, m, seed, rule):
    g = torch.Generator().manual_seed(seed)
    base = rand_dict(seed, m, 16)
    dec = torch.stack([unit_rows(base + 0.4 * torch.randn(m, 16, generator=g)) for _ in range(S)])
    enc = dec.transpose(1, 2).clone()
    perms = [torch.randperm(m, generator=g) for _ in range(S)]
    dec_p = torch.stack([dec[s][perms[s]] for s in range(S)])
    enc_p = torch.stack([enc[s][:, perms[s]] for s in range(S)])
    sc, _ = pair_scores(dec, rule, enc)
    sp, _ = pair_scores(dec_p, rule, enc_p)
    st0, st1 = stability(sc, 0.7), stability(sp, 0.7)
    for s in range(S):  # latent perms[s][j] of the original is latent j of the permuted seed
        assert torch.allclose(st1[s], st0[s][perms[s]])
        assert torch.allclose(soft_stability(sp)[s], soft_stability(sc)[s][perms[s]], atol=1e-5)


@FAST
@given(S=st.integers(2, 5), m=st.integers(1, 40), tau=st.floats(-0.99, 0.999), rule=st.sampled_from(["maxcos", "hungarian"]))
def test_identical_dictionaries_are_fully_stable(S, m, tau, rule):
    dec = rand_dict(m, m, 20)[None].repeat(S, 1, 1) * 3.0  # unnormalised rows: normalised inside
    sc, _ = pair_scores(dec, rule)
    assert torch.equal(stability(sc, tau), torch.ones(S, m))


def test_random_directions_in_high_d_are_unstable():
    dec = torch.randn(4, 256, 512, generator=torch.Generator().manual_seed(0))
    sc, _ = pair_scores(dec, "maxcos", chunk=100)
    assert float(stability(sc, 0.7).mean()) == 0.0
    assert float(soft_stability(sc).mean()) < 0.25
    sweep = threshold_sweep(sc, [0.1, 0.5, 0.9])
    assert sweep[0]["mean_stability"] > 0.9 and sweep[2]["mean_stability"] == 0.0


def test_stability_counts_the_fraction_of_other_seeds():
    base = rand_dict(0, 10, 64)
    other = rand_dict(1, 10, 64)
    dec = torch.stack([base, base, base, other])  # seeds 0-2 agree, seed 3 is random
    st_ = stability(pair_scores(dec)[0], 0.7)
    assert torch.allclose(st_[0], torch.full((10,), 2 / 3))
    assert float(st_[3].max()) == 0.0


# ----------------------------------------------------------------------------------------------- subspaces


@FAST
@given(d=st.integers(8, 48), p=st.integers(1, 6), q=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_subspace_overlap_invariant_to_rotating_either_basis(d, p, q, seed):
    g = torch.Generator().manual_seed(seed)
    A = orthonormal_basis(torch.randn(d, p, generator=g))
    B = orthonormal_basis(torch.randn(d, q, generator=g) + 0.5 * torch.cat([A, torch.zeros(d, max(q - p, 0))], 1)[:, :q])
    ov = subspace_overlap(A, B)
    assert subspace_overlap(A @ haar(p, seed), B) == pytest.approx(ov, abs=1e-5)
    assert subspace_overlap(A, B @ haar(q, seed + 1)) == pytest.approx(ov, abs=1e-5)
    assert subspace_overlap(A, A @ haar(p, seed + 2)) == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= ov <= 1.0 + 1e-6


def test_subspace_overlap_of_random_subspaces_is_near_baseline():
    g = torch.Generator().manual_seed(0)
    d, p, q = 256, 4, 8
    ovs = [subspace_overlap(orthonormal_basis(torch.randn(d, p, generator=g)), orthonormal_basis(torch.randn(d, q, generator=g)))
           for _ in range(200)]
    assert np.mean(ovs) == pytest.approx(overlap_baseline(p, q, d), rel=0.15)


def test_span_reproducibility_of_rotated_basis_is_high_while_maxcos_is_low():
    d, r = 256, 3
    U = orthonormal_basis(torch.randn(d, r, generator=torch.Generator().manual_seed(0)))
    tiling = unit_rows(torch.randn(2 * r, r, generator=torch.Generator().manual_seed(1)))  # 6 directions in the block
    A = tiling @ U.T
    B = tiling @ haar(r, 5) @ U.T  # seed b: the same tiling rotated inside the block
    dec = torch.stack([torch.cat([A, rand_dict(9, 40, d)]), torch.cat([B, rand_dict(10, 40, d)])])
    span = span_reproducibility(dec, k_max=4)
    mc = maxcos(unit_rows(A), unit_rows(B))[0]
    n = 2 * r
    assert float(mc.mean()) < 0.9
    assert float(span[0, :n, r - 1].mean()) > 0.98 and float(span[0, :n, 3].min()) > 0.97
    assert float(span[0, :n, 0].mean()) < float(span[0, :n, 3].mean()) - 0.05
    assert float(span[0, n:, 3].mean()) < 0.5  # random latents are not span-reproducible


def test_span_projection_k1_is_best_absolute_cosine():
    a, b = rand_dict(0, 30, 16), rand_dict(1, 50, 16)
    p = span_projection(a, b, 4)
    assert torch.allclose(p[:, 0], (a @ b.T).abs().amax(dim=1), atol=1e-5)
    assert (p[:, 1:] >= p[:, :-1] - 1e-6).all()


def test_effective_rank_of_an_even_tiling():
    U = orthonormal_basis(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)))
    X = unit_rows(torch.randn(400, 4, generator=torch.Generator().manual_seed(1))) @ U.T
    assert effective_rank(X) == pytest.approx(4.0, abs=0.3)


def test_random_points_null_matches_the_design_table():
    table = {(2, 4): 0.70, (2, 8): 0.90, (3, 4): 0.49, (3, 8): 0.74, (4, 4): 0.31, (4, 8): 0.55,
             (6, 4): 0.17, (6, 8): 0.28, (8, 4): 0.06, (8, 8): 0.13}
    for (r, n), want in table.items():
        assert random_points_null(r, n, 0.7, trials=400) == pytest.approx(want, abs=0.06)


@pytest.mark.parametrize("r,n,lo,hi", [(2, 8, 0.8, 1.0), (8, 4, 0.0, 0.2), (4, 8, 0.35, 0.75)])
def test_rotation_null_follows_the_geometry_table(r, n, lo, hi):
    d = 48
    U = orthonormal_basis(torch.randn(d, r, generator=torch.Generator().manual_seed(r)))
    vals = []
    for t in range(8):  # several random tilings of the block by n directions
        lat = unit_rows(torch.randn(n, r, generator=torch.Generator().manual_seed(100 * t + n))) @ U.T
        vals.append(rotation_null(lat, U, tau=0.7, n_rot=32, gen_seed=t)["stability"])
    assert lo <= np.mean(vals) <= hi


def test_rotation_acts_inside_the_block_only():
    d, r = 20, 3
    U = orthonormal_basis(torch.randn(d, r, generator=torch.Generator().manual_seed(0)))
    R = random_rotation_in(U, torch.Generator().manual_seed(1))
    assert torch.allclose(R @ R.T, torch.eye(d, dtype=R.dtype), atol=1e-6)
    v = torch.randn(d, dtype=R.dtype)
    v_out = v - U.double() @ (U.double().T @ v)
    assert torch.allclose(R @ v_out, v_out, atol=1e-6)
    assert not torch.allclose(R @ U.double(), U.double(), atol=1e-2)


def test_clusters_of_block_tilings_recover_blocks_and_ranks():
    d, S = 64, 4
    g = torch.Generator().manual_seed(0)
    bases = [orthonormal_basis(torch.randn(d, r, generator=g)) for r in (3, 5)]
    vecs, seed_of = [], []
    for s in range(S):
        for U in bases:
            r = U.shape[1]
            n = 2 * r
            vecs.append(unit_rows(torch.randn(n, r, generator=g)) @ U.T)
            seed_of.append(torch.full((n,), s))
        vecs.append(rand_dict(50 + s, 10, d))
        seed_of.append(torch.full((10,), s))
    X, so = torch.cat(vecs), torch.cat(seed_of)
    labels = cluster_by_span(X, so, k_max=4, rho=0.9)
    cl = describe_clusters(X, so, labels, bases=bases)
    big = [c for c in cl if c["size"] >= 8]
    assert len(big) == 2
    for c in big:
        assert c["best_block_overlap"] > 0.95
        assert round(c["effective_rank"]) == c["best_block_rank"] or abs(c["effective_rank"] - c["best_block_rank"]) < 0.8
        assert c["cross_seed_overlap"] > 0.9 > 5 * c["cross_seed_overlap_baseline"]


# ----------------------------------------------------------------------------------------------- recovery


def test_true_atoms_plus_noise_give_mcc_near_one():
    atoms = rand_dict(0, 50, 32)
    g = torch.Generator().manual_seed(1)
    dec = torch.cat([atoms + 0.03 * torch.randn(50, 32, generator=g), torch.randn(30, 32, generator=g)])
    dec = dec[torch.randperm(80, generator=g)]
    r = atom_recovery(dec, atoms)
    assert r["mcc"] > 0.97 and r["frac_recovered"] == 1.0
    rnd = atom_recovery(torch.randn(80, 32, generator=g), atoms)
    assert rnd["mcc"] < 0.6 and rnd["frac_recovered"] == 0.0


def test_subspace_recovery_of_latents_spanning_a_block():
    d, r = 40, 5
    truth_U = orthonormal_basis(torch.randn(d, r, generator=torch.Generator().manual_seed(0)))
    lat = unit_rows(torch.randn(12, r, generator=torch.Generator().manual_seed(1))) @ truth_U.T
    noise = rand_dict(2, 30, d)
    dec = torch.cat([lat + 0.02 * rand_dict(3, 12, d), noise])
    bases = torch.zeros(1, d, r)
    bases[0] = truth_U
    mem = block_members(dec, bases)[:, 0]
    assert mem[:12].all() and not mem[12:].any()
    assert subspace_recovery(dec[mem], truth_U) > 0.99
    assert subspace_recovery(noise[:r], truth_U) < 0.5


# ----------------------------------------------------------------------------------------------- frequency


def test_frequency_counter_and_spearman():
    codes = torch.zeros(2, 10, 4)
    codes[:, :5, 0] = 1.0
    codes[:, :, 1] = 2.0
    c = FrequencyCounter()
    c.update(codes[:, :6])
    c.update(codes[:, 6:])
    assert torch.allclose(c.frequency(), firing_frequency(codes))
    assert spearman(torch.arange(10.0), torch.arange(10.0) ** 3) == pytest.approx(1.0)
    fs = frequency_vs_stability(firing_frequency(codes), torch.rand(2, 4))
    assert fs["n_dead"] == 4
    # stored log10 frequencies: the SAELens floor log10(0 + 1e-10) reads back as dead, anything above as alive
    back = frequency_from_log10(torch.log10(torch.tensor([0.0, 1e-9, 0.5]) + 1e-10))
    assert back[0] == 0 and back[1] > 0 and back[2] == pytest.approx(0.5, rel=1e-5)


# ----------------------------------------------------------------------------------------------- analyze


def _truth_like_dictionaries(S: int = 3):
    cfg = preset("tiny")
    truth = build_truth(cfg.truth)
    g = torch.Generator().manual_seed(0)
    m, d = cfg.sae.d_sae, truth.d
    dec = []
    for _ in range(S):
        parts = [truth.atoms + 0.03 * torch.randn(truth.atoms.shape, generator=g)]
        for b in range(truth.n_blocks):
            U = truth.block_basis(b)
            parts.append(unit_rows(torch.randn(2 * U.shape[1], U.shape[1], generator=g)) @ U.T)
        D = torch.cat(parts)
        dec.append(torch.cat([D, torch.randn(m - D.shape[0], d, generator=g)]))
    return truth, torch.stack(dec)


def test_analyze_is_json_and_carries_baselines():
    truth, dec = _truth_like_dictionaries()
    freq = torch.rand(dec.shape[0], dec.shape[1])
    res, per = analyze_with_latents(dec, dec.transpose(1, 2), freq, truth, AnalysisConfig())
    raw = to_json(res)
    json.dumps(raw, allow_nan=False)
    assert from_json(AnalysisResult, raw) == from_json(AnalysisResult, json.loads(json.dumps(raw)))
    assert res.settings.tau == 0.7 and res.settings.seeds == 3
    assert set(raw["stability"]["mean"]) == {"value", "baseline"}
    assert res.truth.atoms.mcc.value > 0.95 > res.truth.atoms.mcc.baseline
    assert res.truth.atoms.atom_latent_stability == 1.0
    for bl in res.truth.blocks:
        assert bl.recovery.value > 0.99
        assert 0.0 <= bl.rotation_null <= 1.0
    assert per["stability"].shape == dec.shape[:2] == per["null_stability"].shape
    assert per["span_reproducibility"].shape == (*dec.shape[:2], 4)
    res2 = analyze(dec, None, None, None, AnalysisConfig(match="hungarian", tau=0.5))
    assert res2.truth is None and res2.frequency is None and res2.stability.over == "all"
