"""The trainer: every variant learns, resume is bit-identical, runs are protected, NaN stops cleanly, CLI + plug-ins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from synthsae.config import SAEConfig, TrainConfig, preset
from synthsae.io import load_run
from synthsae.sae import build_sae, register_variant
from synthsae.sae.base import SAE, SAEOutput, batch_scale
from synthsae.device import pick_device
from synthsae.train import train_run
from synthsae.loop import TrainingDiverged, lr_at, train_steps
from synthsae.checkpoint import checkpoint_step, seed_checkpoint
from synthsae.truth import build_truth, make_generator, sample

from conftest import SHIPPED


@register_variant("toy_abs")
class ToyAbsSAE(SAE):
    """A plug-in defined outside the package: ReLU codes with a plain (unweighted) L1 penalty."""

    def forward(self, x, step: int = 0, dead=None) -> SAEOutput:
        acts = self.encode(x)
        x_hat = self.decode(acts)
        return self.output(x, x_hat, acts, aux=0.05 * acts.sum(dim=2).mean(dim=1) / batch_scale(x, self.n_seeds))


def tiny_cfg(variant: str, steps: int = 300, seeds: int = 1):
    cfg = preset("tiny")
    cfg.sae.variant = variant
    cfg.train.steps = steps
    cfg.train.seeds = seeds
    cfg.analysis.eval_tokens = 2048
    return cfg


@pytest.mark.parametrize("variant", SHIPPED)
def test_every_variant_learns_on_tiny(variant):
    cfg = tiny_cfg(variant)
    truth = build_truth(cfg.truth)
    gen = make_generator(0)
    batches = (sample(truth, cfg.train.batch_size, gen, details=False).x for _ in range(cfg.train.steps))
    sae = build_sae(cfg.sae, cfg.truth.d, [0])
    x = sample(truth, 2048, make_generator(77), details=False).x
    with torch.no_grad():
        before = float(((x - sae.decode(sae.encode(x))[0]).pow(2).sum() / (x - x.mean(0)).pow(2).sum()))
    stats = train_steps(sae, batches, cfg.train.steps, cfg.train, progress=False)
    with torch.no_grad():
        acts = sae.encode(x)
        fvu = float(((x - sae.decode(acts)[0]).pow(2).sum() / (x - x.mean(0)).pow(2).sum()))
        l0 = float((acts > 0).sum(dim=2).float().mean())
    assert fvu < 0.5 and fvu < 0.6 * before, (variant, before, fvu)
    assert l0 < 0.5 * cfg.sae.d_sae, (variant, l0)
    assert stats.steps == cfg.train.steps and len(stats.fvu) == 1


def test_lr_schedule_warms_up_and_decays():
    t = TrainConfig(steps=100, lr=1.0, warmup_steps=10, decay_start=0.8)
    lrs = [lr_at(s, t) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[50] == 1.0
    assert lrs[80] == pytest.approx(1.0) and lrs[99] == pytest.approx(0.05) and all(a >= b for a, b in zip(lrs[80:], lrs[81:]))


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("variant", ["topk", "batchtopk", "jumprelu"])
def test_resume_after_interruption_is_bit_identical(tmp_path, variant):
    cfg = tiny_cfg(variant, steps=40, seeds=2)
    cfg.train.checkpoint_every = 15
    cfg.train.dead_window_tokens = 256 * 3  # so AuxK and dead tracking are part of the resumed state
    full = train_run(cfg, tmp_path / "full", progress=False)
    part = train_run(cfg, tmp_path / "part", progress=False, stop_after=22)
    assert checkpoint_step(tmp_path / "part") == 22 and not (tmp_path / "part" / "train.json").exists()
    assert sorted(p.name for p in (tmp_path / "part" / "checkpoint").iterdir()) == ["latest.json", "step_22"]
    resumed = train_run(cfg, tmp_path / "part", resume=True, progress=False)
    assert part is not resumed
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    a = json.loads((tmp_path / "full" / "train.json").read_text())
    b = json.loads((tmp_path / "part" / "train.json").read_text())
    assert a["history"] == b["history"] and a["eval"] == b["eval"]


def test_finished_run_is_not_overwritten_without_force(tmp_path):
    cfg = tiny_cfg("topk", steps=5, seeds=1)
    train_run(cfg, tmp_path / "r", progress=False)
    with pytest.raises(FileExistsError, match="--force"):
        train_run(cfg, tmp_path / "r", progress=False)
    with pytest.raises(FileExistsError, match="--force"):
        train_run(cfg, tmp_path / "r", resume=True, progress=False)
    train_run(cfg, tmp_path / "r", force=True, progress=False)
    train_run(cfg, tmp_path / "u", progress=False, stop_after=2)
    with pytest.raises(FileExistsError, match="--resume"):
        train_run(cfg, tmp_path / "u", progress=False)


def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from synthsae import train as T

    cfg = tiny_cfg("topk", steps=40, seeds=2)
    cfg.train.checkpoint_every = 10
    real_next = T.DataStream.__next__
    calls = {"n": 0}

    def poisoned(self):
        calls["n"] += 1
        x = real_next(self)
        return x * float("nan") if calls["n"] > 25 else x

    monkeypatch.setattr(T.DataStream, "__next__", poisoned)
    with pytest.raises(TrainingDiverged, match="step 25") as err:
        train_run(cfg, tmp_path / "r", progress=False)
    assert "\n" not in str(err.value)
    assert checkpoint_step(tmp_path / "r") == 20
    for k in range(2):
        blob = torch.load(seed_checkpoint(tmp_path / "r", 20, k), weights_only=True)
        assert blob["step"] == 20 and all(torch.isfinite(v).all() for v in blob["model"].values())


def test_freeze_decoder_refits_encoder_only():
    cfg = tiny_cfg("topk", steps=20, seeds=2)
    truth = build_truth(cfg.truth)
    gen = make_generator(1)
    sae = build_sae(cfg.sae, cfg.truth.d, [0, 1])
    W_dec = sae.W_dec.detach().clone()
    W_enc = sae.W_enc.detach().clone()
    batches = (sample(truth, 128, gen, details=False).x for _ in range(20))
    train_steps(sae, batches, 20, cfg.train, freeze_decoder=True, progress=False)
    assert torch.equal(sae.W_dec, W_dec) and not torch.equal(sae.W_enc, W_enc)
    assert sae.W_dec.requires_grad


def test_vary_data_gives_each_seed_its_own_stream(tmp_path):
    cfg = tiny_cfg("topk", steps=15, seeds=2)
    cfg.train.vary_data = True
    both = train_run(cfg, tmp_path / "both", progress=False)
    one = tiny_cfg("topk", steps=15, seeds=1)
    one.train.init_seeds = [1]
    one.train.data_seed = cfg.train.data_seed + 1
    alone = train_run(one, tmp_path / "alone", progress=False)
    torch.testing.assert_close(both.W_dec[1:], alone.W_dec, rtol=1e-5, atol=1e-6)
    meta = json.loads((tmp_path / "both" / "seeds" / "seed_1" / "cfg.json").read_text())["metadata"]
    assert meta["init_seed"] == 1 and meta["data_seed"] == cfg.train.data_seed + 1 and meta["vary_data"] is True


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_trains_a_plugin_variant(tmp_path):
    from cli import app

    out = tmp_path / "toy"
    res = CliRunner().invoke(app, ["train", "--preset", "tiny", "--variant", "toy_abs", "--seeds", "2", "--d-sae", "48",
                                   "--steps", "60", "--batch-size", "128", "--lr", "0.01", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    cfg, sae, _ = load_run(out)
    assert isinstance(sae, ToyAbsSAE) and sae.n_seeds == 2 and cfg.sae.d_sae == 48
    summary = json.loads((out / "train.json").read_text())
    assert max(summary["eval"]["fvu"]) < 0.9
    res = CliRunner().invoke(app, ["train", "--preset", "tiny", "--variant", "toy_abs", "--steps", "60", "--out", str(out)])
    assert res.exit_code == 2 and "--force" in res.output


def test_cli_train_from_config_file(tmp_path):
    from cli import app

    conf = tmp_path / "c.toml"
    conf.write_text('preset = "tiny"\n[sae]\nvariant = "batchtopk"\n[train]\nseeds = 2\nsteps = 10\n')
    res = CliRunner().invoke(app, ["train", "--config", str(conf), "--out", str(tmp_path / "r"), "--quiet", "--vary-data"])
    assert res.exit_code == 0, res.output
    cfg, sae, _ = load_run(tmp_path / "r")
    assert cfg.sae.variant == "batchtopk" and cfg.train.vary_data and sae.n_seeds == 2


@pytest.mark.parametrize("flags", [["--k", "0"], ["--seeds", "0"], ["--variant", "nope"], ["--lr", "-1"],
                                   ["--device", "tpu"], ["--batch-size", "0"], ["--d-sae", "2", "--k", "8"]])
def test_cli_bad_flags_exit_2_with_one_line(tmp_path, flags):
    from cli import app

    res = CliRunner().invoke(app, ["train", "--preset", "tiny", "--out", str(tmp_path / "r"), *flags])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert not (tmp_path / "r").exists()


def test_sae_config_default_dead_definition_is_documented():
    assert "dead_window_tokens" in TrainConfig.__dataclass_fields__
    assert SAEConfig().aux_k > 0


_ = Path
