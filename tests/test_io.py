"""Seed folders (SAELens layout), truth files and run folders: exact round trips and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from synthsae.config import SAEConfig, preset
from synthsae.io import (RunFileError, load_run, load_sae_folders, load_sparsity, load_truth_tensors, save_seed_folder,
                         seed_folders)
from synthsae.sae import build_sae
from synthsae.train import train_run

from conftest import SHIPPED


def perturbed_sae(variant: str, S: int = 3, d: int = 12, m: int = 32):
    """An SAE whose every tensor is non-trivial (so a round trip that drops one would show)."""
    sae = build_sae(SAEConfig(variant=variant, d_sae=m, k=3), d, list(range(10, 10 + S)))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name != "W_dec":
                p.add_(0.2 * torch.randn(p.shape, generator=g))
        if hasattr(sae, "topk_threshold"):
            sae.topk_threshold.copy_(torch.rand(S, generator=g) * 0.3)
    return sae


def save_all(sae, root: Path) -> list[Path]:
    out = []
    for s in range(sae.n_seeds):
        sp = torch.log10(torch.rand(sae.d_sae) + 1e-10)
        out.append(save_seed_folder(root / f"seed_{s}", sae, s, {"data_seed": 5}, sp))
    return out


@pytest.mark.parametrize("variant", SHIPPED)
def test_save_load_reproduces_encode_decode_exactly(tmp_path, variant):
    sae = perturbed_sae(variant)
    folders = save_all(sae, tmp_path)
    back = load_sae_folders(folders)
    assert type(back) is type(sae) and back.init_seeds == sae.init_seeds
    x = torch.randn(40, 12) + 0.3
    acts = sae.encode(x)
    assert (acts > 0).any()
    assert torch.equal(back.encode(x), acts)
    assert torch.equal(back.decode(acts), sae.decode(acts))
    assert load_sparsity(folders).shape == (3, 32)
    cfg = json.loads((folders[0] / "cfg.json").read_text())
    assert cfg["metadata"]["init_seed"] == 10 and cfg["metadata"]["data_seed"] == 5 and cfg["metadata"]["variant"] == variant
    tensors = load_file(str(folders[1] / "sae_weights.safetensors"))
    assert tensors["W_enc"].shape == (12, 32) and tensors["W_dec"].shape == (32, 12)


def test_subset_of_folders_loads_in_given_order(tmp_path):
    sae = perturbed_sae("topk")
    folders = save_all(sae, tmp_path)
    back = load_sae_folders([folders[2], folders[0]])
    assert back.init_seeds == [12, 10]
    assert torch.equal(back.W_dec, sae.W_dec[[2, 0]])


def test_missing_weight_file_is_one_line_error(tmp_path):
    folders = save_all(perturbed_sae("topk"), tmp_path)
    (folders[1] / "sae_weights.safetensors").unlink()
    with pytest.raises(RunFileError) as err:
        load_sae_folders(folders)
    msg = str(err.value)
    assert "\n" not in msg and "seed_1" in msg and "missing" in msg


def test_corrupted_weight_file_is_one_line_error(tmp_path):
    folders = save_all(perturbed_sae("jumprelu"), tmp_path)
    path = folders[0] / "sae_weights.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(RunFileError) as err:
        load_sae_folders(folders)
    assert "\n" not in str(err.value) and "corrupted" in str(err.value)


def test_mismatched_shapes_and_bad_json_are_one_line_errors(tmp_path):
    a = save_all(perturbed_sae("topk", S=1, m=32), tmp_path / "a")
    b = save_all(perturbed_sae("topk", S=1, m=16), tmp_path / "b")
    with pytest.raises(RunFileError, match="does not match"):
        load_sae_folders(a + b)
    (a[0] / "cfg.json").write_text("{not json")
    with pytest.raises(RunFileError, match="not valid JSON"):
        load_sae_folders(a)
    with pytest.raises(RunFileError, match="no such seed folder"):
        load_sae_folders([tmp_path / "nowhere"])


def test_wrong_tensor_shape_in_file(tmp_path):
    from safetensors.torch import save_file

    folders = save_all(perturbed_sae("relu", S=1), tmp_path)
    path = folders[0] / "sae_weights.safetensors"
    t = load_file(str(path))
    t["W_enc"] = t["W_enc"][:, :5].contiguous()
    save_file(t, str(path))
    with pytest.raises(RunFileError, match="shape"):
        load_sae_folders(folders)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    cfg = preset("tiny")
    cfg.train.seeds = 2
    cfg.train.steps = 40
    cfg.train.checkpoint_every = 20
    cfg.analysis.eval_tokens = 512
    out = tmp_path_factory.mktemp("run") / "r"
    train_run(cfg, out, progress=False)
    return out


def test_run_folder_layout_and_load_run(tiny_run):
    assert (tiny_run / "config.toml").is_file() and (tiny_run / "train.json").is_file()
    assert not (tiny_run / "checkpoint").exists()  # removed once training finished
    assert [p.name for p in seed_folders(tiny_run)] == ["seed_0", "seed_1"]
    cfg, sae, truth = load_run(tiny_run)
    assert cfg.preset == "tiny" and sae.n_seeds == 2 and truth is not None
    raw = load_truth_tensors(tiny_run / "truth.safetensors")  # plain safetensors, no synthsae needed
    assert raw["atoms"].shape == (40, 32) and raw["subspaces"].shape == (3, 32, 4)
    assert raw["ranks"].tolist() == [4, 3, 4] and raw["W_head"].shape == (32, 32)
    assert torch.equal(raw["atoms"], truth.atoms)
    sp = load_sparsity(seed_folders(tiny_run))
    assert sp.shape == (2, 96) and (sp <= 0).all()


def test_cli_reports_damaged_run_in_one_line(tiny_run, tmp_path):
    import shutil

    from cli import app

    bad = tmp_path / "bad"
    shutil.copytree(tiny_run, bad)
    w = bad / "seeds" / "seed_1" / "sae_weights.safetensors"
    w.write_bytes(b"\x00garbage" * 10)
    res = CliRunner().invoke(app, ["analyze", str(bad), "--device", "cpu"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "seed_1" in lines[0] and "Traceback" not in res.output
    w.unlink()
    res = CliRunner().invoke(app, ["analyze", str(bad), "--device", "cpu"])
    assert res.exit_code == 2 and "missing" in res.output


def test_corrupted_checkpoint_cannot_resume(tmp_path):
    from cli import app

    cfg = preset("tiny")
    cfg.train.steps = 30
    cfg.train.checkpoint_every = 10
    out = tmp_path / "r"
    train_run(cfg, out, progress=False, stop_after=10)
    ck = out / "checkpoint" / "step_10" / "seed_1.pt"
    assert ck.is_file()
    ck.write_bytes(b"junk")
    res = CliRunner().invoke(app, ["train", "--out", str(out), "--resume", "--quiet"])  # the resume hint: its own config
    assert res.exit_code == 2, res.output
    assert "cannot resume" in res.output and "Traceback" not in res.output


# ----------------------------------------------------------------------------------------------- SAELens itself


@pytest.mark.parametrize("variant", SHIPPED)
def test_saelens_loads_our_folder_and_agrees(tmp_path, variant):
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens not installed (CI: pip install sae-lens)")
    ours = perturbed_sae(variant, S=2)
    folders = save_all(ours, tmp_path)
    theirs = sae_lens.SAE.load_from_disk(str(folders[1]), device="cpu")
    x = torch.randn(50, 12) + 0.3
    with torch.no_grad():
        a_ours = ours.encode(x)[1]
        a_theirs = theirs.encode(x)
        if a_theirs.is_sparse:
            a_theirs = a_theirs.to_dense()
        torch.testing.assert_close(a_theirs, a_ours, rtol=1e-5, atol=1e-5)
        assert (a_ours > 0).any()
        torch.testing.assert_close(theirs.decode(a_ours), ours.decode(a_ours.unsqueeze(0).expand(2, -1, -1))[1],
                                   rtol=1e-5, atol=1e-5)
