"""`synthsae sweep`: the quick grid through the CLI (the map equals each cell's own verdicts), resume after a kill,
adding an axis value, bad grid fields, the trend rule on planted trends, and real cells sharing activations."""

from __future__ import annotations

import hashlib
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli import app
from synthsae.sweep.trends import TrendPoint, trend_rule

runner = CliRunner()
QUICK_TOML = """name = "quick"
kind = "synthetic"
base = "tiny"
[axes]
width = {widths}
variant = ["topk", "batchtopk"]
seeds = [4]
[settings]
steps = 150
batch_size = 256
eval_tokens = 4096
pool_refit_steps = 20
"""


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "quick"
    res = runner.invoke(app, ["sweep", "--preset", "quick", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    return out


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class _Cells(HTMLParser):
    """(href of the cell link, verdict) of every map cell in sweep.html."""

    def __init__(self):
        super().__init__()
        self.cells, self._in = [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "td" and a.get("class") == "v":
            self._in = a["data-verdict"]
        elif tag == "a" and self._in is not None:
            self.cells.append((a["href"], self._in))
            self._in = None


def test_map_equals_each_cells_own_verdicts(quick: Path) -> None:
    import synthsae.report  # noqa: F401  (registers the shared claims)
    from synthsae.claims import ANALYSIS_CLAIMS, claim_verdicts
    from synthsae.metrics_file import read_metrics

    res = json.loads((quick / "sweep.json").read_text())
    assert len(res["cells"]) == 4 and all(c["finished"] for c in res["cells"])
    html_cells = _Cells()
    html_cells.feed((quick / "sweep.html").read_text())
    seen = 0
    for cell in res["cells"]:
        m = read_metrics(quick / cell["folder"] / "metrics.json")
        own = {v.title: v.verdict for v in claim_verdicts(m, ANALYSIS_CLAIMS).values()}
        mapped = {c["claim"]: c["verdict"] for c in cell["claims"]}
        assert mapped == own, cell["id"]
        links = [v for href, v in html_cells.cells if href == f"{cell['folder']}/report.html"]
        assert links == [own[t] for t in res["claims"]], cell["id"]  # the html map, row by row, for this column
        assert (quick / cell["folder"] / "report.html").is_file()
        seen += len(links)
    assert seen == len(res["claims"]) * 4
    assert "src='data:image/png;base64," in (quick / "sweep.html").read_text()  # figures inlined: self-contained


def test_sweep_json_fits_its_generated_schema(quick: Path) -> None:
    import jsonschema

    from synthsae.sweep.render import sweep_schema

    shipped = json.loads((Path(__file__).resolve().parents[1] / "synthsae" / "schemas" / "sweep.schema.json").read_text())
    assert shipped == json.loads(json.dumps(sweep_schema())), "shipped schema is stale: regenerate it"
    raw = json.loads((quick / "sweep.json").read_text())
    jsonschema.validate(raw, shipped)
    from synthsae.serialize import from_json, to_json
    from synthsae.sweep.render import SweepResult

    assert to_json(from_json(SweepResult, raw)) == raw  # typed: the file rebuilds into the dataclasses and back


def test_trends_come_from_the_cells_numbers(quick: Path) -> None:
    from synthsae.sweep.numbers import cell_numbers

    res = json.loads((quick / "sweep.json").read_text())
    widths = [t for t in res["trends"] if t["axis"] == "width"]
    assert {t["claim"] for t in widths} >= {"stability", "frequency", "clusters", "pooling"}
    for t in widths:
        assert [p["x"] for p in t["points"]] == [1.0, 2.0]
        for p in t["points"]:
            n = cell_numbers(quick / "cells" / p["cell"])[t["claim"]]
            assert (p["value"], p["null"], p["spread"]) == (n.value, n.null, n.spread)
        got = trend_rule([TrendPoint(p["x"], p["value"], p["null"], p["spread"]) for p in t["points"]])
        assert (t["verdict"], t["why"]) == got


class _Counter:
    """A stand-in adapter: records the cells it is asked to train and fills their folders from a finished cell."""

    def __init__(self, source: Path):
        self.calls, self.source = [], source

    def __call__(self, cc, folder: Path, **_):
        self.calls.append(folder.name)
        src = self.source / folder.name
        if not src.is_dir():
            src = next(p for p in sorted(self.source.iterdir()) if p.is_dir())
        shutil.copytree(src, folder, dirs_exist_ok=True)


def test_killed_sweep_resumes_only_missing_cells(quick: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "q"
    shutil.copytree(quick, out)
    cells = sorted(p.name for p in (out / "cells").iterdir())
    shutil.rmtree(out / "cells" / cells[0])  # never started
    (out / "cells" / cells[1] / "report.html").unlink()  # killed before its report
    counter = _Counter(quick / "cells")
    monkeypatch.setattr("synthsae.sweep.run.run_cell", counter)
    res = runner.invoke(app, ["sweep", "--preset", "quick", "--out", str(out), "--resume", "--quiet", "--jobs", "1"])
    assert res.exit_code == 0, res.output
    assert sorted(counter.calls) == sorted(cells[:2])
    res = runner.invoke(app, ["sweep", "--preset", "quick", "--out", str(out), "--resume", "--quiet", "--jobs", "1"])
    assert res.exit_code == 0 and len(counter.calls) == 2  # nothing left to train


def test_adding_an_axis_value_trains_only_the_new_cells(quick: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "q"
    shutil.copytree(quick, out)
    grid = tmp_path / "grid.toml"
    grid.write_text(QUICK_TOML.format(widths="[1, 2, 3]"))
    counter = _Counter(quick / "cells")
    monkeypatch.setattr("synthsae.sweep.run.run_cell", counter)
    res = runner.invoke(app, ["sweep", str(grid), "--out", str(out), "--resume", "--quiet", "--jobs", "1"])
    assert res.exit_code == 0, res.output
    assert sorted(counter.calls) == ["width-3x_variant-batchtopk_seeds-4", "width-3x_variant-topk_seeds-4"]
    assert len(json.loads((out / "sweep.json").read_text())["cells"]) == 6


def test_a_started_sweep_is_refused_without_resume_and_with_other_settings(quick: Path, tmp_path: Path) -> None:
    out = tmp_path / "q"
    shutil.copytree(quick, out)
    before = _snapshot(out)
    res = runner.invoke(app, ["sweep", "--preset", "quick", "--out", str(out)])
    assert res.exit_code == 2 and "--resume" in res.output
    grid = tmp_path / "grid.toml"
    grid.write_text(QUICK_TOML.format(widths="[1, 2]").replace("steps = 150", "steps = 151"))
    res = runner.invoke(app, ["sweep", str(grid), "--out", str(out), "--resume"])
    assert res.exit_code == 2 and "settings" in res.output
    assert _snapshot(out) == before


@pytest.mark.parametrize("edit, field", [
    (lambda t: t.replace('kind = "synthetic"', 'kind = "nope"'), "kind"),
    (lambda t: t.replace('base = "tiny"', 'base = "huge"'), "base"),
    (lambda t: t.replace('"batchtopk"]', '"nope"]'), "axes.variant"),
    (lambda t: t.replace("seeds = [4]", "seeds = [1]"), "axes.seeds"),
    (lambda t: t.replace("seeds = [4]", "seeds = [4]\ncolour = [1]"), "axes.colour"),
    (lambda t: t.replace("seeds = [4]", "seeds = [4]\nd_sae = [64]"), "axes.d_sae"),
    (lambda t: t.replace("width = [1, 2]", "width = []"), "axes.width"),
    (lambda t: t.replace("width = [1, 2]", "width = [1, 1]"), "axes.width"),
    (lambda t: t.replace("steps = 150", "steps = 0"), "settings.steps"),
    (lambda t: t.replace("steps = 150", "steps = 150\nlayers = 3"), "settings.layers"),
    (lambda t: t.replace("width = [1, 2]", "width = [0.05]"), "sae.k"),  # 2 latents < k = 4: the cell's own check
    (lambda t: "colour = 1\n" + t, "colour"),
])
def test_bad_grid_field_is_one_line_exit_2_nothing_written(tmp_path: Path, edit, field) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text(edit(QUICK_TOML.format(widths="[1, 2]")))
    out = tmp_path / "out"
    res = runner.invoke(app, ["sweep", str(grid), "--out", str(out)])
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert "\n" not in line and field in line, line
    assert not out.exists()


def test_unknown_preset_and_missing_grid(tmp_path: Path) -> None:
    res = runner.invoke(app, ["sweep", "--preset", "huge", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "quick" in res.output and "real-cpu" in res.output
    res = runner.invoke(app, ["sweep", str(tmp_path / "none.toml"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no such file" in res.output
    assert not (tmp_path / "o").exists()


def test_presets_expand_as_documented() -> None:
    from synthsae.sweep import cells, grid_preset
    from synthsae.sweep.configs import cell_config

    g = grid_preset("real-cpu")
    cs = cells(g)
    widths = {c.values["width"] for c in cs if c.values["layer"] == 6}
    layers = {c.values["layer"] for c in cs if c.values["width"] == 1}
    assert max(cell_config(g, c).cfg.sae.d_sae for c in cs) >= 8 * 576 and len(layers) >= 3 and widths == {1, 2, 4, 8}
    assert all(cell_config(g, c).cfg.train.seeds == 4 for c in cs)
    s = grid_preset("synthetic")
    assert {c.values["variant"] for c in cells(s)} == {"topk", "batchtopk", "jumprelu", "relu", "gated", "matryoshka"}
    assert sorted({cell_config(s, c).cfg.sae.d_sae for c in cells(s)}) == [81, 162, 324, 648]  # 0.5x..4x of 162


def test_real_gpu_disk_estimate_fits_and_a_too_big_grid_is_refused(tmp_path: Path, monkeypatch) -> None:
    from synthsae.memory import MemoryLimitError
    from synthsae.sweep import cells, grid_preset
    from synthsae.sweep.configs import cell_config
    from synthsae.sweep.estimate import check_sweep_fits, sweep_disk_bytes

    g = grid_preset("real-gpu")
    ccs = [cell_config(g, c) for c in cells(g)]
    need = sweep_disk_bytes(g, ccs)
    assert 20e9 < need < 60e9  # under the H200 machine's 64 GB disk
    monkeypatch.setattr("shutil.disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 10**9, 10**9))
    with pytest.raises(MemoryLimitError, match="GB of disk"):
        check_sweep_fits(g, tmp_path / "out", ccs)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- trend rule


def _pts(values, nulls=None, spread=0.02):
    nulls = nulls or [0.0] * len(values)
    return [TrendPoint(x, v, n, spread) for x, v, n in zip([0.5, 1, 2, 4], values, nulls)]


@pytest.mark.parametrize("values, nulls, want", [
    ([0.3, 0.3, 0.3, 0.3], None, "did not hold"),  # flat
    ([0.5, 0.4, 0.3, 0.2], None, "did not hold"),  # falling
    ([0.30, 0.31, 0.30, 0.315], None, "did not hold"),  # a rise within the seeds' spread
    ([0.1, 0.2, 0.4, 0.6], [0.1, 0.2, 0.4, 0.6], "did not hold"),  # the null rises as much: geometry alone
    ([0.2, 0.1, 0.1, 0.2], None, "did not hold"),  # ends equal, a dip between
    ([0.1, 0.2, 0.35, 0.5], None, "held"),  # a clear rise
])
def test_trend_rule_on_planted_trends(values, nulls, want) -> None:
    assert trend_rule(_pts(values, nulls))[0] == want


def test_trend_rule_needs_two_points_and_a_spread() -> None:
    assert trend_rule(_pts([0.1]))[0] == "not measured"
    assert trend_rule([TrendPoint(1, 0.1, 0, None), TrendPoint(2, 0.9, 0, 0.01)])[0] == "not measured"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1, 1), min_size=2, max_size=5), st.floats(0, 0.5), st.floats(-1, 1))
def test_trend_rule_holds_exactly_when_the_rise_beats_the_spread(values, spread, shift) -> None:
    pts = [TrendPoint(i, v, 0.0, spread) for i, v in enumerate(values)]
    verdict = trend_rule(pts)[0]
    assert verdict == ("held" if values[-1] - values[0] > spread else "did not hold")
    shifted = [TrendPoint(p.x, p.value + shift, p.null + shift, p.spread) for p in pts]  # value and null move together
    assert trend_rule(shifted)[0] == verdict or abs(values[-1] - values[0] - spread) < 1e-9


# ----------------------------------------------------------------------------------------------- real cells


def test_real_cells_share_one_collection_per_layer(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from real_helpers import build_tiny_llama

    from synthsae.sweep import cells
    from synthsae.sweep.configs import cell_config
    from synthsae.sweep.grid import from_dict
    from synthsae.sweep.run import acts_folder, cell_folder, share_activations

    model = build_tiny_llama(tmp_path / "tiny")
    g = from_dict({"kind": "real", "base": "quick",
                   "axes": {"model": [str(model)], "layer": [0, 1], "width": [2], "k": [2, 4], "seeds": [2]},
                   "settings": {"tokens": 600, "eval_tokens": 200, "ctx_len": 16, "device": "cpu"}})
    out = tmp_path / "sweep"
    cs = cells(g)
    assert len(cs) == 4 and all(cell_config(g, c).cfg.sae.d_sae == 64 for c in cs)  # 2 x d_model 32 from config.json
    for c in cs:
        share_activations(out, cell_config(g, c), cell_folder(out, c), progress=False, log=lambda m: None)
    stores = sorted(p.name for p in (out / "acts").iterdir())
    assert len(stores) == 2  # one per layer, not one per cell
    for c in cs:
        link = cell_folder(out, c) / "acts"
        assert link.is_symlink() and link.resolve() == acts_folder(out, cell_config(g, c).cfg).resolve()
        assert json.loads((link / "meta.json").read_text())["layer"] == c.values["layer"]
    before = _snapshot(out / "acts")
    from real.activations import collect

    c0 = cs[0]
    collect(cell_config(g, c0).cfg.collect, cell_folder(out, c0) / "acts", progress=False)  # what run_real does first
    assert _snapshot(out / "acts") == before  # found complete through the link: nothing collected again


def test_real_sweep_through_the_cli_shares_activations_and_maps_each_cells_verdicts(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from real_helpers import build_tiny_llama, corpus_file

    from real.report import real_verdicts

    model, corpus = build_tiny_llama(tmp_path / "tiny"), corpus_file(tmp_path)
    grid = tmp_path / "grid.toml"
    grid.write_text(f'kind = "real"\nbase = "quick"\n[axes]\nmodel = ["{model}"]\nlayer = [1]\nd_sae = [64]\nk = [2, 4]\n'
                    f'seeds = [3]\n[settings]\ntokens = 3000\npasses = 2\ncorpus = ["{corpus}"]\ndevice = "cpu"\n')
    out = tmp_path / "out"
    res = runner.invoke(app, ["sweep", str(grid), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert len(list((out / "acts").iterdir())) == 1 and res.output.count("collecting activations for") == 1
    sw = json.loads((out / "sweep.json").read_text())
    assert len(sw["cells"]) == 2
    for cell in sw["cells"]:
        own = {v.title: v.verdict for v in real_verdicts(out / cell["folder"])}
        assert {c["claim"]: c["verdict"] for c in cell["claims"]} == own
        assert "Unstable latents fire on surface-form triggers" in own  # the real-only claims are in the map


def test_torchrun_ranks_split_the_cells_and_each_cell_runs_as_one_process(quick: Path, tmp_path: Path, monkeypatch) -> None:
    import os

    from synthsae.sweep import grid_preset, run_sweep

    seen_env = []

    def adapter(cc, folder, **_):
        seen_env.append((folder.name, os.environ.get("RANK"), os.environ.get("WORLD_SIZE")))

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "q"
    run_sweep(grid_preset("quick"), out, adapter=adapter, progress=False, log=lambda m: None)
    names = [c.name for c in sorted((quick / "cells").iterdir())]
    from synthsae.sweep.grid import cells

    order = [c.id for c in cells(grid_preset("quick"))]
    assert [n for n, _, _ in seen_env] == order[1::2] and sorted(order) == names
    assert all(r is None and w is None for _, r, w in seen_env)  # torchrun's variables hidden inside a cell
    assert os.environ["RANK"] == "1" and not (out / "sweep.json").exists()  # restored; only rank 0 writes the summary


def test_jobs_run_the_library_adapter_only(tmp_path: Path) -> None:
    from synthsae.config import ConfigError
    from synthsae.sweep import grid_preset, run_sweep

    with pytest.raises(ConfigError, match="jobs"):
        run_sweep(grid_preset("quick"), tmp_path / "q", jobs=2, adapter=lambda *a, **k: None, log=lambda m: None)
    assert not (tmp_path / "q").exists()


def test_penalty_cells_are_calibrated_with_the_grids_probe_settings(tmp_path: Path, monkeypatch) -> None:
    from synthsae.sweep import cells
    from synthsae.sweep.configs import cell_config
    from synthsae.sweep.grid import from_dict
    from synthsae.sweep.run import run_cell

    g = from_dict({"kind": "synthetic", "base": "tiny", "axes": {"l0": [5], "variant": ["relu", "topk"], "seeds": [2]},
                   "settings": {"max_probes": 2, "l0_tolerance": 0.3}})
    relu, topk = (cell_config(g, c) for c in cells(g))
    assert (relu.l0_target, relu.max_probes, relu.l0_tolerance) == (5.0, 2, 0.3)
    assert topk.l0_target is None and topk.cfg.sae.k == 5  # TopK: L0 is k, nothing to calibrate
    seen = {}

    def fake_calibrate(cfg, target, knob, folder, suite, **_):
        seen.update(target=target, knob=knob, probes=suite.max_probes, tol=suite.l0_tolerance)

    monkeypatch.setattr("synthsae.bench.calibrate", fake_calibrate)
    monkeypatch.setattr("synthsae.study.run_study", lambda *a, **k: None)
    run_cell(relu, tmp_path / "cell", progress=False)
    assert seen == {"target": 5.0, "knob": "l1_coeff", "probes": 2, "tol": 0.3}


def test_auto_jobs_one_per_core_on_cpu_one_on_gpu_and_longest_cell_first(monkeypatch) -> None:
    from synthsae.sweep import cells, grid_preset
    from synthsae.sweep.configs import cell_config
    from synthsae.sweep.run import auto_jobs, cell_cost

    g = grid_preset("real-cpu")
    ccs = [cell_config(g, c) for c in cells(g)]
    monkeypatch.setattr("synthsae.threads.cpu_cores", lambda: 2)
    assert auto_jobs(ccs) == 2 and auto_jobs(ccs[:1]) == 1
    monkeypatch.setattr("synthsae.threads.cpu_cores", lambda: 64)
    assert auto_jobs(ccs) == len(ccs)
    ccs[0].cfg.train.device = "cuda"
    monkeypatch.setattr("synthsae.device.pick_device", lambda d: d if d != "auto" else "cpu")
    assert auto_jobs(ccs) == 1
    widest = max(ccs, key=cell_cost)
    assert widest.cfg.sae.d_sae == 8 * 576
