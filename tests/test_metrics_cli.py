"""`synthsae analyze` and the metrics.json writer; the tiny-preset science check once the trainer exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from synthsae.metrics.run_analysis import LATENTS_FILE, write_analysis

runner = CliRunner()


def test_write_analysis_merges_under_its_key(tmp_path: Path) -> None:
    import torch

    p = tmp_path / "metrics.json"
    p.write_text(json.dumps({"pooling": {"x": 1}, "analysis": {"old": True}}))
    write_analysis(p, {"schema": "s", "value": 2}, {"stability": torch.ones(2, 3)})
    got = json.loads(p.read_text())
    assert got["pooling"] == {"x": 1} and got["analysis"] == {"schema": "s", "value": 2}
    assert (tmp_path / LATENTS_FILE).is_file()


def test_analyze_missing_path_is_one_line_exit_2(tmp_path: Path) -> None:
    res = runner.invoke(app, ["analyze", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert "no such file" in " ".join(res.output.split())  # rich wraps the one line at the test terminal width


def test_analyze_rejects_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    res = runner.invoke(app, ["analyze", str(tmp_path)])
    assert res.exit_code == 2 and "neither a run directory" in " ".join(res.output.split())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    train = pytest.importorskip("synthsae.train")
    pytest.importorskip("synthsae.io")
    from synthsae.config import preset, validate

    out = tmp_path_factory.mktemp("tiny") / "run"
    cfg = validate(preset("tiny"))
    cfg.train.device = "cpu"
    train.train_run(cfg, out, progress=False)
    return out


@pytest.mark.slow
def test_analyze_cli_on_a_tiny_run(tiny_run: Path) -> None:
    res = runner.invoke(app, ["analyze", str(tiny_run), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    got = json.loads((tiny_run / "metrics.json").read_text())["analysis"]
    assert got["settings"]["tau"] == 0.7 and got["settings"]["frequency_source"].startswith("measured")
    assert got["stability"]["mean"]["baseline"] is not None
    folders = sorted(str(p) for p in (tiny_run / "seeds").glob("seed_*"))
    out = tiny_run / "folders.json"
    res = runner.invoke(app, ["analyze", *folders, "--out", str(out), "--match", "hungarian", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["analysis"]["settings"]["match"] == "hungarian"
    res = runner.invoke(app, ["analyze", str(tiny_run), "--match", "nope"])
    assert res.exit_code == 2


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason=(
    "measured 2026-11-25: tiny's 300 steps leave FVU 0.36, best atom cosine 0.65, 0 atoms at >= 0.9 and 0-1 latents "
    "per block (recovery 0.0-0.1); on `default` (3000 steps) only the most frequent block is recovered. Claim not met "
    "at this training budget: see issue 4 note"))
def test_tiny_science_atoms_stable_blocks_recovered(tiny_run: Path) -> None:
    """Issue 4's claims at toy scale: atom latents beat rank>=4 block latents on stability; blocks are recovered."""
    from synthsae.metrics.run_analysis import analyze_run

    res, _ = analyze_run(tiny_run, device="cpu")
    tr = res["truth"]
    assert tr["atoms"]["frac_recovered_0.9"]["value"] > 0.5
    assert tr["atoms"]["atom_latent_stability"] > tr["block_latent_stability_rank_ge_4"]
    for b in tr["blocks"]:
        assert b["recovery"]["value"] > 0.8 > 3 * b["recovery"]["baseline"], b
