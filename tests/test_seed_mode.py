"""train.seed_mode: what the seeds share (init, data order), validated, honoured by the trainer and recorded in the run."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from synthsae.config import ConfigError, from_dict, preset, validate
from synthsae.metrics.run_analysis import analyze_run
from synthsae.train import train_run


def tiny(mode: str, steps: int = 20, seeds: int = 3):
    cfg = preset("tiny")
    cfg.train.seed_mode, cfg.train.steps, cfg.train.seeds = mode, steps, seeds
    cfg.train.batch_size, cfg.analysis.eval_tokens = 128, 1024
    return cfg


def test_bad_seed_mode_is_one_line_naming_the_allowed_values(tmp_path):
    with pytest.raises(ConfigError, match=r"^train.seed_mode = 'shared': must be one of independent, shared_init, shared_data$"):
        validate(from_dict({"preset": "tiny", "train": {"seed_mode": "shared"}}))
    from cli import app

    conf = tmp_path / "c.toml"
    conf.write_text('preset = "tiny"\n[train]\nseed_mode = "same"\n')
    res = CliRunner().invoke(app, ["train", "--config", str(conf), "--out", str(tmp_path / "r"), "--quiet"])
    assert res.exit_code == 2 and "train.seed_mode" in res.output and "shared_init" in res.output
    assert not (tmp_path / "r").exists()


def test_modes_resolve_to_what_seeds_share():
    t = preset("tiny").train
    assert t.seed_mode == "shared_data" and not t.data_varies() and t.resolved_init_seeds() == list(range(t.seeds))
    t.vary_data = True  # the older spelling of independent
    assert t.resolved_seed_mode() == "independent" and t.data_varies()
    t.vary_data, t.seed_mode = False, "shared_init"
    assert t.data_varies() and t.resolved_init_seeds() == [0] * t.seeds
    t.seed_mode = "independent"
    assert t.data_varies() and t.resolved_init_seeds() == list(range(t.seeds))


def _zero_lr(monkeypatch):
    import synthsae.loop as tr

    monkeypatch.setattr(tr, "lr_at", lambda step, tcfg: 0.0)


def test_shared_init_with_zero_learning_rate_gives_stability_one(tmp_path, monkeypatch):
    _zero_lr(monkeypatch)
    train_run(tiny("shared_init"), tmp_path / "si", progress=False)
    res, per = analyze_run(tmp_path / "si", device="cpu")
    assert res.stability.mean.value == 1.0 and bool((per["stability"] == 1.0).all())
    meta = json.loads((tmp_path / "si" / "seeds" / "seed_2" / "cfg.json").read_text())["metadata"]
    assert meta["seed_mode"] == "shared_init" and meta["init_seed"] == 0 and meta["data_seed"] == 1234 + 2
    summary = json.loads((tmp_path / "si" / "train.json").read_text())
    assert summary["seed_mode"] == "shared_init" and summary["init_seeds"] == [0, 0, 0]
    # the control through the same procedure: own inits, zero learning rate -> the seeds share nothing
    train_run(tiny("independent"), tmp_path / "ind", progress=False)
    assert analyze_run(tmp_path / "ind", device="cpu")[0].stability.mean.value < 0.2


def test_shared_init_seeds_part_with_their_data_and_shared_data_seeds_see_the_same_batches(tmp_path):
    from synthsae.io import load_run

    si = train_run(tiny("shared_init", steps=30), tmp_path / "si", progress=False)
    assert not torch.allclose(si.W_dec[0], si.W_dec[1])  # same start, different batches
    sd = tiny("shared_data", steps=30)
    train_run(sd, tmp_path / "sd", progress=False)
    _, sae, _ = load_run(tmp_path / "sd")
    alone = tiny("shared_data", steps=30, seeds=1)
    alone.train.init_seeds = [1]
    one = train_run(alone, tmp_path / "one", progress=False)  # seed 1 alone on the one shared stream
    torch.testing.assert_close(sae.W_dec[1:2], one.W_dec, rtol=1e-5, atol=1e-6)
    meta = json.loads((tmp_path / "sd" / "seeds" / "seed_1" / "cfg.json").read_text())["metadata"]
    assert meta["seed_mode"] == "shared_data" and meta["data_seed"] == 1234


def test_seed_modes_verdict_fails_when_a_shared_mode_is_what_makes_seeds_stable():
    from synthsae.results import Chance, SeedModeRow, SeedModesResult
    from synthsae.verdicts import seed_modes_verdict

    def row(mode, stab, own=False):
        return SeedModeRow(mode=mode, run_dir=mode, own=own, stability=Chance(stab, 0.0), frac_stable=Chance(stab, 0.0))

    assert seed_modes_verdict(SeedModesResult(own_mode="shared_init", rows=[row("shared_init", 0.9, True),
                                                                         row("independent", 0.5)])).verdict == "did not hold"
    assert seed_modes_verdict(SeedModesResult(own_mode="shared_data", rows=[row("shared_data", 0.52, True),
                                                                         row("independent", 0.5)])).verdict == "held"
    assert seed_modes_verdict(SeedModesResult(own_mode="shared_data", rows=[row("shared_data", 0.52, True), row("independent", 0.5),
                                                                         row("shared_init", 0.9)])).verdict == "held"  # shown, not counted
    assert seed_modes_verdict(SeedModesResult(own_mode="shared_data", rows=[row("shared_data", 0.5, True)])).verdict == "not measured"
    assert seed_modes_verdict(None).verdict == "not measured"


def test_seed_modes_command_trains_the_independent_companion_and_reports_it(tmp_path):
    from cli import app

    run = tmp_path / "run"
    train_run(tiny("shared_data"), run, progress=False)
    res = CliRunner().invoke(app, ["seed-modes", str(run), "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    m = json.loads((run / "metrics.json").read_text())["seed_modes"]
    assert m["own_mode"] == "shared_data" and [r["mode"] for r in m["rows"]] == ["shared_data", "independent"]
    comp = run / "seed_modes" / "independent"
    meta = json.loads((comp / "seeds" / "seed_1" / "cfg.json").read_text())["metadata"]
    assert meta["seed_mode"] == "independent" and meta["data_seed"] == 1234 + 1
    assert "## Stability or stabilization?" in (run / "report.md").read_text()
    before = (comp / "train.json").stat().st_mtime_ns
    assert CliRunner().invoke(app, ["seed-modes", str(run), "--quiet", "--device", "cpu"]).exit_code == 0
    assert (comp / "train.json").stat().st_mtime_ns == before  # reused, not retrained
    bad = CliRunner().invoke(app, ["seed-modes", str(run), "--modes", "independent,same", "--quiet"])
    assert bad.exit_code == 2 and "--modes" in bad.output and "shared_init" in bad.output
