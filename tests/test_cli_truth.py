"""`synthsae truth ...` through the CLI: output, files, one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def test_describe_json_reports_l0_and_superposition() -> None:
    res = runner.invoke(app, ["truth", "describe", "--preset", "default", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert abs(info["expected_l0"] - 8.0) < 1e-3
    assert info["superposition_ratio"] == info["total_rank"] / info["d"]
    ranks = {row["rank"] for row in info["by_rank"]}
    assert ranks == {1, 2, 3, 4, 5, 6, 8}


def test_describe_table() -> None:
    res = runner.invoke(app, ["truth", "describe", "--preset", "tiny"])
    assert res.exit_code == 0, res.output
    assert "superposition ratio" in res.output


def test_unknown_preset_exit_2_one_line() -> None:
    res = runner.invoke(app, ["truth", "describe", "--preset", "huge"])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "tiny" in lines[0] and "default" in lines[0]


def test_bad_config_file_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('preset = "tiny"\n[truth]\nsubspace_ranks = [0]\nsubspace_orthogonal = [false]\n')
    res = runner.invoke(app, ["truth", "describe", "--config", str(cfg)])
    assert res.exit_code == 2
    assert "truth.subspace_ranks[0] = 0" in res.output


def test_sample_writes_file_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "s.safetensors"
    res = runner.invoke(app, ["truth", "sample", "--preset", "tiny", "--n", "64", "--out", str(out)])
    assert res.exit_code == 0, res.output
    with safe_open(str(out), "pt") as f:
        x = f.get_tensor("x")
        assert x.shape == (64, 32)
        assert f.get_tensor("truth.atoms").shape == (40, 32)
        assert f.get_tensor("active").shape[0] == 64
    before = out.read_bytes()
    res = runner.invoke(app, ["truth", "sample", "--preset", "tiny", "--n", "8", "--out", str(out)])
    assert res.exit_code == 2 and "--force" in res.output
    assert out.read_bytes() == before
    res = runner.invoke(app, ["truth", "sample", "--preset", "tiny", "--n", "8", "--out", str(tmp_path / "s.bin")])
    assert res.exit_code == 2
