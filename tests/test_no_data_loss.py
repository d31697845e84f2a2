"""Nothing a user owns is lost: outputs only to regular files, folder analysis only into folders that are ours,
the real side refuses folders that hold no run, --force never deletes through a link, an edited config.toml is
checked before --resume, and a resume keeps the checkpoint it started from. Every test that could lose a file
hashes the whole folder tree before and after."""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from synthsae.fileio import BadFileError, atomic_write_text
from synthsae.rundir import MARKER, clear_run

runner = CliRunner()


def tree_hash(root: Path) -> dict[str, str]:
    """Every entry under root (links not followed): path -> kind and content hash / link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "special:" + oct(p.lstat().st_mode)
    return out


def _one_line(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert res.exit_code == 2, res.output
    return lines[0]


# ----------------------------------------------------------------------------------------------- regular files only


def test_fifo_and_device_are_never_replaced(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    before = tree_hash(tmp_path)
    with pytest.raises(BadFileError, match="named pipe"):
        atomic_write_text(fifo, "x")
    with pytest.raises(BadFileError, match="character device"):
        atomic_write_text("/dev/null", "x")  # raised before any temp file is made beside it
    res = runner.invoke(app, ["truth", "sample", "--n", "4", "--preset", "tiny", "--out", str(fifo), "--force"])
    assert "named pipe" in _one_line(res)
    assert fifo.is_fifo() and tree_hash(tmp_path) == before


# ----------------------------------------------------------------------------------------------- folder analysis


@pytest.fixture
def sae_parent(tmp_path):
    from test_loaders import saelens_folder

    root = tmp_path / "mine"
    for s in range(2):
        saelens_folder(root / f"seed_{s}", s)
    (root / "report.md").write_text("my own notes, not synthsae's\n")
    return root


def test_analyze_never_replaces_a_users_report_in_the_common_parent(sae_parent):
    before = tree_hash(sae_parent)
    res = runner.invoke(app, ["analyze", str(sae_parent), "--device", "cpu"])
    line = _one_line(res)
    assert "report.md" in line and "--out" in line
    assert tree_hash(sae_parent) == before


def test_analyze_out_never_writes_into_an_input_or_a_json_that_is_not_metrics(sae_parent, tmp_path):
    before = tree_hash(tmp_path)
    cfg = sae_parent / "seed_0" / "cfg.json"
    res = runner.invoke(app, ["analyze", str(sae_parent / "seed_0"), str(sae_parent / "seed_1"), "--device", "cpu",
                              "--out", str(sae_parent / "seed_0" / "metrics.json")])
    assert "inside the input SAE folder" in _one_line(res)
    res = runner.invoke(app, ["analyze", str(sae_parent / "seed_0"), str(sae_parent / "seed_1"), "--device", "cpu",
                              "--out", str(cfg)])
    assert "name the output folder" in _one_line(res)
    res = runner.invoke(app, ["analyze", str(sae_parent / "seed_0"), str(sae_parent / "seed_1"), "--device", "cpu",
                              "--out", str(tmp_path / "x.json")])
    assert "name the output folder" in _one_line(res)
    assert tree_hash(tmp_path) == before


def test_analyze_out_creates_a_new_folder_of_ours_and_may_update_it(sae_parent, tmp_path):
    inputs = tree_hash(sae_parent)
    out = tmp_path / "new" / "analysis"
    args = ["analyze", str(sae_parent / "seed_0"), str(sae_parent / "seed_1"), "--device", "cpu", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (out / "metrics.json").is_file() and (out / "report.md").is_file() and (out / ".synthsae-analysis").is_file()
    res = runner.invoke(app, args)  # ours: updated in place
    assert res.exit_code == 0, res.output
    assert tree_hash(sae_parent) == inputs


# ----------------------------------------------------------------------------------------------- real side


def _user_folder(root: Path) -> Path:
    for sub in ("figures", "pooled", "seeds", "checkpoint"):
        (root / sub).mkdir(parents=True)
        (root / sub / "precious.txt").write_text(f"user data in {sub}\n")
    (root / "metrics.json").write_text('{"mine": 1}\n')
    (root / "report.md").write_text("my report\n")
    return root


@pytest.mark.parametrize("args", [["real", "run", "--force"], ["real", "run"], ["real", "collect"]])
def test_real_side_refuses_a_folder_that_holds_no_run(tmp_path, args):
    root = _user_folder(tmp_path / "user")
    before = tree_hash(tmp_path)
    res = runner.invoke(app, [*args, "--preset", "quick", "--out", str(root)])
    assert "not a synthsae run" in _one_line(res)
    assert tree_hash(tmp_path) == before and not (root / MARKER).exists()


def test_refused_real_collect_leaves_no_marker_only_folder(tmp_path):
    from real.study import run_real

    from real.config import preset as real_preset

    cfg = real_preset("quick")
    out = tmp_path / "new_run"

    class Boom(Exception):
        pass

    import real.study as rs

    orig = rs._run_locked

    def refuse(*a, **k):
        raise Boom("refused inside the lock")

    rs._run_locked = refuse
    try:
        import real.model as rm

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(rm, "check_layer", lambda lm, layer: None)
            mp.setattr(rs, "check_real_disk", lambda *a, **k: None)  # the stand-in model has no d_model
            with pytest.raises(Boom):
                run_real(cfg, out, lm=object(), collect_only=True)
    finally:
        rs._run_locked = orig
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- links


def test_force_removes_links_never_what_they_point_to(tmp_path):
    shared = tmp_path / "shared"
    (shared / "colleague_sae").mkdir(parents=True)
    (shared / "notes.txt").write_text("colleague notes\n")
    (shared / "plot.png").write_bytes(b"\x89PNG colleague")
    (shared / "colleague_sae" / "weights").write_bytes(b"w" * 100)
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).touch()
    (run / "config.toml").write_text("x")
    for name in ("figures", "pooled", "seeds", "checkpoint"):
        (run / name).symlink_to(shared, target_is_directory=True)
    (run / "report.md").symlink_to(shared / "notes.txt")
    before = tree_hash(shared)
    clear_run(run)
    assert tree_hash(shared) == before
    assert not any((run / n).is_symlink() for n in ("figures", "pooled", "seeds", "checkpoint", "report.md"))


def test_real_force_removes_links_never_what_they_point_to(tmp_path):
    from real.stages import OUTPUTS
    from synthsae.rundir import clear_run as clear

    shared = tmp_path / "shared"
    (shared / "x").mkdir(parents=True)
    (shared / "x" / "notes.txt").write_text("colleague\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "pooled").symlink_to(shared, target_is_directory=True)
    before = tree_hash(shared)
    clear(run, OUTPUTS)  # what real.stages.prepare(force=True) runs
    assert tree_hash(shared) == before and not (run / "pooled").exists()


# ----------------------------------------------------------------------------------------------- edited config + resume


def _killed_run(tmp_path: Path) -> Path:
    out = tmp_path / "r"
    res = runner.invoke(app, ["train", "--preset", "tiny", "--steps", "40", "--seeds", "1", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    # make it unfinished: keep a checkpoint at step 20 as a kill would
    from synthsae.config import load
    from synthsae.train import train_run

    cfg = load(out / "config.toml")
    cfg.train.checkpoint_every = 10
    train_run(cfg, out, force=True, progress=False, stop_after=20)
    return out


def _edit_steps(out: Path, steps: str) -> None:
    text = (out / "config.toml").read_text()
    import re

    (out / "config.toml").write_text(re.sub(r"(?m)^steps = .*$", f"steps = {steps}", text, count=1))


@pytest.mark.parametrize("steps, words", [("100000000000000000000000", "train.steps"),
                                          ("5", "below the checkpoint's step 20")])
def test_edited_config_before_resume_is_checked_in_one_line(tmp_path, steps, words):
    out = _killed_run(tmp_path)
    _edit_steps(out, steps)
    before = tree_hash(out)
    res = runner.invoke(app, ["train", "--resume", "--out", str(out), "--quiet"])
    assert words in _one_line(res)
    assert tree_hash(out) == before  # the checkpoint is still there


def test_resume_keeps_the_checkpoint_it_started_from(tmp_path):
    from synthsae.config import load
    from synthsae.train import train_run
    from synthsae.checkpoint import checkpoint_step

    out = _killed_run(tmp_path)
    cfg = load(out / "config.toml")
    cfg.train.checkpoint_every = 10
    train_run(cfg, out, resume=True, progress=False, stop_after=30)
    assert checkpoint_step(out) == 30
    assert (out / "checkpoint" / "step_20").is_dir() and (out / "checkpoint" / "step_30").is_dir()


# ----------------------------------------------------------------------------------------------- the lock


def _hold_lock(folder: Path, pid: str = "424242") -> int:
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / MARKER, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, f"{pid}\n".encode())
    return fd


def test_report_and_the_losing_run_name_the_lock_holder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    (run / "config.toml").write_text("half written")
    fd = _hold_lock(run)
    try:
        before = tree_hash(run)
        res = runner.invoke(app, ["report", str(run)])
        assert "pid 424242" in _one_line(res)
        res = runner.invoke(app, ["run", "--preset", "tiny", "--out", str(run), "--quiet"])
        line = _one_line(res)
        assert "pid 424242" in line and "--force" not in line
        assert tree_hash(run) == before
    finally:
        os.close(fd)


def test_refused_synthetic_run_leaves_no_marker_only_folder(tmp_path, monkeypatch):
    import synthsae.study as st

    def refuse(*a, **k):
        raise FileExistsError("refused inside the lock")

    monkeypatch.setattr(st, "_run_locked", refuse)
    from synthsae.config import preset

    out = tmp_path / "new"
    with pytest.raises(FileExistsError):
        st.run_study(preset("tiny"), out, progress=False)
    assert not out.exists()
