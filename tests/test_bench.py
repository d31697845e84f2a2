"""`synthsae bench`: a plug-in variant on the quick leaderboard, numbers equal to `synthsae analyze`, resume
trains nothing already stored, penalty calibration, bad input."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synthsae.bench import SUITES, _next_coef, calibrate, cell_config, sparsity_knob
from synthsae.config import ConfigError
from synthsae.bench_report import COLUMNS, pareto_front

PLUGIN = textwrap.dedent('''
    """A plug-in variant shipped outside synthsae: ReLU codes, plain L1 penalty read from sae.l1_coeff."""
    from synthsae.sae.base import SAE, batch_scale


    class ToyL1SAE(SAE):
        variant = "toy_l1"
        sparsity_knob = "l1_coeff"

        def forward(self, x, step=0, dead=None):
            acts = self.encode(x)
            x_hat = self.decode(acts)
            pen = self.cfg.l1_coeff * acts.sum(dim=2).mean(dim=1) / batch_scale(x, self.n_seeds)
            return self.output(x, x_hat, acts, aux=pen)
''')


def install_plugin(root: Path) -> None:
    """A module plus a dist-info folder declaring it under the `synthsae.variants` entry-point group."""
    (root / "synthsae_toyplugin.py").write_text(PLUGIN)
    info = root / "synthsae_toyplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: synthsae-toyplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[synthsae.variants]\ntoy_l1 = synthsae_toyplugin:ToyL1SAE\n")


VARIANTS = "toy_l1,topk,blocktopk"
GROUP_COLUMNS = {"group stability", "group null"}  # filled for group variants (blocktopk) only
BUDGET_COLUMNS = {"stable share ± at S-1 seeds", "seeds for ±0.05"}  # need >= 3 seeds: empty for 2-seed wide rows
MAYBE_NONE = {"seeds for ±0.05", "stable: precision"}  # '-' is an answer: no n < S within ±0.05 / no stable latent


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    install_plugin(root)
    sys.path.insert(0, str(root))  # importlib.metadata scans sys.path (here and in spawned workers): the entry point is visible
    yield root
    sys.path.remove(str(root))


@pytest.fixture(scope="module")
def bench(plugin, tmp_path_factory):
    """One quick bench of the plug-in, topk and blocktopk through the CLI, two cells at a time in worker processes
    (shared by the tests below)."""
    from cli import app

    out = tmp_path_factory.mktemp("bench") / "b"
    res = CliRunner().invoke(app, ["bench", "--variants", VARIANTS, "--suite", "quick", "--out", str(out), "--quiet",
                                   "--jobs", "2"])
    assert res.exit_code == 0, res.output
    assert res.output.count(" done] ") == 12  # a progress line per finished cell
    return out


@pytest.fixture(scope="module")
def bench_serial(plugin, tmp_path_factory):
    """The plug-in's cells again, one after another in this process (--jobs 1)."""
    from cli import app

    out = tmp_path_factory.mktemp("bench") / "s"
    res = CliRunner().invoke(app, ["bench", "--variants", "toy_l1", "--suite", "quick", "--out", str(out), "--quiet",
                                   "--jobs", "1"])
    assert res.exit_code == 0, res.output
    return out


def md_rows(md: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines()
            if line.startswith("| ") and not line.startswith("| variant")]


def test_plugin_variant_on_quick_leaderboard_every_column_filled(bench):
    md = (bench / "leaderboard.md").read_text()
    rows = md_rows(md)
    heads = [h for h, _, _ in COLUMNS]
    toy = [r for r in rows if r[0] == "toy_l1" and r[1] == "variant"]
    assert len(toy) == len(SUITES["quick"].presets[0].l0s)  # one row per L0 target
    for r in toy:
        missing = {h for h, v in zip(heads, r) if v in ("-", "")} - MAYBE_NONE
        assert missing == GROUP_COLUMNS, f"empty columns for toy_l1: {missing}"  # not a group variant
    # blocktopk: every column filled, group stability among them; its wide baseline too (it has no pooling)
    block = [r for r in rows if r[0] in ("blocktopk", "blocktopk wide")]
    assert len(block) == 2 * len(toy)
    for r in block:
        missing = {h for h, v in zip(heads, r) if v in ("-", "")} - MAYBE_NONE
        want = set() if r[1] == "variant" else {"pooled stability"} | (BUDGET_COLUMNS - MAYBE_NONE)
        assert missing == want, f"empty columns for {r[0]}: {missing}"
    kinds = {r[1] for r in rows}
    assert {"variant", "baseline: bagging", "baseline: pooled SAE", "baseline: single SAE at bag width"} <= kinds
    assert {r[0] for r in rows if r[1] == "variant"} == {"toy_l1", "topk", "blocktopk"}
    page = (bench / "leaderboard.html").read_text()
    assert "toy_l1" in page and page.count("onclick='sortTable(this)'") == len(heads) * len(toy)
    assert "data:image/png;base64," in page and (bench / "figures" / "pareto.png").stat().st_size > 1000
    # the plug-in is an L1 variant: its penalty was calibrated, and the L0 it reached is reported, near the target
    for l0 in SUITES["quick"].presets[0].l0s:
        cell = json.loads((bench / "cells" / "tiny" / f"l0_{l0:g}" / "toy_l1" / "bench.json").read_text())
        assert cell["calibration"]["knob"] == "l1_coeff" and len(cell["calibration"]["probes"]) >= 1
        assert abs(cell["l0"] / l0 - 1) < 0.3, (l0, cell["l0"], cell["calibration"])
        topk = json.loads((bench / "cells" / "tiny" / f"l0_{l0:g}" / "topk" / "bench.json").read_text())
        assert topk["k"] == round(l0) and abs(topk["l0"] - l0) < 0.05
        # blocktopk is benched with groups of 2 latents: k = L0 / 2 groups (rounded), each decoding 2 latents
        block = json.loads((bench / "cells" / "tiny" / f"l0_{l0:g}" / "blocktopk" / "bench.json").read_text())
        assert block["k"] == round(l0 / 2) and block["n_groups"] == block["d_sae"] // 2
        assert block["l0"] == pytest.approx(2 * block["k"], abs=0.05)
        assert topk.get("group_stability") is None and 0.0 <= block["group_stability"] <= 1.0


def test_leaderboard_numbers_equal_synthsae_analyze(bench):
    from cli import app

    cell = bench / "cells" / "tiny" / "l0_3" / "toy_l1"
    row = json.loads((cell / "bench.json").read_text())
    for match, key in (("maxcos", "stability"), ("strict", "stability_strict")):
        res = CliRunner().invoke(app, ["analyze", str(cell), "--match", match, "--json", "--device", "cpu"])
        assert res.exit_code == 0, res.output
        ana = json.loads(res.output[res.output.index("{"):])
        assert row[key] == pytest.approx(ana["stability"]["mean"]["value"], abs=1e-12)
        assert row[key + "_null"] == pytest.approx(ana["stability"]["mean"]["baseline"], abs=1e-12)
        assert row["per_seed"][key] == pytest.approx(ana["stability"]["per_seed_mean"], abs=1e-12)  # seed by seed
        if match == "maxcos":
            atoms = ana["truth"]["atoms"]["frac_recovered"]
            assert row["atom_recovery"] == pytest.approx(atoms["value"]) and row["atom_recovery_chance"] == pytest.approx(atoms["baseline"])
            geo = {g["geometry"]: g for g in ana["truth"]["by_geometry"]}
            assert row["subspace_recovery_orthogonal"] == pytest.approx(geo["orthogonal"]["mean_recovery"])
            assert row["subspace_recovery_superposed"] == pytest.approx(geo["superposed"]["mean_recovery"])
            assert row["dead_fraction"] == pytest.approx(ana["frequency"]["frac_dead"])
            tf, sb = ana["truth_filter"], ana["seed_budget"]
            assert row["truth_auroc"] == pytest.approx(tf["auroc"]["value"], abs=1e-12)
            assert row["truth_auroc_null"] == pytest.approx(tf["auroc"]["baseline"], abs=1e-12)
            assert row["truth_recall"] == pytest.approx(tf["recall"]["value"], abs=1e-12)
            assert row["seed_budget_within"] == pytest.approx(sb["rows"][-1]["stable_share_within"], abs=1e-12)
            assert row["seed_budget_n"] == sb["smallest_n_within_target"]
    md = (bench / "leaderboard.md").read_text()
    line = next(r for r in md_rows(md.split("## tiny, L0 target 3")[1].split("##")[0]) if r[:2] == ["toy_l1", "variant"])
    heads = [h for h, _, _ in COLUMNS]
    assert line[heads.index("stability maxcos")] == f"{row['stability']:.3f}"
    train = json.loads((cell / "train.json").read_text())["eval"]
    assert line[heads.index("EV")] == f"{1 - sum(train['fvu']) / len(train['fvu']):.3f}"
    seeds = row["per_seed"]
    assert seeds["init_seed"] == list(range(row["seeds"])) and seeds["l0"] == train["l0"]
    for key in ("ev", "l0", "mcc", "dead_fraction"):  # the columns are the means of the per-seed numbers
        assert len(seeds[key]) == row["seeds"] and sum(seeds[key]) / row["seeds"] == pytest.approx(row[key], abs=1e-9)


NOT_NUMBERS = ("seconds", "throughput")  # wall-clock measurements: differ between any two runs


def _numbers(d):
    if isinstance(d, dict):
        return {k: _numbers(v) for k, v in d.items() if not any(t in k for t in NOT_NUMBERS)}
    return [_numbers(v) for v in d] if isinstance(d, list) else d


def test_parallel_and_serial_bench_give_the_same_numbers(bench, bench_serial):
    """--jobs 2 (worker processes) and --jobs 1 (this process): every stored number and every leaderboard cell of
    the plug-in's rows agree exactly, wall-clock columns aside; the wide cells started from the same calibration."""
    cells = sorted(p.relative_to(bench_serial) for p in bench_serial.glob("cells/*/*/*/bench.json"))
    assert len(cells) == 4
    for rel in cells:
        assert _numbers(json.loads((bench / rel).read_text())) == _numbers(json.loads((bench_serial / rel).read_text())), rel
    heads = [h for h, _, _ in COLUMNS]
    keep = [i for i, h in enumerate(heads) if h not in ("tokens x seeds / s", "wall s")]

    def toy_rows(folder):
        return [[r[i] for i in keep] for r in md_rows((folder / "leaderboard.md").read_text()) if r[0].startswith("toy_l1")]

    assert toy_rows(bench) == toy_rows(bench_serial) and len(toy_rows(bench)) == 8


def _killed_copy(bench: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A copy of the quick bench as if killed after topk L0 6 trained but before it was measured, and while
    toy_l1@wide at L0 6 was training: (bench folder, cells folder, the killed cell)."""
    out = tmp_path / "b"
    shutil.copytree(bench, out)
    cells = out / "cells" / "tiny"
    (cells / "l0_6" / "topk" / "bench.json").unlink()
    killed = cells / "l0_6" / "toy_l1@wide"
    for name in ("bench.json", "train.json"):
        (killed / name).unlink()
    shutil.rmtree(killed / "seeds")
    return out, cells, killed


def test_killed_bench_resumes_without_retraining_stored_cells(bench, tmp_path, monkeypatch):
    from cli import app
    import synthsae.train as train_mod

    out, cells, killed = _killed_copy(bench, tmp_path)
    (out / "leaderboard.md").unlink()
    before = {p: p.read_bytes() for p in cells.glob("*/*/train.json")}
    calls = []
    real = train_mod.train_run

    def counting(cfg, folder, **kw):
        calls.append(Path(folder))
        return real(cfg, folder, **kw)

    monkeypatch.setattr(train_mod, "train_run", counting)
    res = CliRunner().invoke(app, ["bench", "--variants", VARIANTS, "--suite", "quick", "--out", str(out),
                                   "--resume", "--quiet", "--jobs", "1"])
    assert res.exit_code == 0, res.output
    assert calls == [killed], calls  # its calibration probes were stored: only the killed training reruns
    for p, data in before.items():
        assert p.read_bytes() == data, p
    assert (out / "leaderboard.md").is_file() and (cells / "l0_6" / "topk" / "bench.json").is_file()
    # a second resume trains nothing at all
    calls.clear()
    res = CliRunner().invoke(app, ["bench", "--variants", "topk", "--suite", "quick", "--out", str(out), "--resume",
                                   "--quiet", "--jobs", "1"])
    assert res.exit_code == 0 and calls == []
    assert "toy_l1" in (out / "leaderboard.md").read_text()  # every stored cell stays on the board


def test_killed_parallel_bench_resumes_in_workers(bench, tmp_path):
    """The same kill, resumed with --jobs 2: only the killed cells are redone (stored training files and
    calibration probes are byte for byte unchanged), and the resumed cells' numbers equal the uninterrupted run's."""
    from cli import app

    out, cells, killed = _killed_copy(bench, tmp_path)
    keep = {p: p.read_bytes() for p in [*cells.glob("*/*/train.json"), *cells.glob("*/*/calibration/*/train.json")]}
    res = CliRunner().invoke(app, ["bench", "--variants", VARIANTS, "--suite", "quick", "--out", str(out), "--resume",
                                   "--quiet", "--jobs", "2"])
    assert res.exit_code == 0, res.output
    assert res.output.count(" done] ") == 2 and "trained 1 cell(s)" in res.output
    for p, data in keep.items():
        assert p.read_bytes() == data, p
    for rel in ("l0_6/topk/bench.json", "l0_6/toy_l1@wide/bench.json"):
        assert _numbers(json.loads((cells / rel).read_text())) == _numbers(json.loads((bench / "cells" / "tiny" / rel).read_text()))


@pytest.mark.parametrize("args, field", [
    (["--suite", "huge"], "--suite"),
    (["--variants", "nope"], "--variants"),
    (["--variants", ","], "--variants"),
    (["--jobs", "0"], "--jobs"),
    (["--seed-mode", "same"], "--seed-mode"),
])
def test_bad_bench_flags_exit_2_with_one_line(tmp_path, args, field):
    from cli import app

    res = CliRunner().invoke(app, ["bench", "--out", str(tmp_path / "b"), *args])
    assert res.exit_code == 2 and field in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_existing_bench_not_touched_without_resume(bench):
    from cli import app

    before = (bench / "leaderboard.md").read_bytes()
    res = CliRunner().invoke(app, ["bench", "--variants", "topk", "--suite", "quick", "--out", str(bench)])
    assert res.exit_code == 2 and "--resume" in res.output
    assert (bench / "leaderboard.md").read_bytes() == before
    res = CliRunner().invoke(app, ["bench", "--variants", "topk", "--suite", "standard", "--out", str(bench), "--resume"])
    assert res.exit_code == 2 and "suite" in res.output
    assert (bench / "leaderboard.md").read_bytes() == before


# ----------------------------------------------------------------------------------------------- calibration


def fake_train(l0_of_coef):
    """A stand-in for train_run that writes the train.json a run with that penalty would (no training)."""

    def train(cfg, folder, **kw):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        l0 = l0_of_coef(cfg.sae.l1_coeff)
        (folder / "train.json").write_text(json.dumps({"eval": {"l0": [l0]}, "seconds": 0.0}))

    return train


def test_calibration_hits_the_target_l0(tmp_path):
    suite = SUITES["quick"]
    spec = suite.presets[0]
    cfg = cell_config(suite, spec, "relu", 3.0)
    rec = calibrate(cfg, 3.0, "l1_coeff", tmp_path, suite, progress=False,
                    train=fake_train(lambda c: 12.0 * (0.3 / c) ** 2.5))
    assert abs(rec["probe_l0"] / 3.0 - 1) <= suite.l0_tolerance
    assert cfg.sae.l1_coeff == rec["chosen"]
    # resumable: a second call reads the stored probes and trains nothing
    rec2 = calibrate(cell_config(suite, spec, "relu", 3.0), 3.0, "l1_coeff", tmp_path, suite, progress=False,
                     train=lambda *a, **k: pytest.fail("retrained a stored probe"))
    assert rec2["chosen"] == rec["chosen"]


def test_calibration_that_cannot_reach_the_target_says_so(tmp_path):
    """A variant whose L0 ignores the penalty: calibration stops at max_probes and reports the L0 it got."""
    suite = SUITES["quick"]
    cfg = cell_config(suite, suite.presets[0], "relu", 3.0)
    rec = calibrate(cfg, 3.0, "l1_coeff", tmp_path, suite, progress=False, train=fake_train(lambda c: 10.0))
    assert len(rec["probes"]) == suite.max_probes and rec["probe_l0"] == 10.0


def test_next_coef_stays_inside_a_bracket():
    probes = [{"coef": 0.3, "l0": 12.0}, {"coef": 1.2, "l0": 0.5}]
    c = _next_coef(probes, 3.0, 0.3)
    assert 0.3 < c < 1.2
    assert _next_coef([{"coef": 0.3, "l0": 12.0}], 3.0, 0.3) == pytest.approx(1.2)  # L0 ~ 1/penalty first guess


def test_sparsity_knobs_of_shipped_variants():
    assert {v: sparsity_knob(v) for v in ("topk", "batchtopk", "matryoshka", "relu", "gated", "jumprelu")} == {
        "topk": "k", "batchtopk": "k", "matryoshka": "k", "relu": "l1_coeff", "gated": "l1_coeff", "jumprelu": "l0_coeff"}


def test_pareto_front():
    pts = [(0.5, 0.5), (0.6, 0.4), (0.4, 0.6), (0.45, 0.45), (0.6, 0.3)]
    assert pareto_front(pts) == [2, 0, 1]  # (0.45, 0.45) and (0.6, 0.3) are dominated


def test_seed_mode_reaches_every_cell_and_a_bench_keeps_its_mode(tmp_path):
    from dataclasses import asdict

    from synthsae.bench import cell_config, check_out, get_suite

    suite = get_suite("quick", "shared_init")
    spec = suite.presets[0]
    for wide in (False, True):
        t = cell_config(suite, spec, "topk", spec.l0s[0], wide).train
        assert t.seed_mode == "shared_init" and len(set(t.resolved_init_seeds())) == 1 and t.data_varies()
    assert cell_config(get_suite("quick"), spec, "topk", spec.l0s[0]).train.seed_mode == "shared_data"
    out = tmp_path / "b"
    out.mkdir()
    old = {k: v for k, v in asdict(get_suite("quick")).items() if k != "seed_mode"}  # a bench from before seed modes
    (out / "suite.json").write_text(json.dumps({"name": "quick", "suite": old}))
    check_out(out, get_suite("quick"), resume=True)
    with pytest.raises(ConfigError, match="--suite"):
        check_out(out, suite, resume=True)


def test_matched_compute_adds_the_long_baseline(tmp_path, monkeypatch):
    """--matched-compute: one SAE at the base width trained S/2 x the steps (2 seeds), beside the wide one, as a
    baseline row with EV, stability and truth recovery."""
    import dataclasses

    import synthsae.bench as B
    from synthsae.bench import run_bench
    from synthsae.config import load

    small = dataclasses.replace(SUITES["quick"], presets=(B.PresetSpec("tiny", "tiny", (4.0,)),), steps=100,
                                eval_tokens=2048, pool_refit_steps=20)
    monkeypatch.setitem(B.SUITES, "quick", small)
    res = run_bench(["topk"], "quick", tmp_path / "b", progress=False, jobs=1, matched_compute=True, pool=False)
    cells = tmp_path / "b" / "cells" / "tiny" / "l0_4"
    base, long = load(cells / "topk" / "config.toml"), load(cells / "topk@long" / "config.toml")
    assert long.train.steps == 2 * base.train.steps and long.sae.d_sae == base.sae.d_sae and long.train.seeds == 2
    assert load(cells / "topk@wide" / "config.toml").sae.d_sae == 2 * base.sae.d_sae
    assert len(res.rows) == 3 and sum(bool(r.get("long")) for r in res.rows) == 1
    heads = [h for h, _, _ in COLUMNS]
    row = next(r for r in md_rows((tmp_path / "b" / "leaderboard.md").read_text()) if r[0] == "topk long")
    assert row[1] == "baseline: single SAE, a half's compute in steps"
    for h in ("EV", "atom MCC", "stability maxcos", "maxcos null", "stability AUROC for true latents"):
        assert row[heads.index(h)] not in ("-", ""), h
    assert json.loads((tmp_path / "b" / "suite.json").read_text())["suite"]["long_factor"] == 2
