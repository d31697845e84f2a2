"""Does stability mark true features: the AUROC / detector numbers on planted dictionaries where the answer is known,
and the verdict, which must say "did not hold" on random dictionaries and on seeds that agree on wrong directions."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from synthsae.config import AnalysisConfig
from synthsae.metrics.analyze import analyze_with_latents
from synthsae.metrics.matching import unit_rows
from synthsae.metrics.truth_filter import auroc, detector, true_labels
from synthsae.verdicts import truth_filter_verdict

S, D, N_ATOMS, N_OTHER = 4, 64, 24, 24


def _truth(n_blocks: int = 0) -> SimpleNamespace:
    """A planted truth: N_ATOMS orthonormal atoms (coordinate axes) and optionally one rank-2 block on two more axes."""
    eye = torch.eye(D)
    subs = torch.zeros(n_blocks, D, 2)
    for b in range(n_blocks):
        subs[b, :, 0], subs[b, :, 1] = eye[N_ATOMS + 2 * b], eye[N_ATOMS + 2 * b + 1]
    return SimpleNamespace(atoms=eye[:N_ATOMS], subspaces=subs, n_blocks=n_blocks)


def _rand(n: int, seed: int) -> torch.Tensor:
    return unit_rows(torch.randn(n, D, generator=torch.Generator().manual_seed(seed)))


def _filter(dec, truth, cfg):
    from synthsae.metrics.analyze import _cross_seed, rotated_seeds
    from synthsae.metrics.truth_filter import truth_filter

    real = _cross_seed(dec, None, cfg, "cpu")
    null = _cross_seed(rotated_seeds(dec, None)[0], None, cfg, "cpu")
    live = torch.ones(dec.shape[:2], dtype=torch.bool)
    return truth_filter(dec, truth, live, real["stability"], real["soft"], null["stability"], null["soft"], cfg.stable_cutoff)[0]


def only_true_stable() -> torch.Tensor:
    """Every seed holds the planted atoms (stable, true) plus its own random latents (unstable, not true)."""
    atoms = _truth().atoms
    return torch.stack([torch.cat([atoms, _rand(N_OTHER, 100 + s)]) for s in range(S)])


def test_auroc_is_one_when_only_true_latents_are_stable_and_half_under_the_null():
    tf = _filter(only_true_stable(), _truth(), AnalysisConfig())
    assert tf.n_true == S * N_ATOMS and tf.n_live == S * (N_ATOMS + N_OTHER)
    assert tf.auroc.value == 1.0 and tf.auroc_soft.value == 1.0
    assert abs(tf.auroc.baseline - 0.5) < 0.05  # rotated seeds: stability no longer tracks the label
    assert tf.precision.value == 1.0 and tf.recall.value == 1.0 and tf.base_rate == 0.5
    assert truth_filter_verdict(SimpleNamespace(truth_filter=tf)).verdict == "held"


def test_block_latents_count_as_true():
    truth = _truth(n_blocks=1)
    c, s_ = np.cos(0.4), np.sin(0.4)
    inside = torch.zeros(1, D)
    inside[0, N_ATOMS], inside[0, N_ATOMS + 1] = c, s_  # in the block's span, on no atom
    half_in = unit_rows(torch.eye(D)[N_ATOMS:N_ATOMS + 1] + torch.eye(D)[D - 1:D])  # projection^2 0.5: not true
    on_atom, in_block = true_labels(torch.cat([inside, half_in, torch.eye(D)[:1]])[None], truth)
    assert in_block[0].tolist() == [True, False, False] and on_atom[0].tolist() == [False, False, True]


def test_random_dictionaries_do_not_hold():
    dec = torch.stack([_rand(N_ATOMS + N_OTHER, s) for s in range(S)])
    tf = _filter(dec, _truth(), AnalysisConfig())
    assert tf.n_true == 0 and tf.auroc.value is None
    assert truth_filter_verdict(SimpleNamespace(truth_filter=tf)).verdict == "did not hold"


def test_copies_of_a_random_dictionary_do_not_hold():
    """Seeds that agree on wrong directions: every latent is stable and none is true."""
    dec = _rand(N_ATOMS + N_OTHER, 7)[None].expand(S, -1, -1).clone()
    tf = _filter(dec, _truth(), AnalysisConfig())
    assert tf.frac_stable == 1.0 and tf.n_true == 0
    assert truth_filter_verdict(SimpleNamespace(truth_filter=tf)).verdict == "did not hold"


def test_wrong_directions_stable_and_true_ones_not_do_not_hold():
    """Copies of a random dictionary (stable, wrong) beside atoms each seed finds only in part (true, less stable)."""
    wrong = _rand(N_OTHER, 7)
    atoms = _truth().atoms
    g = torch.Generator().manual_seed(3)
    dec = []
    for s in range(S):
        own = torch.where(torch.rand(N_ATOMS, 1, generator=g) < 0.5, atoms, _rand(N_ATOMS, 200 + s))
        dec.append(torch.cat([own, wrong]))
    tf = _filter(torch.stack(dec), _truth(), AnalysisConfig())
    assert tf.auroc.value < 0.5 and tf.n_true > 0
    v = truth_filter_verdict(SimpleNamespace(truth_filter=tf))
    assert v.verdict == "did not hold" and not v.checks[1].passed and not v.checks[2].passed


def test_analysis_fills_truth_filter_and_true_label():
    from synthsae.config import preset
    from synthsae.truth import build_truth

    truth = build_truth(preset("tiny").truth)
    dec = torch.stack([torch.cat([truth.atoms.float(), _rand_d(24, truth.d, 50 + s)]) for s in range(3)])
    res, per = analyze_with_latents(dec, truth=truth, cfg=AnalysisConfig())
    assert res.truth_filter is not None and res.truth_filter.auroc.value > 0.9
    assert per["true_feature"].shape == dec.shape[:2] and per["true_feature"][:, : truth.n_atoms].all()


def _rand_d(n, d, seed):
    return unit_rows(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=2, max_size=30))
def test_auroc_is_the_share_of_correctly_ordered_pairs(pairs):
    score = torch.tensor([float(p[0]) for p in pairs])
    label = torch.tensor([p[1] for p in pairs])
    pos, neg = score[label], score[~label]
    got = auroc(score, label)
    if not len(pos) or not len(neg):
        assert got is None
        return
    want = float(((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean())
    assert abs(got - want) < 1e-12


def test_detector_precision_and_recall():
    stab = torch.tensor([1.0, 0.9, 0.5, 0.0])
    label = torch.tensor([True, False, True, False])
    assert detector(stab, label, 0.8) == (0.5, 0.5)
    assert detector(torch.zeros(4), label, 0.8) == (None, 0.0)
