"""Hypothesis properties across modules: saved-file round trips, rotation inside a planted subspace, shapes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SHIPPED
from synthsae.config import SAEConfig, TruthConfig
from synthsae.io import load_sae_folders, load_sparsity, save_seed_folder
from synthsae.metrics.recovery import subspace_recovery
from synthsae.metrics.stability import pair_scores, stability
from synthsae.metrics.subspaces import random_rotation_in, span_reproducibility
from synthsae.sae import build_sae
from synthsae.truth import build_truth, make_generator, sample


@settings(max_examples=15, deadline=None)
@given(variant=st.sampled_from(SHIPPED), S=st.integers(1, 3), d=st.integers(4, 16), m=st.integers(8, 40),
       seed=st.integers(0, 10_000))
def test_saved_sae_round_trips_exactly(variant: str, S: int, d: int, m: int, seed: int) -> None:
    sae = build_sae(SAEConfig(variant=variant, d_sae=m, k=min(3, m)), d, list(range(seed, seed + S)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name != "W_dec":
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    spars = torch.log10(torch.rand(S, m, generator=g) + 1e-10)
    x = torch.randn(S, 17, d, generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        folders = [save_seed_folder(Path(tmp) / f"seed_{s}", sae, s, {"data_seed": 1}, spars[s]) for s in range(S)]
        back = load_sae_folders(folders)
        assert torch.equal(load_sparsity(folders), spars)
    assert type(back) is type(sae) and back.init_seeds == sae.init_seeds
    with torch.no_grad():
        assert torch.equal(back.encode(x), sae.encode(x))
        acts = sae.encode(x)
        assert torch.equal(back.decode(acts), sae.decode(acts))


@settings(max_examples=20, deadline=None)
@given(d=st.integers(8, 32), r=st.integers(2, 6), n=st.integers(2, 12), seed=st.integers(0, 10_000))
def test_subspace_recovery_invariant_to_rotation_inside_the_block(d: int, r: int, n: int, seed: int) -> None:
    """Basis ambiguity: any rotation of the latents inside a planted block is an equally good tiling."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))
    U = U.float()
    lat = torch.randn(n, r, generator=g) @ U.T + 0.05 * torch.randn(n, d, generator=g)
    R = random_rotation_in(U, g).float()  # float64 by design (exact orthogonality)
    rotated = lat @ R.T
    assert abs(subspace_recovery(lat, U) - subspace_recovery(rotated, U)) < 1e-4
    # a shared rotation of both seeds changes no cosine, so no stability
    two = torch.stack([lat, lat[torch.randperm(n, generator=g)] + 0.01 * torch.randn(n, d, generator=g)])
    sc, _ = pair_scores(two)
    sc_rot, _ = pair_scores(two @ R.T)
    assert torch.allclose(stability(sc, 0.7), stability(sc_rot, 0.7))


@settings(max_examples=10, deadline=None)
@given(d=st.integers(12, 32), r=st.integers(3, 6), seed=st.integers(0, 10_000))
def test_rotated_tiling_is_span_reproducible(d: int, r: int, seed: int) -> None:
    """Two seeds tiling one block in different bases: the span of a few neighbours holds each latent."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(d, r, generator=g))
    a = torch.randn(r, r, generator=g) @ U.T
    b = a @ random_rotation_in(U, g).float().T
    span = span_reproducibility(torch.stack([a, b]), k_max=r)
    assert (span[..., r - 1] > 0.999).all()


@settings(max_examples=15, deadline=None)
@given(d=st.integers(4, 24), n_atoms=st.integers(0, 20), ranks=st.lists(st.integers(1, 4), max_size=3),
       n=st.integers(1, 200), seed=st.integers(0, 10_000))
def test_sample_shapes(d: int, n_atoms: int, ranks: list[int], n: int, seed: int) -> None:
    ranks = [min(r, d) for r in ranks]
    c = n_atoms + len(ranks)
    if c == 0:
        n_atoms, c = 1, 1 + len(ranks)
    cfg = TruthConfig(d=d, n_atoms=n_atoms, subspace_ranks=ranks, subspace_orthogonal=[False], target_l0=0.3 * c, seed=seed)
    s = sample(build_truth(cfg), n, make_generator(seed))
    assert s.x.shape == (n, d) and s.active.shape == (n, c) and s.magnitude.shape == (n, c)
    assert s.block_coords.shape == (n, sum(ranks)) and s.frame_choice.shape == (n, 0)
    assert ((s.magnitude > 0) == s.active).all()
