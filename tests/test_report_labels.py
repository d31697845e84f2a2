"""Report rows and numbers say what they are: pool rows named by their built width, no synthetic eval seed on a
given (real) sample, the atlas's two EV shares told apart."""

from __future__ import annotations

import dataclasses

import torch

from synthsae.results import PoolInfo, PoolVariant


def test_pool_rows_are_named_by_the_width_they_were_built_at():
    from synthsae.report import pool_row_name

    short = PoolVariant(name="coverage_w1152", rule="coverage", width=1152, role="secondary",
                        pools={"all": PoolInfo(width=672), "A": PoolInfo(width=672), "B": PoolInfo(width=672)})
    name = pool_row_name(short)
    assert "1152" in name and "width 672" in name and "w1152" not in name and "too few clusters" in name
    full = PoolVariant(name="coverage_w576", rule="coverage", width=576, role="primary",
                       pools={"A": PoolInfo(width=576), "B": PoolInfo(width=576)})
    assert pool_row_name(full) == "coverage at width 576"
    union = PoolVariant(name="union", rule="union", width=None, role="secondary", pools={"A": PoolInfo(width=900)})
    assert pool_row_name(union) == "union (every cluster)"


def test_pooling_on_a_given_sample_names_no_synthetic_eval_seed():
    from conftest import make_sae

    from synthsae.config import preset
    from synthsae.pooling import PoolConfig, pooling_study

    cfg = preset("tiny")
    S, d, m = 4, 16, 24
    cfg = dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, d_sae=m, k=4))
    sae = make_sae(S, d, m, "topk", k=4)
    x = torch.randn(512, d, generator=torch.Generator().manual_seed(0))
    res = pooling_study((cfg, sae, None), PoolConfig(refit_steps=0, rules=("coverage",), widths=[m], progress=False), x=x)
    assert "eval_seed" not in res.live_rule and "given eval sample (512 tokens)" in res.live_rule


def test_atlas_section_tells_its_two_ev_shares_apart():
    from test_atlas import rotated_copies

    from synthsae.metrics.atlas import atlas_summary, build_atlas
    from synthsae.report import atlas_sections

    _, dec = rotated_copies(S=4)
    (sec,) = atlas_sections(atlas_summary(build_atlas(dec)))
    text = " ".join(sec.paragraphs)
    assert "EV share of the atlas of all 4 seeds" in text and "built on half of the seeds" in text
