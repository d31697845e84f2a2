"""Many seeds: the batched maxcos pair path gives the pair loop's table, and a progress line shows the pairs."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from synthsae.metrics.stability import PROGRESS_PAIRS, pair_scores


@settings(max_examples=15, deadline=None)
@given(S=st.integers(2, 7), m=st.integers(1, 9), d=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_batched_maxcos_equals_the_pair_loop(S, m, d, seed):
    dec = torch.randn(S, m, d, generator=torch.Generator().manual_seed(seed))
    a, pa = pair_scores(dec, "maxcos", batched=False, progress=False)
    b, pb = pair_scores(dec, "maxcos", progress=False)
    assert torch.allclose(a.nan_to_num(9.0), b.nan_to_num(9.0), atol=1e-6)
    close = (a - b).abs().nan_to_num(0.0) < 1e-6
    same = (pa == pb) | ~close  # a partner may differ only on an exact tie
    assert same.all()


def test_many_seeds_print_a_progress_line(capsys, monkeypatch):
    monkeypatch.setenv("SYNTHSAE_PROGRESS_SECONDS", "0")
    S = 2
    while S * (S - 1) // 2 < PROGRESS_PAIRS:
        S += 1
    dec = torch.randn(S, 4, 3, generator=torch.Generator().manual_seed(0))
    pair_scores(dec, "maxcos")
    err = capsys.readouterr().err
    assert "seed pairs (maxcos)" in err and f"/{S * (S - 1) // 2}" in err
    pair_scores(dec[:3], "maxcos")  # few pairs: quiet
    assert capsys.readouterr().err == ""


@settings(max_examples=10, deadline=None)
@given(S=st.integers(2, 6), m=st.integers(1, 9), d=st.integers(4, 8), seed=st.integers(0, 10_000))
def test_batched_span_reproducibility_equals_the_pair_loop(S, m, d, seed):
    from synthsae.metrics.subspaces import span_reproducibility

    dec = torch.randn(S, m, d, generator=torch.Generator().manual_seed(seed))
    a = span_reproducibility(dec, batched=False)
    b = span_reproducibility(dec)
    assert torch.allclose(a, b, atol=1e-5)
