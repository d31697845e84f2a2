"""benchmarks/device_check.py: the dry run (toy sizes, CPU) goes through every part the GPU run takes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device_check.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    """The script as a user runs it: without the suite's TRITON_INTERPRET (the kernels' interpreted runs are
    tests/test_kernels.py's job; here they would only make the dry run slow)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=1500,
                          env=env)


def test_dry_run_runs_every_part(tmp_path):
    out = tmp_path / "out"
    r = _run(str(out), "--dry-run", "--work", str(tmp_path / "work"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((out / "device_check.json").read_text())
    parts = {p["part"]: p for p in rep["parts"]}
    assert set(parts) == set("abcde") and all(p["status"] == "ok" for p in parts.values()), parts
    b = parts["b"]["numbers"]
    assert {(w["variant"], w["S"]) for w in b["rows"]} == {(v, s) for v in ("topk", "batchtopk") for s in (1, 2)}
    assert all(w["tokens_x_seeds_per_s"] > 0 and w["fraction_of_encoder_bound"] > 0 for w in b["rows"])
    assert all(c["float32_tflops"] > 0 for c in b["ceilings"])
    c = parts["c"]["numbers"]
    assert c["paper_run"]["returncode"] == 0 and len(c["paper_run"]["stages"]) == 5  # time per stage of `run`
    assert [x["variant"] for x in c["bench_cells"]] == ["matryoshka", "batchtopk", "jumprelu", "relu"]
    assert all(0 < x["mcc"] <= 1 and x["samples_per_seed"] > 0 for x in c["bench_cells"])
    d = parts["d"]["numbers"]
    assert d["returncode"] == 0 and d["splice_forward"] in ("suffix", "hook") and d["stages"]
    e = parts["e"]["numbers"]
    assert e["gloo_2_ranks_test"]["returncode"] == 0 and e["gloo_1_rank_train"]["seed_folders"] == 3
    md = (out / "device_check.md").read_text()
    assert "| b | training throughput against matmul ceilings | ok |" in md and "SynthSAEBench 200M" in md


def test_a_budget_too_small_runs_nothing_and_says_so(tmp_path):
    out = tmp_path / "out"
    r = _run(str(out), "--dry-run", "--budget", "5", "--parts", "a,b", "--work", str(tmp_path / "work"))
    assert r.returncode == 1
    parts = json.loads((out / "device_check.json").read_text())["parts"]
    assert [p["status"] for p in parts] == ["skipped", "skipped"]
    assert all("budget left" in p["notes"][0] for p in parts)


def test_unknown_part_is_a_one_line_error(tmp_path):
    r = _run(str(tmp_path / "out"), "--dry-run", "--parts", "a,z")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "allowed: a, b, c, d, e" in r.stderr
    assert not (tmp_path / "out").exists()
