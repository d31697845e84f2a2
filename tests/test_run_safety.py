"""Runs a team can share and trust: file modes from the umask, --force only on runs, resume with the saved
config, Ctrl-C checkpoints, memory limits before any file, one-line OS errors, the run lock, progress lines."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli import app
from synthsae import config as C
from synthsae.fileio import BadFileError, atomic_save_safetensors, atomic_write_json, atomic_write_text, merge_json_key
from synthsae.rundir import MARKER, check_overwritable, clear_run
from synthsae.train import train_run
from synthsae.loop import TrainingDiverged
from synthsae.checkpoint import checkpoint_step, seed_checkpoint

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def tiny_cfg(steps: int = 30, seeds: int = 2) -> C.RunConfig:
    cfg = C.preset("tiny")
    cfg.train.steps, cfg.train.seeds, cfg.train.batch_size = steps, seeds, 128
    cfg.train.checkpoint_every = 10
    cfg.analysis.eval_tokens = 1024
    return cfg


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# ----------------------------------------------------------------------------------------------- file modes


def test_atomic_writes_get_the_mode_open_would_give(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "b.json", {"a": 1})
    atomic_save_safetensors({"t": torch.zeros(2)}, tmp_path / "c.safetensors")
    (tmp_path / "plain.txt").write_text("x")
    plain = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert plain == 0o644
    for name in ("a.txt", "b.json", "c.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == plain, name
    os.umask(0o077)  # a private umask is respected too
    atomic_write_text(tmp_path / "d.txt", "x")
    assert (tmp_path / "d.txt").stat().st_mode & 0o777 == 0o600


def test_training_files_are_group_and_world_readable(tmp_path, umask_022):
    train_run(tiny_cfg(steps=12), tmp_path / "r", progress=False, stop_after=5)
    assert seed_checkpoint(tmp_path / "r", 5, 0).stat().st_mode & 0o777 == 0o644
    train_run(tiny_cfg(steps=12), tmp_path / "r", resume=True, progress=False)
    files = [p for p in (tmp_path / "r").rglob("*") if p.is_file()]
    assert len(files) >= 8
    for p in files:
        assert p.stat().st_mode & 0o777 == 0o644, p


# ----------------------------------------------------------------------------------------------- --force


def _foreign(folder: Path) -> None:
    (folder / "seeds").mkdir(parents=True)
    (folder / "seeds" / "notes.txt").write_text("mine")
    (folder / "figures").mkdir()
    (folder / "figures" / "plot.png").write_bytes(b"png")
    (folder / "config.toml").write_text("# my own config\n")
    (folder / "report.md").write_text("my report")


@pytest.mark.parametrize("command", [["run", "--preset", "tiny"], ["train", "--preset", "tiny", "--steps", "5"]])
def test_force_refuses_a_folder_that_is_not_a_run(tmp_path, command):
    _foreign(tmp_path / "x")
    before = _snapshot(tmp_path / "x")
    res = runner.invoke(app, [*command, "--out", str(tmp_path / "x"), "--force"])
    assert res.exit_code == 2, res.output
    assert len(_lines(res.output)) == 1 and "not a synthsae run" in res.output
    assert _snapshot(tmp_path / "x") == before and not (tmp_path / "x" / MARKER).exists()


def test_force_on_empty_or_run_folder_is_allowed(tmp_path):
    (tmp_path / "empty").mkdir()
    check_overwritable(tmp_path / "empty")
    check_overwritable(tmp_path / "absent")
    train_run(tiny_cfg(steps=5), tmp_path / "run", progress=False)
    check_overwritable(tmp_path / "run")
    with pytest.raises(FileExistsError, match="not a synthsae run"):
        _foreign(tmp_path / "f")
        check_overwritable(tmp_path / "f")


def test_clear_run_removes_only_what_a_run_writes(tmp_path):
    train_run(tiny_cfg(steps=5), tmp_path / "r", progress=False)
    r = tmp_path / "r"
    (r / "figures").mkdir()
    (r / "figures" / "stability.png").write_bytes(b"ours")
    (r / "figures" / "colleague.pdf").write_bytes(b"theirs")
    (r / "seeds" / "README").write_text("theirs")
    (r / "notes.txt").write_text("theirs")
    clear_run(r)
    left = sorted(str(p.relative_to(r)) for p in r.rglob("*") if p.is_file())
    assert left == [MARKER, "figures/colleague.pdf", "notes.txt", "seeds/README"]
    res = runner.invoke(app, ["train", "--preset", "tiny", "--steps", "5", "--batch-size", "128", "--seeds", "2",
                              "--out", str(r), "--force", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (r / "notes.txt").read_text() == "theirs" and (r / "seeds" / "README").is_file()


# ----------------------------------------------------------------------------------------------- resume


def test_resume_hint_alone_takes_the_runs_config(tmp_path):
    cfg = tiny_cfg(steps=30)
    cfg.train.lr = 2e-3  # not the default preset's, so a resume that started the default would be refused
    train_run(cfg, tmp_path / "r", progress=False, stop_after=12)
    res = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path / "r"), "--quiet"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "r" / "train.json").read_text())
    assert summary["steps"] == 30 and len(summary["init_seeds"]) == 2
    train_run(tiny_cfg(steps=30), tmp_path / "d", progress=False, stop_after=12)
    res = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path / "d"), "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output  # another device is allowed (the config said auto)


def test_resume_with_conflicting_flags_is_refused_naming_the_difference(tmp_path):
    train_run(tiny_cfg(steps=30), tmp_path / "r", progress=False, stop_after=12)
    before = _snapshot(tmp_path / "r")
    for flags, needle in ((["--steps", "99"], "train.steps: run has 30, given 99"),
                          (["--preset", "default"], "preset: run has \"tiny\", given \"default\""),
                          (["--d-sae", "50"], "sae.d_sae: run has 96, given 50")):
        res = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path / "r"), *flags])
        assert res.exit_code == 2, res.output
        assert len(_lines(res.output)) == 1 and needle in res.output, res.output
    assert _snapshot(tmp_path / "r") == before


def test_resume_with_a_lower_lr_is_recorded(tmp_path):
    train_run(tiny_cfg(steps=30), tmp_path / "r", progress=False, stop_after=20)
    res = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path / "r"), "--lr", "0.001", "--quiet"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "r" / "train.json").read_text())
    assert summary["lr_changes"] == [{"step": 20, "from": 0.003, "to": 0.001}]
    assert C.load(tmp_path / "r" / "config.toml").train.lr == 0.001


def test_train_seconds_add_up_across_resumes(tmp_path):
    cfg = tiny_cfg(steps=40)
    train_run(cfg, tmp_path / "r", progress=False, stop_after=25)
    first = torch.load(seed_checkpoint(tmp_path / "r", 25, 0), weights_only=True)["seconds"]
    assert first > 0
    train_run(cfg, tmp_path / "r", resume=True, progress=False)
    assert json.loads((tmp_path / "r" / "train.json").read_text())["seconds"] > first


def test_divergence_names_the_checkpoint_and_a_way_out_that_works(tmp_path, monkeypatch):
    from synthsae import train as T

    cfg = tiny_cfg(steps=40)
    real_next = T.DataStream.__next__
    calls = {"n": 0}

    def poisoned(self):
        calls["n"] += 1
        x = real_next(self)
        return x * float("nan") if calls["n"] == 26 else x

    monkeypatch.setattr(T.DataStream, "__next__", poisoned)
    out = tmp_path / "r"
    C.save(cfg, tmp_path / "c.toml")
    res = runner.invoke(app, ["run", "--config", str(tmp_path / "c.toml"), "--out", str(out), "--quiet"])
    assert res.exit_code == 1
    lines = [ln for ln in _lines(res.output) if not ln.startswith("[1/5]")]  # the stage log goes to stdout
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "diverged at step 25" in lines[0] and "checkpoint at step 20 is the last good state" in lines[0]
    hint = re.search(r"`synthsae run (--resume --out \S+ --lr \S+)`", lines[0])
    assert hint and "0.0015" in hint.group(1)
    # the way out: resume from step 20 with the lower lr (training only, to keep the test short)
    res = runner.invoke(app, ["train", *hint.group(1).split(), "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "train.json").read_text())["lr_changes"][0]["step"] == 20


def test_divergence_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    from synthsae import train as T

    monkeypatch.setattr(T.DataStream, "__next__", lambda self: torch.full((128, 32), float("nan")))
    with pytest.raises(TrainingDiverged, match="no checkpoint was written before it") as err:
        train_run(tiny_cfg(), tmp_path / "r", progress=False)
    assert err.value.checkpoint_step is None and err.value.lr == 3e-3


def test_sigint_during_training_checkpoints_the_last_step(tmp_path):
    """A real Ctrl-C (SIGINT to a subprocess): exit 130, the resume hint, and a checkpoint at a step boundary that is
    bit-identical to training uninterrupted up to that step (so at most the step in flight is lost)."""
    out = tmp_path / "r"
    cfg = tiny_cfg(steps=100000)
    cfg.train.checkpoint_every = 100000
    C.save(cfg, tmp_path / "c.toml")
    env = {**os.environ, "SYNTHSAE_PROGRESS_SECONDS": "0.1", "SYNTHSAE_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "train", "--config", str(tmp_path / "c.toml"),
                             "--out", str(out), "--device", "cpu"], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    seen = 0
    try:
        deadline = time.monotonic() + 120
        while seen < 30 and time.monotonic() < deadline:
            line = proc.stderr.readline()
            m = re.search(r": (\d+)/100000", line)
            if m:
                seen = int(m.group(1))
        assert seen >= 30, "no progress lines from the trainer"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert f"synthsae train --resume --out {out}" in err and "Traceback" not in err
    step = checkpoint_step(out)
    assert step is not None and seen <= step < 100000
    ref = train_run(C.load(out / "config.toml"), tmp_path / "ref", progress=False, stop_after=step)
    for i in range(ref.n_seeds):
        blob = torch.load(seed_checkpoint(out, step, i), weights_only=True)
        assert blob["step"] == step
        for k, v in ref.state_dict().items():
            assert torch.equal(v[i], blob["model"][k]), k


# ----------------------------------------------------------------------------------------------- limits and OS errors


@pytest.mark.parametrize("args", [
    ["run", "--preset", "tiny", "--d-sae", str(10**9)],
    ["train", "--preset", "tiny", "--d-sae", str(10**9)],
    ["run", "--preset", "tiny", "--batch-size", str(10**10)],
])
def test_a_size_the_machine_cannot_hold_is_refused_before_any_file(tmp_path, args):
    out = tmp_path / "r"
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = _lines(res.output)
    assert len(lines) == 1 and re.search(r"needs about [\d.,]+ GB of memory but [\d.,]+ GB is free", lines[0]), res.output
    assert not out.exists()


def test_truth_commands_refuse_sizes_that_do_not_fit(tmp_path):
    res = runner.invoke(app, ["truth", "sample", "--preset", "tiny", "--n", str(10**12), "--out", str(tmp_path / "s.safetensors")])
    assert res.exit_code == 2 and "--n = 1000000000000" in res.output and "GB is free" in res.output, res.output
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "big.toml").write_text('preset = "tiny"\n[truth]\nd = 2000000\n')
    res = runner.invoke(app, ["truth", "describe", "--config", str(tmp_path / "big.toml")])
    assert res.exit_code == 2 and len(_lines(res.output)) == 1 and "truth.d = 2000000" in res.output, res.output


def test_out_paths_that_cannot_be_written_are_one_line_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = [
        (["run", "--preset", "tiny", "--out", str(tmp_path / "file")], "is a file"),
        (["train", "--preset", "tiny", "--out", str(tmp_path / "file" / "sub")], "is a file, so the folder cannot be created"),
        (["truth", "sample", "--preset", "tiny", "--n", "4", "--out", str(tmp_path / "file" / "s.safetensors")], "cannot be created"),
    ]
    for args, needle in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert len(_lines(res.output)) == 1 and needle in res.output, (args, res.output)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_one_line_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = runner.invoke(app, ["run", "--preset", "tiny", "--out", str(ro / "x")])
        assert res.exit_code == 2 and "not writable" in res.output and len(_lines(res.output)) == 1
    finally:
        ro.chmod(0o755)


def test_os_error_deep_in_a_command_is_one_line():
    from cli import user_errors

    @user_errors
    def boom():
        raise PermissionError(13, "Permission denied", "/some/run/metrics.json")

    import typer

    with pytest.raises(typer.Exit) as exc:
        boom()
    assert exc.value.exit_code == 2


def test_corrupt_metrics_json_is_refused_not_replaced(tmp_path):
    p = tmp_path / "metrics.json"
    p.write_text('{"analysis": {"a": 1}, "abl')
    with pytest.raises(BadFileError, match="not valid JSON"):
        merge_json_key(p, "pooling", {})
    assert p.read_text() == '{"analysis": {"a": 1}, "abl'


# ----------------------------------------------------------------------------------------------- lock


def test_a_second_writer_of_the_same_run_is_refused(tmp_path):
    out, done = tmp_path / "r", tmp_path / "done"
    train_run(tiny_cfg(steps=30), out, progress=False, stop_after=10)
    train_run(tiny_cfg(steps=5), done, progress=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from contextlib import ExitStack; from pathlib import Path\n"
         "from synthsae.rundir import run_lock\n"
         "with ExitStack() as st:\n    [st.enter_context(run_lock(Path(p))) for p in sys.argv[1:]]\n"
         "    print('locked', flush=True); time.sleep(60)", str(out), str(done)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(out)
        res = runner.invoke(app, ["train", "--resume", "--out", str(out), "--quiet"])
        assert res.exit_code == 2, res.output
        assert len(_lines(res.output)) == 1 and f"pid {holder.pid}" in res.output and "another synthsae process" in res.output
        assert _snapshot(out) == before
        before = _snapshot(done)
        for args in (["analyze", str(done)], ["ablate", str(done)], ["pool", str(done), "--steps", "2"]):
            res = runner.invoke(app, args)
            assert res.exit_code == 2 and "another synthsae process" in _lines(res.output)[-1], (args, res.output)
        assert _snapshot(done) == before
    finally:
        holder.kill()
        holder.wait()
    res = runner.invoke(app, ["train", "--resume", "--out", str(out), "--quiet"])  # lock released with the process
    assert res.exit_code == 0, res.output


# ----------------------------------------------------------------------------------------------- progress, help, version


def test_progress_without_a_terminal_is_sparse_lines():
    from synthsae.progress import LineProgress, progress_bar

    buf = io.StringIO()
    bar = progress_bar(total=5, desc="train", file=buf, interval=0.0)
    assert isinstance(bar, LineProgress)
    for _ in range(5):
        bar.update(1)
    bar.set_postfix_str("fvu 0.1")
    bar.close()
    text = buf.getvalue()
    assert "\r" not in text and text.count("\n") == 5 and "train: 5/5 (100%)" in text
    quiet = io.StringIO()
    bar = LineProgress(total=1000, desc="x", file=quiet, interval=3600)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    assert quiet.getvalue() == ""  # nothing until the interval has passed


def test_version_and_help():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("synthsae ")
    res = runner.invoke(app, ["run", "--help"])
    assert res.exit_code == 0
    for needle in ("tiny, default, paper, synthbench16k", "--lr", "--batch-size", "--quiet", "--allow-missing-seeds",
                   "tiny 3, default 8"):
        assert needle in res.output, needle
    assert "<bool>" not in res.output


def test_run_takes_lr_and_batch_size(tmp_path):
    res = runner.invoke(app, ["run", "--preset", "tiny", "--lr", "-1", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "train.lr = -1.0" in res.output
    res = runner.invoke(app, ["run", "--preset", "tiny", "--batch-size", "0", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "train.batch_size = 0" in res.output
    assert not (tmp_path / "r").exists()


def test_tau_warning_when_stages_differ():
    from types import SimpleNamespace as NS

    from synthsae.metrics_file import Metrics
    from synthsae.metrics_file import stage_taus, tau_warning

    same = Metrics(analysis=NS(settings=NS(tau=0.7)), ablation=NS(tau=0.7), pooling=NS(tau=0.7))
    assert stage_taus(same) == {"analysis": 0.7, "ablation": 0.7, "pooling": 0.7} and tau_warning(same) is None
    diff = Metrics(analysis=NS(settings=NS(tau=0.5)), ablation=NS(tau=0.7))
    assert tau_warning(diff) == ("warning: the stages used different tau: analysis 0.5, ablation 0.7; "
                                 "re-run the others with the same --tau to compare them")
