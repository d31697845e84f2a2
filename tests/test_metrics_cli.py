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
    from synthsae.metrics.analyze import analyze
    from synthsae.serialize import to_json

    res = analyze(torch.randn(2, 8, 4), cfg=None)
    p.write_text(json.dumps({"pooling": {"x": 1}, "analysis": {"old": True}}))
    write_analysis(p, res, {"stability": torch.ones(2, 3)})
    got = json.loads(p.read_text())
    assert got["pooling"] == {"x": 1} and got["analysis"] == to_json(res)
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
    out = tiny_run / "folder_analysis"  # SAE folders: --out names a folder of ours (created), never a json beside the run
    res = runner.invoke(app, ["analyze", *folders, "--out", str(out), "--match", "hungarian", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "metrics.json").read_text())["analysis"]["settings"]["match"] == "hungarian"
    res = runner.invoke(app, ["analyze", str(tiny_run), "--match", "nope"])
    assert res.exit_code == 2


@pytest.mark.slow
def test_tiny_science_atoms_stable_orthogonal_blocks_recovered(tiny_run: Path) -> None:
    """Issue 4's claims at toy scale: atoms recovered and stable, more stable than latents inside rank >= 4 blocks;
    an orthogonal block is recovered as a subspace, its latents at about their rotation null, span-reproducible."""
    from synthsae.metrics.run_analysis import analyze_run

    res, _ = analyze_run(tiny_run, device="cpu")
    tr = res.truth
    assert tr.atoms.frac_recovered.value > 0.5
    assert tr.atoms.atom_latent_stability > 0.9
    assert tr.atoms.atom_latent_stability > tr.block_latent_stability_rank_ge_4 + 0.1
    orth = [b for b in tr.blocks if b.orthogonal]
    assert orth
    for b in orth:
        assert b.recovery.value > 0.8 > 3 * b.recovery.baseline, b
        assert abs(b.stability - b.rotation_null) < 0.15, b
        assert b.span_reproducibility[-1] > b.span_reproducibility[0], b


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason=(
    "measured 2026-11-25 on tiny (3 seeds, 1500 steps): the superposed rank-4 block is recovered at 0.71 "
    "(chance 0.125), the superposed rank-3 block at 0.98; on `default` frequent superposed blocks reach 0.89-0.93 "
    "and rare ones 0.06-0.26. Superposition with atoms costs subspace recovery: see issue 4 note"))
def test_tiny_science_superposed_blocks_recovered(tiny_run: Path) -> None:
    from synthsae.metrics.run_analysis import analyze_run

    res, _ = analyze_run(tiny_run, device="cpu")
    for b in res.truth.blocks:
        if not b.orthogonal:
            assert b.recovery.value > 0.8 > 3 * b.recovery.baseline, b
