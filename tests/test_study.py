"""`synthsae run` end to end on a tiny truth: every file, a schema-valid metrics.json, a self-contained report,
and bad input that exits 2 without touching an existing run."""

from __future__ import annotations

import hashlib
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()
SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "synthsae" / "schemas" / "metrics.schema.json").read_text())


def _tiny_config(tmp: Path) -> Path:
    cfg = tmp / "tiny.toml"
    cfg.write_text(
        'preset = "tiny"\n[train]\nseeds = 4\nsteps = 150\nbatch_size = 256\ncheckpoint_every = 50\n'
        "[analysis]\neval_tokens = 4096\npool_refit_steps = 20\n"
    )
    return cfg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    import os

    tmp = tmp_path_factory.mktemp("study")
    out = tmp / "run"
    old = os.umask(0o022)  # as on a typical shared machine: every file the run writes must come out 0644
    try:
        res = runner.invoke(app, ["run", "--config", str(_tiny_config(tmp)), "--out", str(out), "--device", "cpu"])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    return out


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs).get("src", ""))


def test_run_writes_every_file(tiny_run: Path) -> None:
    for name in ("config.toml", "truth.safetensors", "train.json", "metrics.json", "analysis_latents.safetensors",
                 "report.md", "report.html"):
        assert (tiny_run / name).is_file(), name
    seeds = sorted((tiny_run / "seeds").iterdir())
    assert len(seeds) == 4
    for s in seeds:
        for name in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors"):
            assert (s / name).is_file()
    figs = list((tiny_run / "figures").glob("*.png"))
    assert len(figs) >= 5
    assert any((tiny_run / "pooled").iterdir())


def test_metrics_json_validates_against_schema(tiny_run: Path) -> None:
    from synthsae.metrics_file import metrics_schema

    assert SCHEMA == json.loads(json.dumps(metrics_schema())), "shipped schema is stale: regenerate it from synthsae.results"
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics) >= {"analysis", "ablation", "pooling"}
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(metrics, SCHEMA)
    # and the schema is not vacuous: a field missing or of the wrong type fails it
    broken = json.loads(json.dumps(metrics))
    del broken["pooling"]["single"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)
    broken = json.loads(json.dumps(metrics))
    broken["analysis"]["stability"]["n_latents"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)


def test_report_html_parses_and_embeds_figures(tiny_run: Path) -> None:
    page = (tiny_run / "report.html").read_text()
    p = _Collect()
    p.feed(page)
    p.close()
    assert "html" in p.tags and p.tags.count("h2") == 8  # six claims, then the truth filter and the seed budget
    assert len(p.imgs) >= 5 and all(src.startswith("data:image/png;base64,") for src in p.imgs)
    md = (tiny_run / "report.md").read_text()
    for claim in ("Stability distribution", "Truth recovery by component rank", "Functional asymmetry", "Pooling seeds",
                  "Does stability mark true features?", "How many seeds are enough?"):
        assert f"## {claim}" in md
    assert "Verdict:" in md


def test_report_rebuilds_without_retraining(tiny_run: Path) -> None:
    before = (tiny_run / "seeds" / "seed_0" / "sae_weights.safetensors").stat().st_mtime_ns
    (tiny_run / "report.html").unlink()
    res = runner.invoke(app, ["report", str(tiny_run)])
    assert res.exit_code == 0, res.output
    assert (tiny_run / "report.html").is_file()
    assert (tiny_run / "seeds" / "seed_0" / "sae_weights.safetensors").stat().st_mtime_ns == before


def test_compare_two_runs(tiny_run: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["compare", str(tiny_run), str(tiny_run), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "Key numbers" in page and "data:image/png;base64," in page


def test_finished_run_is_not_overwritten(tiny_run: Path, tmp_path: Path) -> None:
    before = _snapshot(tiny_run)
    res = runner.invoke(app, ["run", "--config", str(_tiny_config(tmp_path)), "--out", str(tiny_run)])
    assert res.exit_code == 2 and "--force" in res.output
    assert _snapshot(tiny_run) == before


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--seeds", "0"], "train.seeds = 0"),
        (["--variant", "nope"], "sae.variant = 'nope'"),
        (["--k", "100000"], "sae.k = 100000"),
        (["--preset", "huge"], "known presets are"),
        (["--device", "tpu"], "train.device = 'tpu'"),
        (["--resume", "--force"], "exclusive"),
    ],
)
def test_bad_flags_exit_2_and_leave_run_untouched(tiny_run: Path, args: list[str], needle: str) -> None:
    before = _snapshot(tiny_run)
    res = runner.invoke(app, ["run", "--out", str(tiny_run), *args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.output
    assert _snapshot(tiny_run) == before


def test_bad_config_file_exit_2(tiny_run: Path, tmp_path: Path) -> None:
    before = _snapshot(tiny_run)
    bad = tmp_path / "bad.toml"
    bad.write_text('preset = "tiny"\n[sae]\nd_sae = -3\n')
    res = runner.invoke(app, ["run", "--config", str(bad), "--out", str(tiny_run), "--force"])
    assert res.exit_code == 2 and "sae.d_sae = -3" in res.output
    assert _snapshot(tiny_run) == before
    bad.write_text("[sae\n")
    res = runner.invoke(app, ["run", "--config", str(bad), "--out", str(tiny_run), "--force"])
    assert res.exit_code == 2 and "not valid TOML" in res.output
    assert _snapshot(tiny_run) == before


def test_resume_finishes_missing_stages(tiny_run: Path, tmp_path: Path) -> None:
    """A run whose later stages were lost (as after Ctrl-C) is finished by --resume without retraining."""
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    pooled_before = metrics.pop("pooling")
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "report.html").unlink()
    weights = (run / "seeds" / "seed_0" / "sae_weights.safetensors").read_bytes()
    res = runner.invoke(app, ["run", "--config", str(_tiny_config(tmp_path)), "--out", str(run), "--resume", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert (run / "seeds" / "seed_0" / "sae_weights.safetensors").read_bytes() == weights
    after = json.loads((run / "metrics.json").read_text())
    assert after["analysis"] == metrics["analysis"]
    assert after["pooling"]["single"] == pooled_before["single"]
    assert (run / "report.html").is_file()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_absent_cuda_with_force_leaves_run_untouched(tiny_run: Path) -> None:
    before = _snapshot(tiny_run)
    res = runner.invoke(app, ["run", "--out", str(tiny_run), "--device", "cuda", "--force"])
    assert res.exit_code == 2 and "CUDA is not available" in res.output
    assert _snapshot(tiny_run) == before


# ----------------------------------------------------------------------------------------------- issue 10: shareable runs


def _copy(run: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(run, dst)
    return dst


def _one_line(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def test_every_file_of_a_run_is_readable_by_others(tiny_run: Path) -> None:
    files = [p for p in tiny_run.rglob("*") if p.is_file()]
    assert any(p.suffix == ".png" for p in files) and any(p.name == "cfg.json" for p in files)
    bad = [str(p.relative_to(tiny_run)) for p in files if p.stat().st_mode & 0o777 != 0o644]
    assert not bad, bad


def test_resume_with_only_the_printed_hint(tiny_run: Path, tmp_path: Path) -> None:
    """`synthsae run --resume --out X` (the hint printed on Ctrl-C) resumes the run with its own config.toml."""
    run = _copy(tiny_run, tmp_path / "copy")
    (run / "report.html").unlink()
    res = runner.invoke(app, ["run", "--resume", "--out", str(run), "--quiet"])
    assert res.exit_code == 0, res.output
    assert (run / "report.html").is_file()
    res = runner.invoke(app, ["run", "--resume", "--out", str(run), "--seeds", "3"])
    assert res.exit_code == 2 and "train.seeds: run has 4, given 3" in _one_line(res)


def test_corrupt_metrics_json_is_one_line_everywhere(tiny_run: Path, tmp_path: Path) -> None:
    run = _copy(tiny_run, tmp_path / "copy")
    (run / "metrics.json").write_text('{"analysis": {')
    (run / "report.html").unlink()
    for args in (["report", str(run)], ["analyze", str(run)], ["run", "--resume", "--out", str(run)],
                 ["ablate", str(run)], ["compare", str(run), str(tiny_run), "--out", str(tmp_path / "cmp")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert "metrics.json: not valid JSON" in _one_line(res), args
    assert (run / "metrics.json").read_text() == '{"analysis": {'  # analyze did not replace it


def test_missing_seed_folders_are_named_and_refused_unless_allowed(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    run = _copy(tiny_run, tmp_path / "copy")
    shutil.rmtree(run / "seeds" / "seed_1")
    before = _snapshot(run)
    for args in (["analyze", str(run)], ["ablate", str(run)], ["pool", str(run)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        line = _one_line(res)
        assert "missing seed_1 of the run's 4 seeds" in line and "--allow-missing-seeds" in line
    assert _snapshot(run) == before
    res = runner.invoke(app, ["analyze", str(run), "--allow-missing-seeds", "--json"])
    assert res.exit_code == 0 and "going on without seed_1" in res.output
    assert json.loads((run / "metrics.json").read_text())["analysis"]["settings"]["seeds"] == 3


def test_one_seed_run_is_refused_by_analyze_and_ablate(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    run = _copy(tiny_run, tmp_path / "copy")
    for k in (1, 2, 3):
        shutil.rmtree(run / "seeds" / f"seed_{k}")
    for cmd in ("analyze", "ablate"):
        res = runner.invoke(app, [cmd, str(run), "--allow-missing-seeds"])
        assert res.exit_code == 2, res.output
        assert f"holds 1 seed; {cmd} compares seeds" in res.output.splitlines()[-1]


def test_out_paths_of_analyze_and_compare_are_checked_first(tiny_run: Path, tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    res = runner.invoke(app, ["analyze", str(tiny_run), "--out", str(tmp_path / "dir")])
    assert res.exit_code == 2 and "is a folder" in _one_line(res)
    res = runner.invoke(app, ["compare", str(tiny_run), str(tiny_run), "--out", str(tmp_path / "file")])
    assert res.exit_code == 2 and "is a file" in _one_line(res)


def test_tau_of_each_stage_is_recorded_and_a_difference_warned(tiny_run: Path, tmp_path: Path) -> None:
    run = _copy(tiny_run, tmp_path / "copy")
    res = runner.invoke(app, ["analyze", str(run), "--tau", "0.5", "--json"])
    assert res.exit_code == 0
    assert "different tau: analysis 0.5, ablation 0.7, pooling 0.7" in res.output
    res = runner.invoke(app, ["report", str(run)])
    assert res.exit_code == 0 and "different tau" in res.output
    assert "different tau: analysis 0.5, ablation 0.7, pooling 0.7" in (run / "report.md").read_text()
    assert "different tau" not in (tiny_run / "report.md").read_text()
