"""Configs: presets, TOML round-trips, and one-line errors naming the field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthsae import config as C
from synthsae.config import ConfigError, TruthConfig, preset, validate_truth


def _bad(**kw) -> str:
    with pytest.raises(ConfigError) as exc:
        validate_truth(dataclasses.replace(preset("tiny").truth, **kw))
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_rank_below_one() -> None:
    msg = _bad(subspace_ranks=[4, 0, 4])
    assert "truth.subspace_ranks[1] = 0" in msg and "1..32" in msg


def test_rank_above_d() -> None:
    msg = _bad(subspace_ranks=[4, 40, 4])
    assert "truth.subspace_ranks[1] = 40" in msg


def test_target_l0_above_components() -> None:
    msg = _bad(target_l0=1000.0)
    assert "truth.target_l0" in msg and "number of components" in msg


def test_orthogonal_blocks_exceeding_d() -> None:
    msg = _bad(subspace_ranks=[16, 16, 8], subspace_orthogonal=[True, True, True])
    assert "truth.subspace_orthogonal" in msg and "total rank 40" in msg


def test_unknown_preset_lists_known() -> None:
    with pytest.raises(ConfigError) as exc:
        preset("huge")
    msg = str(exc.value)
    assert "'huge'" in msg
    for name in C.PRESETS:
        assert name in msg


def test_every_preset_truth_is_valid() -> None:
    for name in C.PRESETS:
        validate_truth(preset(name).truth)


def test_default_preset_shape() -> None:
    t = preset("default").truth
    assert t.d == 64 and 100 <= t.n_atoms <= 200 and 10 <= t.n_blocks <= 14
    assert min(t.subspace_ranks) == 2 and max(t.subspace_ranks) == 8
    assert any(t.subspace_orthogonal) and not all(t.subspace_orthogonal)


def test_synthbench_statistics() -> None:
    t = preset("synthbench16k").truth
    assert t.n_atoms == 16384 and t.d == 768 and t.hierarchy_roots == 128 and t.n_blocks == 0
    assert preset("synthbench16k_subspaces").truth.n_blocks > 0


def test_toml_round_trip(tmp_path: Path) -> None:
    cfg = preset("tiny")
    cfg.truth.noise_std = 0.02
    cfg.train.vary_data = True
    cfg.analysis.tau_sweep = [0.5, 0.75]
    path = tmp_path / "c.toml"
    C.save(cfg, path)
    # a config file only needs the fields it changes; the rest come from its preset
    assert C.from_dict({"preset": "tiny"}) == preset("tiny")
    assert C.load(path) == cfg


@settings(max_examples=25, deadline=None)
@given(
    noise=st.floats(0, 1, allow_nan=False),
    l0=st.floats(0.5, 10),
    ranks=st.lists(st.integers(1, 8), min_size=1, max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_toml_round_trip_property(tmp_path_factory, noise: float, l0: float, ranks: list[int], seed: int) -> None:
    cfg = preset("tiny")
    cfg.truth = dataclasses.replace(
        cfg.truth, noise_std=noise, target_l0=l0, subspace_ranks=ranks, subspace_orthogonal=[False], seed=seed
    )
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    C.save(cfg, path)
    assert C.load(path) == cfg


def test_bad_toml_files(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[truth]\nd = 'x'\n")
    with pytest.raises(ConfigError, match="truth.d = 'x'"):
        C.load(p)
    p.write_text("[truth]\nwidth = 3\n")
    with pytest.raises(ConfigError, match="truth.width: unknown field"):
        C.load(p)
    p.write_text("[truth\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        C.load(p)
    p.write_text("[bogus]\nx = 1\n")
    with pytest.raises(ConfigError, match="bogus: unknown section"):
        C.load(p)
    with pytest.raises(ConfigError, match="no such file"):
        C.load(tmp_path / "missing.toml")


def test_orthogonal_flag_broadcast() -> None:
    t = TruthConfig(d=16, n_atoms=3, subspace_ranks=[2, 3], subspace_orthogonal=[True], target_l0=1.0)
    validate_truth(t)
    assert C.block_orthogonal_flags(t) == [True, True]
