"""EV shares of the atlas are defined only for a seed that explains some variance: random dictionaries whose
reconstruction is worse than their decoder bias get no shares (NaN -> "-"), never a share of -7.9e37."""

from __future__ import annotations

import math

import torch

from conftest import make_sae
from synthsae.metrics.atlas import AtlasConfig, attach_stats, build_atlas, ev_shares


def test_ev_shares_of_a_seed_that_explains_nothing_are_undefined():
    c = torch.tensor([[0.5, 0.25, 0.25], [1.0, -3.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    s = ev_shares(c)
    assert torch.allclose(s[0], torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    assert torch.isnan(s[1]).all() and torch.isnan(s[2]).all()  # total -1 and 0: no shares


def test_random_dictionaries_give_no_absurd_remainder_share():
    S, d, m = 3, 8, 16
    sae = make_sae(S, d, m, "relu", seed=3)
    with torch.no_grad():
        sae.W_dec.mul_(20.0)  # far too long decoder rows: the reconstruction overshoots, EV below zero
        sae.b_enc.fill_(0.5)
    x = torch.randn(512, d, generator=torch.Generator().manual_seed(0))
    acts = sae.encode(x)
    r = x.unsqueeze(0) - sae.b_dec.unsqueeze(1)
    y = acts @ sae.W_dec
    ev_total = (r.pow(2).sum((1, 2)) - (r - y).pow(2).sum((1, 2)))
    assert (ev_total < 0).all()  # the planted case: every seed explains less than nothing
    atlas = build_atlas(sae.W_dec.detach(), None, AtlasConfig(min_seeds=2))
    attach_stats(atlas, sae, x)
    assert math.isnan(atlas.remainder_ev_share) and math.isnan(atlas.dead_ev_share)
    for f in atlas.features:
        assert math.isnan(f.ev_share)


def test_trained_like_dictionary_shares_sum_to_one():
    S, d, m = 2, 8, 16
    sae = make_sae(S, d, m, "relu", seed=1)
    with torch.no_grad():  # decoder = encoder transposed, unit rows: a sensible positive-EV reconstruction
        dec = torch.nn.functional.normalize(torch.randn(S, m, d, generator=torch.Generator().manual_seed(2)), dim=2)
        sae.W_dec.copy_(0.3 * dec)
        sae.W_enc.copy_(dec.transpose(1, 2))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    x = torch.randn(512, d, generator=torch.Generator().manual_seed(0))
    atlas = build_atlas(sae.W_dec.detach(), None, AtlasConfig(min_seeds=2))
    attach_stats(atlas, sae, x)
    total = sum(f.ev_share for f in atlas.features) + atlas.remainder_ev_share + atlas.dead_ev_share
    assert abs(total - 1.0) < 1e-6 and abs(atlas.remainder_ev_share) <= 1.0 + 1e-6
