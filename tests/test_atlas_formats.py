"""`synthsae atlas` reads SAE folders the way `analyze` does (all three formats, quoted globs, parent folders),
writes into a folder of ours, and range-checks --min-seeds against the seeds given."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from cli import app
from test_loaders import D, M, dl_folder, sparsify_folder

runner = CliRunner()


def _lines(res) -> list[str]:
    return [ln for ln in res.output.splitlines() if ln.strip()]


def test_atlas_on_sparsify_glob_and_dictionary_learning_parent(tmp_path):
    base = torch.randn(M, D, generator=torch.Generator().manual_seed(0))
    for s in range(3):
        sparsify_folder(tmp_path / "sp" / f"run{s}" / "layers.6", s, base=base)
        dl_folder(tmp_path / "dl" / f"trainer_{s}", s)
    res = runner.invoke(app, ["atlas", str(tmp_path / "sp" / "*" / "layers.6"), "--device", "cpu", "--out",
                              str(tmp_path / "atlas_sp")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "atlas_sp" / "atlas.json").read_text())
    assert got["n_seeds"] == 3
    res = runner.invoke(app, ["atlas", str(tmp_path / "dl"), "--device", "cpu"])  # default: the common parent
    assert res.exit_code == 0, res.output
    assert (tmp_path / "dl" / "atlas.json").is_file() and (tmp_path / "dl" / ".synthsae-analysis").is_file()


def test_atlas_min_seeds_is_range_checked(tmp_path):
    for s in range(3):
        dl_folder(tmp_path / "dl" / f"trainer_{s}", s)
    for bad in ("1", "99"):
        res = runner.invoke(app, ["atlas", str(tmp_path / "dl"), "--device", "cpu", "--min-seeds", bad])
        lines = _lines(res)
        assert res.exit_code == 2 and len(lines) == 1 and "--min-seeds" in lines[0] and "3 seeds" in lines[0], res.output
    assert not (tmp_path / "dl" / "atlas.json").exists()
