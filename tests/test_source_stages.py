"""The Source (what a study runs on, decided in one place) and the stage registry every command loops over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import synthsae.stages as stages
import synthsae.study_stages  # noqa: F401  (registers the shared stages)
from synthsae.config import ConfigError, preset, validate
from synthsae.source import EVAL_DATA_SEED_OFFSET, Source, open_source
from synthsae.stages import Stage, register, run_stages, stage_for


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    from synthsae.train import train_run

    cfg = validate(preset("tiny"))
    cfg.train.device, cfg.train.steps, cfg.train.seeds = "cpu", 20, 2
    out = tmp_path_factory.mktemp("src") / "run"
    train_run(cfg, out, progress=False)
    return out


def test_open_source_decides_run_real_or_folders(small_run: Path, tmp_path: Path) -> None:
    src = open_source([small_run])
    assert src.kind == "run" and src.run_dir == small_run and src.metrics == small_run / "metrics.json"
    folders = sorted((small_run / "seeds").glob("seed_*"))
    fs = open_source(folders, out=tmp_path / "fa")
    assert fs.kind == "folders" and fs.paths == folders and fs.out == tmp_path / "fa"
    assert open_source(folders).out == small_run / "seeds"  # default: the folders' common parent, never an input
    real = tmp_path / "real"
    (real / "seeds").mkdir(parents=True)
    (real / "real_config.json").write_text("{}")
    assert open_source([real]).kind == "real"
    with pytest.raises(ConfigError, match="--acts"):
        open_source([real], acts=tmp_path / "a.safetensors")
    with pytest.raises(ConfigError, match="no such file"):
        open_source([tmp_path / "absent"])
    with pytest.raises(ConfigError, match="at least two"):
        open_source(folders[:1])
    with pytest.raises(ConfigError, match="kind"):
        Source("bench", tmp_path)


def test_the_eval_stream_is_one_seed_for_every_stage(small_run: Path) -> None:
    from synthsae.metrics.ablation import eval_sample

    src = open_source([small_run], device="cpu")
    assert src.eval_seed == src.config.train.data_seed + EVAL_DATA_SEED_OFFSET
    assert torch.equal(src.eval_x(64), eval_sample(src.truth, 64, src.eval_seed))
    assert src.refit_batches(8) is None  # synthetic refits draw from the truth's own stream


def test_run_stages_numbers_from_the_pipeline_resumes_and_names_unknown_keys(small_run: Path, tmp_path: Path,
                                                                          monkeypatch) -> None:
    monkeypatch.setattr(stages, "_REGISTRY", dict(stages._REGISTRY))  # the toy stage lives only in this test
    calls: list[str] = []

    def toy(src: Source, earlier: dict, s) -> dict:
        calls.append("toy")
        return {"n_seeds": src.sae.n_seeds, "saw_analysis": "analysis" in earlier, "setting": s}

    def write(src: Source, res: dict) -> None:
        (src.out / "toy.json").write_text(json.dumps(res))

    register(Stage("toy", lambda src, s: "a toy stage", toy, write=write,
                   done=lambda src: (src.out / "toy.json").is_file()), kinds=("run",))
    lines: list[str] = []
    src = Source("run", small_run, run_dir=small_run, device="cpu")
    done = run_stages(src, ("analysis", "toy"), settings={"toy": 7}, log=lines.append)
    assert lines == ["[1/2] analysing stability, truth recovery and subspaces", "[2/2] a toy stage"]
    assert json.loads((small_run / "toy.json").read_text()) == {"n_seeds": 2, "saw_analysis": True, "setting": 7}
    assert set(done.seconds) == {"analysis", "toy"}
    lines.clear()
    again = run_stages(Source("run", small_run, run_dir=small_run), ("analysis", "toy"), log=lines.append)
    assert lines == [] and calls == ["toy"] and again.results == {}  # resume: both outputs exist
    run_stages(src, ("toy",), resume=False, log=lines.append, pipeline=("train", "analysis", "toy"))
    assert lines == ["[3/3] a toy stage"] and calls == ["toy", "toy"]
    with pytest.raises(ConfigError, match="'nope'.*known: .*analysis"):
        stage_for("nope", "run")
    with pytest.raises(ConfigError, match="kind"):
        register(Stage("x", lambda src, s: "", toy), kinds=("bench",))


def test_real_stages_register_beside_the_shared_ones() -> None:
    pytest.importorskip("transformers")
    import real.stages  # noqa: F401

    assert stage_for("pooling", "real") is not stage_for("pooling", "run")
    assert stage_for("analysis", "real").write is stage_for("analysis", "run").write  # the shared analysis
    assert {"collect", "triggers", "atlas"} <= set(stages.stage_keys("real"))
    assert "triggers" not in stages.stage_keys("run")
