"""How many seeds are enough: the subset estimator on planted cases with exact answers (hypergeometric when every
subset is enumerated, binomial when each latent reappears in each seed with a known probability)."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import binom, hypergeom

from synthsae.metrics.matching import unit_rows
from synthsae.metrics.seed_budget import budget_sentence, seed_budget, smallest_n, subset_stability, subsets
from synthsae.results import SeedBudgetRow
from synthsae.metrics.stability import pair_scores, stability


def hit_table(k: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Scores [S, S, m] where latent i of seed a is matched (score 1) in exactly k[a, i] of the other seeds."""
    S, m = k.shape
    g = torch.Generator().manual_seed(seed)
    scores = torch.zeros(S, S, m)
    for a in range(S):
        others = [b for b in range(S) if b != a]
        for i in range(m):
            pick = torch.randperm(S - 1, generator=g)[: int(k[a, i])]
            scores[a, [others[j] for j in pick.tolist()], i] = 1.0
        scores[a, a] = float("nan")
    return scores


def test_subsets_enumerate_or_sample_distinct():
    every, complete = subsets(6, 3)
    assert complete and len(every) == math.comb(6, 3) == len(set(every))
    some, complete = subsets(16, 8, max_subsets=50)
    assert not complete and len(some) == 50 == len(set(some)) and all(list(t) == sorted(t) for t in some)
    assert subsets(16, 8, max_subsets=50) == (some, False)  # seeded


def test_subset_stability_of_all_seeds_is_stability():
    scores = hit_table(torch.randint(0, 6, (6, 30), generator=torch.Generator().manual_seed(1)))
    assert torch.equal(subset_stability(scores >= 0.7, tuple(range(6))), stability(scores, 0.7))


def test_per_latent_deviation_is_exactly_hypergeometric():
    """Over every subset of n seeds, a latent matched in k of the S-1 others is matched in a hypergeometric
    number of the n-1 others in its subset, so the mean |subset stability - all-S stability| is known exactly."""
    S, m = 7, 40
    k = torch.randint(0, S, (S, m), generator=torch.Generator().manual_seed(2))
    sb = seed_budget(hit_table(k), 0.7, torch.ones(S, m, dtype=torch.bool), 0.8)
    assert [r.n for r in sb.rows] == list(range(2, S)) and all(r.all_subsets for r in sb.rows)
    for r in sb.rows:
        n = r.n
        want = []
        for kk in k.reshape(-1).tolist():
            x = np.arange(0, n)
            pmf = hypergeom(S - 1, kk, n - 1).pmf(x)
            want.append(float((pmf * np.abs(x / (n - 1) - kk / (S - 1))).sum()))
        assert abs(r.latent_mean_abs_dev - float(np.mean(want))) < 1e-6, n
        # mean stability is unbiased: the mean over every subset equals the all-S mean
        assert abs(r.mean_stability_mean - sb.mean_stability_all) < 1e-6


def planted_seeds(S: int, p: np.ndarray, d: int, seed: int = 0) -> torch.Tensor:
    """Feature i (an axis) appears as latent i of each seed with probability p[i], else latent i is a random
    direction of that seed alone: latent i is matched in another seed exactly when both hold feature i."""
    g = torch.Generator().manual_seed(seed)
    m = len(p)
    eye = torch.eye(d)[:m]
    present = torch.rand(S, m, generator=g) < torch.tensor(p, dtype=torch.float32)
    rand = unit_rows(torch.randn(S, m, d, generator=g))
    return torch.where(present[..., None], eye[None], rand), present


def test_binomial_case_gives_the_binomial_stable_share():
    """Each latent reappears in each seed with known p: a present latent's stability among n seeds is
    Binomial(n-1, p) / (n-1), so the mean stable share at n is mean_i p_i P(Bin(n-1, p_i) >= ceil(0.8 (n-1)))."""
    S, d = 16, 256
    p = np.repeat([0.3, 0.6, 0.9, 1.0], 50)
    dec, _ = planted_seeds(S, p, d, seed=5)
    scores, _ = pair_scores(dec, "maxcos")
    cut = 0.8
    sb = seed_budget(scores, 0.7, torch.ones(S, len(p), dtype=torch.bool), cut, max_subsets=150)
    for r in sb.rows:
        n = r.n
        need = math.ceil(cut * (n - 1) - 1e-9)
        want_share = float(np.mean(p * binom(n - 1, p).sf(need - 1)))
        want_mean = float(np.mean(p * p))
        assert abs(r.stable_share_mean - want_share) < 0.03, (n, r.stable_share_mean, want_share)
        assert abs(r.mean_stability_mean - want_mean) < 0.03, (n, r.mean_stability_mean, want_mean)
    assert sb.rows[-1].stable_share_within < sb.rows[0].stable_share_within
    assert sb.rows[-1].latent_within < sb.rows[0].latent_within


def test_identical_seeds_need_two_and_the_sentence_says_so():
    dec = unit_rows(torch.randn(1, 30, 32, generator=torch.Generator().manual_seed(0))).expand(5, -1, -1).clone()
    scores, _ = pair_scores(dec, "maxcos")
    sb = seed_budget(scores, 0.7, torch.ones(5, 30, dtype=torch.bool), 0.8)
    assert sb.stable_share_all == 1.0 and sb.smallest_n_within_target == 2
    assert all(r.stable_share_within == 0.0 and r.latent_within == 0.0 for r in sb.rows)
    assert budget_sentence(sb, 2).startswith("2 seeds give the stable share to within +-0.000 (95%)")


def test_fewer_than_three_seeds_give_nothing():
    assert seed_budget(torch.zeros(2, 2, 5), 0.7, torch.ones(2, 5, dtype=torch.bool), 0.8) is None


def test_dead_latents_are_left_out():
    S, m = 4, 10
    k = torch.full((S, m), S - 1)
    k[:, 5:] = 0
    live = torch.ones(S, m, dtype=torch.bool)
    live[:, 5:] = False  # the unmatched half is dead: every live latent is fully stable
    sb = seed_budget(hit_table(k), 0.7, live, 0.8)
    assert sb.stable_share_all == 1.0 and all(r.stable_share_mean == 1.0 for r in sb.rows)


def test_smallest_n_needs_every_larger_n_within_target():
    rows = [SeedBudgetRow(n=n, n_subsets=1, all_subsets=True, stable_share_within=w)
            for n, w in zip(range(2, 8), [0.12, 0.04, 0.04, 0.06, 0.046, 0.02])]
    assert smallest_n(rows, 0.05) == 6  # n = 3 is within by luck of the cut-off's rounding, n = 5 is not
    assert smallest_n(rows, 0.01) is None and smallest_n(rows, 0.2) == 2


def test_verdict_holds_for_identical_seeds_and_not_when_seeds_disagree_at_random():
    from types import SimpleNamespace

    from synthsae.verdicts import seed_budget_verdict

    same = unit_rows(torch.randn(1, 30, 32, generator=torch.Generator().manual_seed(0))).expand(6, -1, -1).clone()
    sb = seed_budget(pair_scores(same, "maxcos")[0], 0.7, torch.ones(6, 30, dtype=torch.bool), 0.8)
    assert seed_budget_verdict(SimpleNamespace(seed_budget=sb)).verdict == "held"
    # each latent reappears with p = 0.7: 5 of 6 seeds need all 4 others matched, 6 seeds 4 of 5: the share moves
    dec, _ = planted_seeds(6, np.full(200, 0.7), 256, seed=1)
    sb = seed_budget(pair_scores(dec, "maxcos")[0], 0.7, torch.ones(6, 200, dtype=torch.bool), 0.8)
    v = seed_budget_verdict(SimpleNamespace(seed_budget=sb))
    assert sb.smallest_n_within_target is None and v.verdict == "did not hold"
    assert seed_budget_verdict(None).verdict == "not measured"
