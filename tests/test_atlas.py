"""The cross-seed atlas on dictionaries built by hand: rotated copies, random dictionaries, invariances, files."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from typer.testing import CliRunner

from synthsae.config import ConfigError
from synthsae.metrics.atlas import (
    AtlasConfig, atlas_summary, atlas_tensors, attach_stats, build_atlas, heldout_stability, holding_overlap,
    match_blocks,
)
from synthsae.source import Source
from synthsae.study_stages import atlas_of
from synthsae.metrics.stability import pair_scores, stability
from synthsae.metrics.subspaces import random_rotation_in

D, RANKS, N_ATOMS = 40, [2, 3, 5], 14


def planted(seed: int = 0):
    """Orthonormal blocks of RANKS plus atoms in their complement; a base dictionary tiling every block with r+1
    latents."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0]
    blocks, c = [], 0
    for r in RANKS:
        blocks.append(Q[:, c : c + r])
        c += r
    comp = Q[:, c:]
    atoms = torch.nn.functional.normalize(torch.randn(N_ATOMS, comp.shape[1], generator=g, dtype=torch.float64) @ comp.T, dim=1)
    # each block tiled by r + 1 latents that span it well (a random rotation of its basis plus their mean direction)
    tiles = []
    for r, B in zip(RANKS, blocks):
        R = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=torch.float64))[0]
        t = torch.cat([R, R.sum(0, keepdim=True)]) @ B.T
        tiles.append(torch.nn.functional.normalize(t, dim=1))
    return blocks, torch.cat([atoms, *tiles]), g


def rotated_copies(S: int = 5, seed: int = 0):
    """S seeds that are copies of one dictionary with each block's latents rotated at random inside the block."""
    blocks, base, g = planted(seed)
    seeds = []
    for _ in range(S):
        Dm = base.clone()
        for B in blocks:
            Dm = Dm @ random_rotation_in(B, g).T  # identity outside the block: atoms and other blocks stay
        seeds.append(Dm)
    return blocks, torch.stack(seeds).float()


def test_rotated_copies_give_one_feature_per_block_of_the_right_rank():
    blocks, dec = rotated_copies()
    atlas = build_atlas(dec)
    rows = match_blocks(atlas, blocks)
    for row, r in zip(rows, RANKS):
        assert row["overlap"] > 0.999 and row["feature_rank"] == r and row["features_inside"] == 1, row
        assert row["feature_stability"] == 1.0
    assert sum(f.rank == 1 for f in atlas.features) == N_ATOMS
    assert all(f.stability == 1.0 for f in atlas.features) and atlas.n_remainder == 0
    # latent-level stability of the block latents is far lower: the atlas is what makes them reproducible
    sc, _ = pair_scores(dec)
    assert float(stability(sc, 0.7)[:, N_ATOMS:].mean()) < 0.9


def test_independent_random_dictionaries_have_no_reproducible_feature():
    g = torch.Generator().manual_seed(3)
    atlas = build_atlas(torch.randn(5, 60, D, generator=g))
    assert len(atlas.features) == 0 and atlas.n_remainder == 5 * 60


def test_a_block_held_by_a_minority_is_not_a_feature():
    """The claim fails where it should: a block present in 2 of 6 seeds (others random there) is no feature."""
    blocks, dec = rotated_copies(S=6)
    g = torch.Generator().manual_seed(9)
    lo = N_ATOMS + RANKS[0] + 1 + RANKS[1] + 1  # the rank-5 block's latents
    dec[2:, lo:] = torch.randn(4, dec.shape[1] - lo, D, generator=g)
    rows = match_blocks(build_atlas(dec), blocks)
    assert rows[2]["overlap"] < 0.5 and rows[0]["overlap"] > 0.999


def _canonical(atlas):
    """Features as comparable tuples: rank, stability, seed count and the projector onto their span."""
    out = []
    for f in atlas.features:
        P = f.basis.double() @ f.basis.double().T
        out.append((f.rank, round(f.stability, 6), len(f.seeds), P))
    return out


def _same(a, b):
    assert len(a) == len(b)
    used = set()
    for r, s, n, P in a:
        hit = [i for i, (r2, s2, n2, P2) in enumerate(b)
               if i not in used and r2 == r and s2 == s and n2 == n and float((P - P2).abs().max()) < 1e-4]
        assert hit, (r, s, n)
        used.add(hit[0])


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_atlas_is_invariant_to_latent_permutation_and_seed_order(perm_seed, order_seed):
    _, dec = rotated_copies(S=4, seed=1)
    g = torch.Generator().manual_seed(perm_seed)
    shuffled = torch.stack([dec[s][torch.randperm(dec.shape[1], generator=g)] for s in range(4)])
    order = torch.randperm(4, generator=torch.Generator().manual_seed(order_seed))
    ref = _canonical(build_atlas(dec))
    _same(ref, _canonical(build_atlas(shuffled)))
    _same(ref, _canonical(build_atlas(dec[order])))


def test_rank1_stability_is_latent_stability_at_sqrt_overlap():
    """For a rank-1 feature, holding = a latent at signed cos >= sqrt(overlap): the latent-level rule."""
    g = torch.Generator().manual_seed(4)
    u = torch.nn.functional.normalize(torch.randn(D, generator=g, dtype=torch.float64), dim=0)
    for c in (0.96, 0.94):
        w = c * u + (1 - c * c) ** 0.5 * torch.nn.functional.normalize(torch.randn(D, generator=g, dtype=torch.float64), dim=0)
        ov = holding_overlap(u.unsqueeze(1), torch.stack([w, -u]))
        assert (ov >= 0.9) == (c >= 0.9 ** 0.5)


def test_heldout_and_files(tmp_path):
    blocks, dec = rotated_copies(S=6)
    atlas = build_atlas(dec[:3], cfg=AtlasConfig(min_seeds=2))
    held = heldout_stability(atlas, dec[3:])
    assert all(h == 1.0 for h in held)
    g = torch.Generator().manual_seed(5)
    assert all(h == 0.0 for h in heldout_stability(atlas, torch.randn(3, dec.shape[1], D, generator=g)))
    t = atlas_tensors(atlas)
    F = len(atlas.features)
    assert t["bases"].shape == (F, D, max(RANKS)) and t["ranks"].tolist() == [f.rank for f in atlas.features]
    for i, f in enumerate(atlas.features):  # orthonormal columns, zero padding
        Bi = t["bases"][i]
        torch.testing.assert_close(Bi[:, : f.rank].T @ Bi[:, : f.rank], torch.eye(f.rank), atol=1e-5, rtol=0)
        assert float(Bi[:, f.rank :].abs().sum()) == 0.0
    from synthsae.serialize import to_json

    json.dumps(to_json(atlas_summary(atlas)), allow_nan=False)


def test_ev_shares_sum_to_one_per_seed():
    from conftest import make_sae

    sae = make_sae(3, 12, 24, "topk", k=3)
    atlas = build_atlas(sae.W_dec.detach(), cfg=AtlasConfig(min_seeds=2))
    x = torch.randn(300, 12) + 0.3
    per = attach_stats(atlas, sae, x)
    for a, b in zip(per["ev_share_features_per_seed"], per["ev_share_remainder_per_seed"]):
        assert a + b == pytest.approx(1.0, abs=1e-6)


def test_bad_atlas_settings_and_paths(tmp_path):
    with pytest.raises(ConfigError, match=r"^atlas.overlap = 1.5"):
        atlas_of(Source("run", tmp_path, run_dir=tmp_path), AtlasConfig(overlap=1.5))
    from cli import app

    res = CliRunner().invoke(app, ["atlas", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such file" in res.output


def test_cli_atlas_on_a_tiny_run(tmp_path):
    from cli import app
    from synthsae.config import preset
    from synthsae.metrics_file import read_metrics
    from synthsae.train import train_run

    cfg = preset("tiny")
    cfg.train.steps, cfg.train.seeds, cfg.train.checkpoint_every = 150, 4, 150
    cfg.analysis.eval_tokens = 1024
    train_run(cfg, tmp_path / "r", progress=False)
    res = CliRunner().invoke(app, ["atlas", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "r" / "atlas.json").read_text())
    t = load_file(str(tmp_path / "r" / "atlas.safetensors"))
    assert t["bases"].shape[0] == out["n_features"] == t["ranks"].numel() == t["stability"].numel() == len(out["features"])
    assert len(out["planted_blocks"]) == 3 and "heldout" in out
    assert out["heldout"]["goal"]["held"] in (True, False)
    assert abs(out["ev_share_features"] + out["ev_share_remainder"] - 1) < 1e-4 or out["n_features"] == 0
    # the same result, typed, is metrics.json's "atlas" stage; atlas.json is it plus the feature rows
    at = read_metrics(tmp_path / "r" / "metrics.json").atlas
    from synthsae.metrics.atlas_run import read_atlas_json
    from synthsae.serialize import to_json

    typed, rows = read_atlas_json(tmp_path / "r" / "atlas.json")
    assert to_json(typed) == to_json(at) and len(rows) == at.n_features
    assert sum(k.n_latents for k in at.kinds) == at.n_seeds * at.d_sae
    assert sum(k.ev_share for k in at.kinds) == pytest.approx(1.0, abs=1e-4)
    from synthsae.report import atlas_sections

    (sec,) = atlas_sections(at)
    assert sec.verdict in ("held", "partly held", "did not hold") and len(sec.tables) >= 4
    assert atlas_sections(None) == []


def _sae_with(dec):
    from conftest import make_sae

    S, m, d = dec.shape
    sae = make_sae(S, d, m, "topk", k=6)
    with torch.no_grad():
        sae.W_dec.copy_(dec)
        sae.W_enc.copy_(dec.transpose(1, 2))
        sae.b_enc.zero_()
    return sae


@pytest.mark.parametrize("case", ["rotated", "random"])
def test_atlas_verdict_holds_for_rotated_copies_and_not_for_random_dictionaries(case):
    from synthsae.metrics.atlas_run import _judge_heldout, _latent_ev_share, atlas_verdict

    _, dec = rotated_copies(S=6)
    if case == "random":
        dec = torch.randn(dec.shape, generator=torch.Generator().manual_seed(2))
    sae = _sae_with(dec)
    x = torch.randn(2000, D, generator=torch.Generator().manual_seed(8))
    alive = torch.ones(6, dec.shape[1], dtype=torch.bool)
    at = atlas_summary(build_atlas(dec[:1].expand(2, -1, -1)))  # any result; only its held-out part is judged
    at.heldout = _judge_heldout(sae, x, alive, _latent_ev_share(sae, x), AtlasConfig(), 0.7, None)
    v = atlas_verdict(at)
    assert v.verdict == ("held" if case == "rotated" else "did not hold"), (v.why, [c.detail for c in v.checks])
    assert atlas_verdict(None).verdict == "not measured"


def _strategy(tp):
    """Hypothesis strategy for a results type: every field drawn (finite floats, None for Optional)."""
    import dataclasses
    import typing

    from synthsae.serialize import _is_optional, _strip_optional

    if _is_optional(tp):
        return st.none() | _strategy(_strip_optional(tp))
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return st.builds(tp, **{f.name: _strategy(hints[f.name]) for f in dataclasses.fields(tp)})
    if typing.get_origin(tp) is list:
        return st.lists(_strategy(typing.get_args(tp)[0]), max_size=2)
    if typing.get_origin(tp) is dict:
        return st.dictionaries(st.text(max_size=4), _strategy(typing.get_args(tp)[1]), max_size=2)
    return {float: st.floats(allow_nan=False, allow_infinity=False), int: st.integers(-(2**40), 2**40),
            str: st.text(max_size=6), bool: st.booleans()}[tp]


@settings(max_examples=25, deadline=None)
@given(_strategy(__import__("synthsae.results", fromlist=["AtlasResult"]).AtlasResult))
def test_atlas_result_round_trips_through_metrics_json_and_fits_the_schema(res):
    import tempfile
    from pathlib import Path

    import jsonschema

    from synthsae.metrics_file import read_metrics, write_stage
    from synthsae.metrics_file import metrics_schema

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "metrics.json"
        path.write_text('{"other": 1}')
        write_stage(path, "atlas", res)
        assert read_metrics(path).atlas == res
        raw = json.loads(path.read_text())
        assert raw["other"] == 1
        jsonschema.validate(raw, metrics_schema())


def test_atlas_stage_refuses_another_type_and_names_a_bad_field(tmp_path):
    from synthsae.metrics_file import MetricsError, read_metrics, write_stage

    _, dec = rotated_copies(S=3)
    at = atlas_summary(build_atlas(dec))
    with pytest.raises(TypeError, match="AtlasResult"):
        write_stage(tmp_path / "metrics.json", "atlas", {"n_features": 1})
    write_stage(tmp_path / "metrics.json", "atlas", at)
    raw = json.loads((tmp_path / "metrics.json").read_text())
    raw["atlas"]["n_subspaces"] = "three"
    (tmp_path / "metrics.json").write_text(json.dumps(raw))
    with pytest.raises(MetricsError, match=r"atlas.n_subspaces.*synthsae atlas"):
        read_metrics(tmp_path / "metrics.json")


def test_latent_feature_map_is_the_members_of_each_feature():
    """label[s, j] = i exactly for the latents of seed s merged into feature i (what the masks of a splice zero)."""
    from synthsae.metrics.atlas import feature_latents

    blocks, dec = rotated_copies(S=6)
    g = torch.Generator().manual_seed(9)
    lo = N_ATOMS + RANKS[0] + 1 + RANKS[1] + 1
    dec[2:, lo:] = torch.randn(4, dec.shape[1] - lo, D, generator=g)  # a remainder: the rank-5 block in 2 of 6 seeds
    atlas = build_atlas(dec)
    assert atlas.n_remainder > 0 and len(atlas.features) > 0
    for i, f in enumerate(atlas.features):
        assert {(int(s), int(j)) for s, j in torch.nonzero(atlas.label == i)} == set(f.members)
    assert int(feature_latents(atlas).sum()) == sum(len(f.members) for f in atlas.features)


def test_a_dense_component_larger_than_max_rank_per_seed_is_split():
    """Bounded size: 40 latents per seed packed into one 12-dim span (d = 64, max_rank 16) clustered into one
    component of 160 latents before; now no feature holds more than max_rank latents of a seed."""
    g = torch.Generator().manual_seed(3)
    d, S = 64, 4
    B = torch.linalg.qr(torch.randn(d, 12, generator=g))[0]
    comp = torch.linalg.qr(torch.randn(d, d, generator=g))[0][:, :40]
    comp = comp - B @ (B.T @ comp)
    atoms = torch.nn.functional.normalize(torch.randn(20, 40, generator=g) @ comp.T, dim=1)
    dec = torch.stack([torch.cat([torch.nn.functional.normalize(torch.randn(40, 12, generator=g) @ B.T, dim=1),
                                  atoms + 0.01 * torch.randn(20, d, generator=g)]) for _ in range(S)])
    atlas = build_atlas(dec)
    per_seed = [max(sum(1 for s, _ in f.members if s == t) for t in range(S)) for f in atlas.features]
    assert max(per_seed) <= atlas.settings["max_rank_resolved"] == 16
    assert sum(f.rank == 1 for f in atlas.features) >= 20  # the atoms are untouched


def test_atlas_resamples_give_a_stable_answer_on_planted_subspaces():
    """Leave-one-seed-out atlases of rotated copies recover the same planted blocks every time: zero spread."""
    from synthsae.metrics.atlas_run import atlas_result
    from synthsae.report import atlas_sections

    blocks, dec = rotated_copies(S=5)
    sae = _sae_with(dec)
    x = torch.randn(1000, D, generator=torch.Generator().manual_seed(8))
    res, atlas = atlas_result(sae, AtlasConfig(), x=x, heldout=False)
    rs = res.resamples
    assert rs.left_out == [0, 1, 2, 3, 4] and rs.n_subspaces == [len(RANKS)] * 5 and rs.n_subspaces_spread.std == 0
    assert rs.n_features == [N_ATOMS + len(RANKS)] * 5 and rs.n_remainder_latents == [0] * 5
    assert rs.ev_share_features_spread.std < 1e-3 and len(rs.ev_share_features) == 5
    assert all(r["overlap"] > 0.999 for r in match_blocks(atlas, blocks))
    (sec,) = atlas_sections(res)
    assert any("resamples" in (t.caption or "") for t in sec.tables)


def test_atlas_resamples_show_the_spread_of_random_dictionaries():
    """Independent random dictionaries: no resample finds a feature, and the spread says so (all zero)."""
    from synthsae.metrics.atlas_run import atlas_resamples

    dec = torch.randn(4, 60, D, generator=torch.Generator().manual_seed(4))
    rs = atlas_resamples(_sae_with(dec), None, torch.ones(4, 60, dtype=torch.bool), AtlasConfig())
    assert rs.n_features == [0] * 4 and rs.n_remainder_latents == [180] * 4 and rs.ev_share_features == []
