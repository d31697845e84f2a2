"""blocktopk: g = 1 is TopK exactly, the sparse path equals dense autograd, group selection, files, config errors."""

import json

import pytest
import torch
from typer.testing import CliRunner

from synthsae.config import ConfigError, SAEConfig, preset, validate_sae
from synthsae.io import load_sae_folders, save_seed_folder
from synthsae.metrics.atlas import group_stability
from synthsae.metrics.subspaces import random_rotation_in
from synthsae.sae import build_sae, registered_variants
from synthsae.sae.base import batch_fvu
from synthsae.train import train_run

MIXED = [1] * 10 + [3] * 4 + [2] * 5 + [1] * 4  # 36 latents, 23 groups, three runs of sizes


def _block(sizes=None, g=1, m=36, k=3, d=12, seeds=(0, 1)):
    cfg = SAEConfig(variant="blocktopk", d_sae=m, k=k, group_size=g, group_sizes=list(sizes or []))
    return build_sae(cfg, d, list(seeds))


def test_blocktopk_is_registered():
    assert "blocktopk" in registered_variants()


def test_g1_training_equals_topk(tmp_path):
    """Same seeds, same data, same init: every weight after training agrees with TopK to 1e-6."""
    runs = {}
    for variant in ("topk", "blocktopk"):
        cfg = preset("tiny")
        cfg.sae.variant = variant
        cfg.train.steps, cfg.train.seeds, cfg.train.checkpoint_every = 60, 2, 60
        cfg.analysis.eval_tokens = 512
        runs[variant] = train_run(cfg, tmp_path / variant, progress=False)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        a, b = getattr(runs["topk"], name), getattr(runs["blocktopk"], name)
        assert (a - b).abs().max() < 1e-6, name
    fresh = build_sae(runs["topk"].cfg, 32, [0, 1])
    assert (fresh.W_dec - runs["topk"].W_dec).abs().max() > 1e-2  # training moved the weights: equality is not trivial


@pytest.mark.parametrize("sizes,g", [(None, 3), (MIXED, 1)])
def test_sparse_training_path_equals_dense_autograd(sizes, g):
    sae = _block(sizes, g, k=3)
    x = torch.randn(40, 12) + 0.2
    out = sae(x)
    grads = torch.autograd.grad(out.loss, [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec])
    x_hat = sae.decode(sae.encode(x))
    torch.testing.assert_close(out.x_hat, x_hat, atol=1e-5, rtol=1e-5)
    ref = torch.autograd.grad(batch_fvu(x, x_hat).sum(), [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec])
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_groups_are_chosen_by_norm_and_decode_whole():
    sae = _block(MIXED, k=2)
    x = torch.randn(30, 12)
    with torch.no_grad():
        pre = sae.pre_acts(x)
        acts = sae.encode(x)
    for s in range(2):
        for t in range(30):
            on = acts[s, t] != 0
            groups = sorted({int(sae._gid[j]) for j in torch.nonzero(on).squeeze(1)})
            assert len(groups) <= 2
            score = sae.group_scores(pre)[s, t]
            top = set(torch.topk(score, 2).indices.tolist())
            for gi in groups:  # a chosen group is among the top-2 scores and fires as a whole (signed if g > 1)
                assert gi in top
                a, b = int(sae._gstart[gi]), int(sae._gstart[gi] + sae._gsize[gi])
                want = pre[s, t, a:b] if b - a > 1 else torch.relu(pre[s, t, a:b])
                torch.testing.assert_close(acts[s, t, a:b], want)
    assert (acts < 0).any(), "codes inside a group are signed"


def test_save_load_round_trip_and_cfg_note(tmp_path):
    sae = _block(MIXED, k=2, seeds=(3, 4))
    folders = [save_seed_folder(tmp_path / f"s{s}", sae, s, {}) for s in range(2)]
    cfg = json.loads((folders[0] / "cfg.json").read_text())
    assert cfg["architecture"] == "blocktopk" and cfg["group_sizes"] == MIXED and "SAELens" in cfg["note"]
    back = load_sae_folders(folders)
    x = torch.randn(20, 12)
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), sae.encode(x))
    g1 = _block(None, 1)
    cfg1 = json.loads((save_seed_folder(tmp_path / "g1", g1, 0, {}) / "cfg.json").read_text())
    assert cfg1["architecture"] == "topk" and cfg1["k"] == 3


def test_saelens_loads_g1_as_topk(tmp_path):
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens not installed")
    sae = _block(None, 1)
    with torch.no_grad():
        sae.b_enc.add_(0.1)
    folder = save_seed_folder(tmp_path / "s", sae, 1, {})
    theirs = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
    x = torch.randn(30, 12)
    with torch.no_grad():
        a = theirs.encode(x)
        a = a.to_dense() if a.is_sparse else a
        torch.testing.assert_close(a, sae.encode(x)[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw,field", [
    (dict(group_size=5), "sae.group_size"),
    (dict(group_sizes=[4] * 5), "sae.group_sizes"),
    (dict(group_size=4, k=20), "sae.k"),
    (dict(group_sizes=[0, 16, 16]), "sae.group_sizes[0]"),
])
def test_bad_group_config_names_the_field(kw, field):
    cfg = SAEConfig(variant="blocktopk", d_sae=32, k=kw.pop("k", 2), **kw)
    with pytest.raises(ConfigError) as e:
        validate_sae(cfg)
    assert str(e.value).startswith(field + " ")


def test_cli_bad_group_size_exit_2(tmp_path):
    from cli import app

    res = CliRunner().invoke(app, ["train", "--preset", "tiny", "--variant", "blocktopk", "--group-size", "5",
                                   "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "sae.group_size" in res.output and not (tmp_path / "r").exists()


def test_group_stability_sees_rotations_inside_groups_but_not_random_groups():
    g = torch.Generator().manual_seed(0)
    d, sizes = 24, [1] * 6 + [3] * 4 + [2] * 3
    base = torch.randn(sum(sizes), d, generator=g)
    seeds = []
    for s in range(3):  # each group's rows rotated at random inside the group's span, groups permuted within runs
        D = base.clone()
        a = 0
        for n in sizes:
            if n > 1:
                from synthsae.metrics.subspaces import orthonormal_basis

                U = orthonormal_basis(base[a : a + n].T.double())
                D[a : a + n] = (D[a : a + n].double() @ random_rotation_in(U, g).T).float()
            a += n
        seeds.append(D)
    res = group_stability(torch.stack(seeds), sizes)
    assert res["mean"] == pytest.approx(1.0)
    rnd = group_stability(torch.randn(3, sum(sizes), d, generator=g), sizes)
    assert rnd["mean"] < 0.1


def test_group_centre_tracks_mean_norms_and_round_trips(tmp_path):
    cfg = SAEConfig(variant="blocktopk", d_sae=36, k=3, group_sizes=MIXED, group_centre=True)
    sae = build_sae(cfg, 12, [0, 1])
    x = torch.randn(64, 12) + 0.2
    sae.train()
    out = sae(x)
    sae.update_running_stats(out)
    with torch.no_grad():
        pre = sae.pre_acts(x)
        sae.centre = False
        raw = sae.group_scores(pre)
        sae.centre = True
    multi = sae._gsize > 1
    torch.testing.assert_close(sae.group_offset[:, multi], raw.mean(1)[:, multi])
    assert float(sae.group_offset[:, ~multi].abs().max()) == 0.0
    # the sparse training path still equals dense autograd with centred scores
    out = sae(x)
    torch.testing.assert_close(out.x_hat, sae.decode(sae.encode(x)), atol=1e-5, rtol=1e-5)
    sae.eval()
    folders = [save_seed_folder(tmp_path / f"s{s}", sae, s, {}) for s in range(2)]
    back = load_sae_folders(folders)
    with torch.no_grad():
        torch.testing.assert_close(back.group_offset, sae.group_offset)
        torch.testing.assert_close(back.encode(x), sae.encode(x))
