"""torchrun's one-line errors, checked without starting torchrun: more ranks than seeds is refused before any
folder is made (rank 0 says so, the others stay quiet), and a lost peer's message is never nested in itself."""

from __future__ import annotations

from typer.testing import CliRunner

from cli import app
from synthsae import distributed


def test_more_ranks_than_seeds_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    for rank, lines in (("0", 1), ("2", 0)):
        monkeypatch.setenv("RANK", rank)
        for cmd in ("run", "train"):
            out = tmp_path / f"{cmd}{rank}"
            res = CliRunner().invoke(app, [cmd, "--preset", "tiny", "--seeds", "2", "--out", str(out), "--quiet"])
            got = [ln for ln in res.output.splitlines() if ln.strip()]
            assert res.exit_code == 2 and len(got) == lines, res.output
            assert all("fewer seeds than torchrun processes (3)" in ln for ln in got)
            assert not out.exists()


def test_lost_peer_message_is_not_nested():
    first = distributed.PeerLost("rank 1: stopped by the launcher (SIGTERM: another rank failed or the run was "
                                 "cancelled); rerun the same command with --resume (any number of processes) to finish")
    again = distributed._lost("step 40", first)
    assert str(again) == str(first) and str(again).count("rank 1:") == 1
