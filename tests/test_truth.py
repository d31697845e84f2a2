"""The planted ground truth: isotropic blocks, firing frequencies, L0, determinism, geometry."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from synthsae.config import TruthConfig, preset
from synthsae.truth import build_truth, make_generator, sample


def _single_block(d: int, r: int, seed: int = 0) -> TruthConfig:
    return TruthConfig(
        d=d, n_atoms=0, subspace_ranks=[r], subspace_orthogonal=[False], target_l0=0.5,
        noise_std=0.0, bias_norm=0.0, magnitude_log_std=0.0, seed=seed,
    )


@settings(max_examples=12, deadline=None)
@given(d=st.integers(8, 24), r=st.integers(1, 6), seed=st.integers(0, 1000))
def test_block_covariance_has_rank_r_and_is_isotropic(d: int, r: int, seed: int) -> None:
    truth = build_truth(_single_block(d, r, seed))
    s = sample(truth, 20000, make_generator(seed))
    x = s.x[s.active[:, 0]]  # only this block is planted, so active rows are pure block samples
    eig = torch.linalg.eigvalsh(x.T @ x / x.shape[0]).flip(0)
    # r equal eigenvalues of a^2 / r = 1 / r (unit magnitude) and zero elsewhere
    assert torch.allclose(eig[:r], torch.full((r,), 1.0 / r), rtol=0.12)
    assert eig[r:].abs().max() < 1e-4
    # the variance lies inside the planted basis
    U = truth.block_basis(0)
    inside = ((x @ U) ** 2).sum() / (x**2).sum()
    assert inside > 0.9999


def test_block_isotropic_inside_mixed_truth() -> None:
    """With atoms and other blocks around, each block's own coordinates stay isotropic."""
    truth = build_truth(preset("default").truth)
    s = sample(truth, 60000, make_generator(3))
    start = 0
    for b, r in enumerate(truth.ranks.tolist()):
        coords = s.block_coords[:, start : start + r]
        start += r
        rows = s.active[:, truth.n_atoms + b]
        c = coords[rows]
        eig = torch.linalg.eigvalsh(c.T @ c / c.shape[0])
        # sample-covariance eigenvalues of an isotropic block spread by about (1 +- sqrt(r/n))^2
        # (Marchenko-Pastur); 1.5x that margin still rejects any real anisotropy (e.g. a 2:1 axis).
        q = 1.5 * (r / c.shape[0]) ** 0.5
        assert eig.min() / eig.max() > ((1 - q) / (1 + q)) ** 2, (b, r, c.shape[0], eig)
        assert (coords[~rows] == 0).all()


def test_atoms_fire_at_configured_frequencies_and_l0_hits_target() -> None:
    cfg = preset("default").truth
    truth = build_truth(cfg)
    n = 200_000
    s = sample(truth, n, make_generator(0), details=False)
    freq = s.active.float().mean(0)
    p = truth.probs
    se = torch.sqrt(p * (1 - p) / n)
    assert ((freq - p).abs() <= 5 * se + 1e-6).all()
    l0 = s.active.float().sum(1).mean().item()
    assert abs(l0 - cfg.target_l0) < 0.05 * cfg.target_l0
    assert abs(truth.expected_l0() - cfg.target_l0) < 1e-3


def test_cofiring_keeps_marginals_and_adds_correlation() -> None:
    base = dataclasses.replace(preset("tiny").truth, cofire_groups=2, cofire_corr=0.8)
    truth = build_truth(base)
    s = sample(truth, 100_000, make_generator(1))
    a = s.active.float()
    assert torch.allclose(a.mean(0), truth.probs, atol=0.01)
    indep = sample(build_truth(dataclasses.replace(base, cofire_groups=0, cofire_corr=0.0)), 100_000, make_generator(1))
    same = truth.group[:, None] == truth.group[None, :]
    off = ~torch.eye(truth.n_components, dtype=torch.bool)

    def mean_corr(act: torch.Tensor) -> float:
        c = torch.corrcoef(act.float().T)
        return c[same & off].nan_to_num().mean().item()

    assert mean_corr(s.active) > mean_corr(indep.active) + 0.05


def test_same_seed_same_samples_different_seed_different() -> None:
    truth = build_truth(preset("tiny").truth)
    a = sample(truth, 512, make_generator(7))
    b = sample(truth, 512, make_generator(7))
    c = sample(truth, 512, make_generator(8))
    assert torch.equal(a.x, b.x) and torch.equal(a.active, b.active)
    assert not torch.equal(a.x, c.x)
    t2 = build_truth(preset("tiny").truth)  # the truth itself is deterministic too
    assert torch.equal(truth.atoms, t2.atoms) and torch.equal(truth.W_head, t2.W_head)


def test_orthogonal_blocks_are_orthogonal_to_everything_else() -> None:
    truth = build_truth(preset("default").truth)
    flags = truth.cfg.subspace_orthogonal
    for b, o in enumerate(flags):
        U = truth.block_basis(b)
        assert torch.allclose(U.T @ U, torch.eye(U.shape[1]), atol=1e-5)
        if not o:
            continue
        assert (truth.atoms @ U).abs().max() < 1e-5
        for b2 in range(truth.n_blocks):
            if b2 != b:
                assert (U.T @ truth.block_basis(b2)).abs().max() < 1e-5


def test_frames_fire_one_direction_and_span_their_block() -> None:
    cfg = TruthConfig(d=16, n_atoms=4, subspace_ranks=[3], subspace_orthogonal=[False], frame_ranks=[2], frame_sizes=[7],
                      target_l0=1.0, noise_std=0.0, bias_norm=0.0)
    truth = build_truth(cfg)
    s = sample(truth, 5000, make_generator(0))
    ch = s.frame_choice[:, 0]
    active = s.active[:, -1]
    assert ((ch >= 0) == active).all()
    assert set(ch[active].tolist()) == set(range(7))
    B = truth.frame_bases[0, :, :2]
    dirs = truth.frames[0, :7]
    assert torch.allclose((dirs @ B).norm(dim=1), torch.ones(7), atol=1e-5)


def test_readout_head_gives_order_one_logits() -> None:
    truth = build_truth(preset("default").truth)
    x = sample(truth, 4096, make_generator(0)).x
    std = (x @ truth.W_head).std().item()
    assert 0.5 < std < 8


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available on this machine")
def test_cuda_sampling_matches_statistics() -> None:
    truth = build_truth(preset("tiny").truth, device="cuda")
    s = sample(truth, 50000, make_generator(0, "cuda"))
    assert s.x.is_cuda
    assert abs(s.active.float().sum(1).mean().item() - truth.cfg.target_l0) < 0.1
