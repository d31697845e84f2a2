"""synthbench16k: SynthSAEBench-16k's statistics (Zipf between p_min and p_max, hierarchy with mutually exclusive
children scaled by their parent, low-rank correlation), checked on samples, not by training."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from synthsae.config import ConfigError, TruthConfig, preset, validate_truth
from synthsae.truth import build_truth, hierarchy_levels, make_generator, sample


def small(**kw) -> TruthConfig:
    """synthbench16k's recipe at a size a test can sample 20k times in a second."""
    base = dict(d=64, n_atoms=1500, subspace_ranks=[], subspace_orthogonal=[False], zipf_exponent=0.5, max_prob=0.4,
                zipf_min_prob=5e-3, magnitude_mean=5.0, magnitude_mean_rare=4.0, magnitude_log_std=0.11,
                hierarchy_roots=8, hierarchy_branching=4, hierarchy_depth=2, corr_rank=0, n_classes=8)
    base.update(kw)
    return TruthConfig(**base)


def tree(truth):
    nodes = truth.hierarchy
    return [(nodes[s : s + n]) for s, n in hierarchy_levels(truth.cfg)]


def test_firing_rates_l0_and_exclusivity_without_correlation():
    truth = build_truth(small())
    s = sample(truth, 20000, make_generator(5))
    a = s.active
    rate = a.float().mean(0)
    se = (truth.probs * (1 - truth.probs) / a.shape[0]).sqrt()
    assert float(((rate - truth.probs).abs() / se.clamp_min(1e-4)).max()) < 5.0  # marginals as the truth states them
    assert float(a.sum(1).float().mean()) == pytest.approx(truth.expected_l0(), rel=0.02)
    B = truth.cfg.hierarchy_branching
    for par, kids in zip(tree(truth)[:-1], tree(truth)[1:]):
        assert not bool((a[:, kids] & ~a[:, truth.parent[kids]]).any())  # a child never fires without its parent
        assert int(a[:, kids].view(a.shape[0], -1, B).sum(2).max()) == 1  # at most one sibling
        assert bool((truth.parent[kids] == par.repeat_interleave(B)).all())
        # exclusive children: their rates add up to at most their parent's
        assert bool((truth.probs[par] >= truth.probs[kids].view(-1, B).sum(1) - 1e-6).all())
    # base Zipf curve: the most frequent atom fires with p_max, and no atom outside the trees below p_min
    outside = torch.ones(truth.n_components, dtype=torch.bool)
    outside[truth.hierarchy] = False
    assert float(truth.probs.max()) == pytest.approx(0.4)
    assert float(truth.probs[outside].min()) == pytest.approx(5e-3, rel=1e-4)


def test_children_scaled_by_their_parent():
    truth = build_truth(small())
    s = sample(truth, 20000, make_generator(6))
    kid = tree(truth)[1][0]
    par = truth.parent[kid]
    both = s.active[:, kid]
    mk, mp = s.magnitude[both, kid], s.magnitude[both, par]
    assert torch.corrcoef(torch.stack([mk, mp]))[0, 1] > 0.5  # the child's size follows its parent's
    assert float(mk.mean()) == pytest.approx(float(truth.mean_magnitude()[kid]), rel=0.05)
    off = build_truth(small(hierarchy_scale_children=False))
    s2 = sample(off, 20000, make_generator(6))
    b2 = s2.active[:, kid]
    assert abs(float(torch.corrcoef(torch.stack([s2.magnitude[b2, kid], s2.magnitude[b2, par]]))[0, 1])) < 0.2


def test_exclusivity_off_lets_siblings_fire_together():
    truth = build_truth(small(hierarchy_exclusive=False))
    a = sample(truth, 20000, make_generator(7)).active
    kids = tree(truth)[1]
    assert int(a[:, kids].view(a.shape[0], -1, 4).sum(2).max()) >= 2  # the check above can fail


def test_low_rank_correlation_keeps_marginals_and_correlates():
    flat = dict(hierarchy_roots=0)
    truth = build_truth(small(corr_rank=5, corr_scale=0.3, **flat))
    a = sample(truth, 40000, make_generator(8)).active.float()
    rate = a.mean(0)
    se = (truth.probs * (1 - truth.probs) / a.shape[0]).sqrt()
    assert float(((rate - truth.probs).abs() / se.clamp_min(1e-4)).max()) < 5.0
    top = torch.argsort(truth.probs, descending=True)[:40]
    emp = torch.corrcoef(a[:, top].T)
    F = truth.corr_factor[top]
    planted = F @ F.T
    off = ~torch.eye(len(top), dtype=torch.bool)
    assert torch.corrcoef(torch.stack([emp[off], planted[off]]))[0, 1] > 0.5  # firing follows the planted factor
    indep = sample(build_truth(small(**flat)), 40000, make_generator(8)).active.float()
    assert float(torch.corrcoef(indep[:, top].T)[off].abs().mean()) < float(emp[off].abs().mean())


def test_synthbench16k_preset_matches_the_published_statistics():
    cfg = preset("synthbench16k").truth
    assert (cfg.n_atoms, cfg.d, cfg.hierarchy_roots, cfg.hierarchy_branching, cfg.hierarchy_depth) == (16384, 768, 128, 4, 3)
    assert (cfg.zipf_exponent, cfg.max_prob, cfg.zipf_min_prob, cfg.corr_rank, cfg.corr_scale) == (0.5, 0.4, 5e-4, 25, 0.1)
    assert cfg.n_hierarchy == 128 * 85 and cfg.n_blocks == 0 and preset("synthbench16k_subspaces").truth.n_blocks == 20
    truth = build_truth(cfg)
    assert 30 <= truth.expected_l0() <= 38  # SynthSAEBench-16k: "~34 active features per sample"
    a = sample(truth, 1024, make_generator(9), details=False)
    assert a.x.shape == (1024, 768)


def test_bad_hierarchy_config_is_one_line():
    with pytest.raises(ConfigError, match="truth.hierarchy_roots"):
        validate_truth(small(hierarchy_roots=100))
    with pytest.raises(ConfigError, match="truth.zipf_min_prob"):
        validate_truth(small(zipf_min_prob=0.5))
    with pytest.raises(ConfigError, match="truth.corr_rank"):
        validate_truth(dataclasses.replace(small(), corr_rank=2, cofire_groups=2, cofire_corr=0.3))


def dense_reference(truth, n: int, gen: torch.Generator) -> torch.Tensor:
    """The earlier sampler, kept as the reference: draw every component (copula included), then prune the trees
    densely level by level (a child needs its parent; exclusive siblings: one drawn sibling kept uniformly)."""
    import math

    c = truth.n_components
    thr = truth.draw_probs
    F = truth.corr_factor
    if F is not None:
        shared = torch.randn(n, F.shape[1], generator=gen) @ F.T
        z = torch.randn(n, c, generator=gen).mul_((1 - F.pow(2).sum(dim=1)).clamp_min(0).sqrt()).add_(shared)
        active = z < torch.erfinv((2 * thr.double() - 1).clamp(-1, 1)).mul(math.sqrt(2)).to(z.dtype)
    else:
        active = torch.rand(n, c, generator=gen) < thr
    cfg, nodes, B = truth.cfg, truth.hierarchy, truth.cfg.hierarchy_branching
    h = active[:, nodes]
    for (ps, pn), (cs, cn) in zip(hierarchy_levels(cfg)[:-1], hierarchy_levels(cfg)[1:]):
        on = h[:, cs : cs + cn].view(n, pn, B) & h[:, ps : ps + pn, None]
        if cfg.hierarchy_exclusive:
            score = torch.rand(n, pn, B, generator=gen).masked_fill_(~on, -1.0)
            on = on & (torch.arange(B) == score.argmax(dim=2, keepdim=True))
        h[:, cs : cs + cn] = on.reshape(n, cn)
    active[:, nodes] = h
    return active


def distribution_gap(a: torch.Tensor, b: torch.Tensor, top: torch.Tensor) -> tuple[float, float]:
    """Two firing tables: the largest |z| of a two-sample test on any component's rate, and the largest |z| on
    any co-firing rate among the `top` components (pairs)."""
    def zmax(pa, pb, n):
        pool = (pa + pb) / 2
        se = (2 * pool * (1 - pool) / n).sqrt().clamp_min(1e-4)
        return float(((pa - pb).abs() / se).max())

    n = a.shape[0]
    af, bf = a.float(), b.float()
    pair = lambda t: (t[:, top].T @ t[:, top] / n)[~torch.eye(len(top), dtype=torch.bool)]  # noqa: E731
    return zmax(af.mean(0), bf.mean(0), n), zmax(pair(af), pair(bf), n)


@pytest.mark.parametrize("corr", [0, 5])
def test_top_down_sampler_has_the_dense_samplers_distribution(corr):
    """The tree children are drawn only under firing parents: same rates and co-firing as drawing everything and
    pruning (the earlier sampler), with and without the low-rank copula; a different distribution (siblings not
    exclusive) is told apart by the same check."""
    n = 40000
    truth = build_truth(small(corr_rank=corr, corr_scale=0.3))
    new = sample(truth, n, make_generator(11)).active
    ref = dense_reference(truth, n, make_generator(12))
    top = torch.cat([tree(truth)[0], tree(truth)[1][:24]])  # roots and children: the hierarchy's co-firing
    rate_z, pair_z = distribution_gap(new, ref, top)
    assert rate_z < 5.0 and pair_z < 5.0, (rate_z, pair_z)
    loose = sample(build_truth(small(corr_rank=corr, corr_scale=0.3, hierarchy_exclusive=False)), n, make_generator(13)).active
    rate_z, pair_z = distribution_gap(loose, ref, top)
    assert rate_z > 5.0 and pair_z > 5.0, (rate_z, pair_z)


def test_sample_entries_are_the_firing_table_in_row_major_order():
    """sample() works on the sampler's (row, component) list: it must be exactly the dense table's nonzeros."""
    truth = build_truth(small(corr_rank=5, corr_scale=0.3))
    from synthsae.truth import _fire

    active, rows, cols = _fire(truth, 3000, make_generator(14))
    r, c = torch.nonzero(active, as_tuple=True)
    assert torch.equal(rows, r) and torch.equal(cols, c)
