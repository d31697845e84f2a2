"""The seed axis over torchrun ranks (gloo on CPU): same seed folders as one process, a killed rank stops the run
with one line and --resume finishes it under another number of processes, distributed pair scores; the
sync-free training step and the low-precision selection matmul."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthsae import distributed
from synthsae.config import load as load_config
from synthsae.train import train_run
from synthsae.checkpoint import checkpoint_step

REPO = Path(__file__).resolve().parents[1]
CONFIG = 'preset = "tiny"\n[train]\ndevice = "cpu"\nsteps = {steps}\nbatch_size = 128\ncheckpoint_every = {every}\n[analysis]\neval_tokens = 2048\n'


def torchrun(n: int, *args: str, **popen) -> subprocess.Popen:
    """`torchrun --standalone --nproc-per-node n -m synthsae ARGS` with this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "SYNTHSAE_THREADS": "1",
           "OMP_NUM_THREADS": "1", "SYNTHSAE_DIST_TIMEOUT": "60"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *args]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def seed_tensors(run: Path) -> dict[str, torch.Tensor]:
    out = {}
    for folder in sorted((run / "seeds").iterdir()):
        for name in ("sae_weights.safetensors", "sparsity.safetensors"):
            for k, v in load_file(str(folder / name)).items():
                out[f"{folder.name}/{k}"] = v
    return out


def assert_same_seeds(a: Path, b: Path) -> None:
    ta, tb = seed_tensors(a), seed_tensors(b)
    assert sorted(ta) == sorted(tb) and len(ta) >= 3 * 5
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=1e-6, msg=k)
    for folder in sorted((a / "seeds").iterdir()):
        ma = json.loads((folder / "cfg.json").read_text())["metadata"]
        mb = json.loads((b / "seeds" / folder.name / "cfg.json").read_text())["metadata"]
        assert ma == mb


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """A one-process run of the config the distributed tests use (and the config file)."""
    root = tmp_path_factory.mktemp("dist")
    cfg_file = root / "run.toml"
    cfg_file.write_text(CONFIG.format(steps=400, every=50))
    train_run(load_config(cfg_file), root / "one", progress=False)
    return root, cfg_file


def test_shard_covers_every_seed_once():
    for n in range(1, 12):
        for world in range(1, n + 1):
            parts = [distributed.shard(n, r, world) for r in range(world)]
            assert sum(parts, []) == list(range(n)) and max(map(len, parts)) - min(map(len, parts)) <= 1


def test_two_process_run_equals_one_process(reference, tmp_path):
    root, cfg_file = reference
    p = torchrun(2, "-m", "synthsae", "train", "--config", str(cfg_file), "--out", str(tmp_path / "two"), "--quiet")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err  # all of it: a dead rank's own message comes before torchrun's summary
    assert out.count("trained 3 seeds") == 1  # rank 0 reports, rank 1 does not
    assert_same_seeds(root / "one", tmp_path / "two")
    one, two = (json.loads((r / "train.json").read_text()) for r in (root / "one", tmp_path / "two"))
    assert two["processes"] == 2 and one["processes"] == 1
    assert one["eval"] == two["eval"] and one["history"] == two["history"]
    assert not (tmp_path / "two" / "checkpoint").exists()


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the worker with RANK=rank started by the torchrun process `launcher` (from /proc)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in env:
            return int(d.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's pid through /proc")
def test_killed_rank_stops_the_run_and_resume_finishes_under_another_n(reference, tmp_path):
    root, cfg_file = reference
    run = tmp_path / "killed"
    p = torchrun(2, "-m", "synthsae", "train", "--config", str(cfg_file), "--out", str(run), "--quiet")
    deadline = time.time() + 120
    while (checkpoint_step(run) or 0) < 50 and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    victim = _rank_pid(p.pid, 1)
    assert victim is not None and p.poll() is None, "the run ended before a rank could be killed"
    os.kill(victim, signal.SIGKILL)
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "rank 0" in ours[0] and "--resume" in ours[0], err[-3000:]
    assert not (run / "train.json").exists()
    step = checkpoint_step(run)
    assert step is not None and 50 <= step < 400
    # resume with one process (the run was started with two): same seed folders as the uninterrupted run
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "synthsae", "train", "--config", str(cfg_file), "--out", str(run),
                          "--resume", "--quiet"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert_same_seeds(root / "one", run)
    a, b = (json.loads((r / "train.json").read_text()) for r in (root / "one", run))
    assert a["history"] == b["history"]


PAIRS_SCRIPT = """
import sys, torch, torch.distributed as dist
from synthsae import distributed
from synthsae.metrics.stability import pair_scores
distributed.setup(torch.device("cpu"))
g = torch.Generator().manual_seed(0)
shared = torch.randn(40, 8, generator=g)
dec = shared + 0.3 * torch.randn(5, 40, 8, generator=g)
enc = dec.transpose(1, 2) + 0.1 * torch.randn(5, 8, 40, generator=g)
res = {}
for rule in ("maxcos", "hungarian", "strict"):
    with distributed.sharing_pairs():
        res[rule] = pair_scores(dec, rule, enc)
    res[rule + "_local"] = pair_scores(dec, rule, enc)  # outside the block: this rank alone, every pair
if dist.get_rank() == 0:
    torch.save({"dec": dec, "enc": enc, "res": res}, sys.argv[1])
distributed.teardown()
"""


def test_distributed_pair_scores_equal_single_process(tmp_path):
    from synthsae.metrics.stability import pair_scores

    script = tmp_path / "pairs.py"
    script.write_text(PAIRS_SCRIPT)
    p = torchrun(2, str(script), str(tmp_path / "res.pt"))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    blob = torch.load(tmp_path / "res.pt", weights_only=True)
    for rule in ("maxcos", "hungarian", "strict"):
        want_s, want_p = pair_scores(blob["dec"], rule, blob["enc"])
        for key in (rule, rule + "_local"):
            got_s, got_p = blob["res"][key]
            assert torch.equal(got_p, want_p), key
            torch.testing.assert_close(got_s, want_s, rtol=0, atol=0, equal_nan=True, msg=key)


# ----------------------------------------------------------------------------------------------- GPU readiness, tested on CPU

SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "bincount")


class _CountSyncs(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts aten ops that read a device value on the host (a host-device sync on CUDA)."""

    def __init__(self):
        super().__init__()
        self.hits: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.hits.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
@pytest.mark.parametrize("host_reads_free", [False, True])
def test_training_step_reads_nothing_on_the_host_between_log_steps(monkeypatch, variant, host_reads_free):
    """Under the CUDA policy (host reads are not free) a step between log steps issues no op that reads a device
    value on the host; under the CPU policy the same counter sees the per-step reads (so it can fail)."""
    from synthsae import loop
    from synthsae import train as T
    from synthsae.config import preset
    from synthsae.sae import build_sae
    from synthsae.sae import base
    from synthsae.truth import build_truth

    monkeypatch.setattr(base, "cheap_sync", lambda device: host_reads_free)
    monkeypatch.setattr(loop, "cheap_sync", lambda device: host_reads_free)
    cfg = preset("tiny")
    cfg.sae.variant = variant
    cfg.train.dead_window_tokens = 128  # latents die, so AuxK runs too
    truth = build_truth(cfg.truth)
    sae = build_sae(cfg.sae, cfg.truth.d, [0, 1])
    state = loop.new_state(sae, cfg.train)
    stream = T.DataStream(truth, 128, 0, 2, False)
    data = iter([next(stream) for _ in range(9)])  # drawn beforehand: the sampler is not the step (see note below)
    loop.train_steps(sae, data, 3, cfg.train, progress=False, state=state, log_every=100)  # warm state
    assert bool(state.dead(cfg.train.dead_window_tokens).any())
    counter, per_step = _CountSyncs(), []

    def snap(st) -> bool:
        per_step.append(len(counter.hits))
        counter.hits.clear()
        return True

    with counter:
        loop.train_steps(sae, data, 9, cfg.train, progress=False, state=state, log_every=100, on_step=snap)
    # steps 4..8 are not log steps; step 9 is the last (a log point: the flags and history are read there).
    # Note: the synthetic-data sampler itself reads nnz on the host once per batch (truth.sample's nonzero).
    if host_reads_free:
        assert min(per_step[:-1]) > 0
    else:
        assert per_step[:-1] == [0] * 5, per_step


def test_bfloat16_keeps_float32_weights_and_exact_selected_values():
    """--dtype bfloat16: the selection matmul is bfloat16; weights, Adam state and the selected values stay float32."""
    from synthsae import loop
    from synthsae import train as T
    from synthsae.config import preset
    from synthsae.sae import build_sae
    from synthsae.truth import build_truth

    cfg = preset("tiny")
    truth = build_truth(cfg.truth)
    sae = build_sae(cfg.sae, cfg.truth.d, [0, 1])
    loop.set_precision(sae, "bfloat16")
    x = T.DataStream(truth, 256, 0, 2, False).__next__()
    bias = sae.bias_eff().detach()
    pre, exact = sae.selection_pre_acts(x, bias)
    assert pre.dtype == torch.bfloat16 and not exact
    code, approx = sae.select(pre)
    exact_vals = sae.exact_pre(x, code, bias)
    full = torch.baddbmm(bias.unsqueeze(1), x.expand(2, *x.shape), sae.W_enc.detach()).reshape(-1)
    torch.testing.assert_close(exact_vals, full.view(2, 256, -1).reshape(2 * 256, -1).flatten()[
        code.rows * sae.d_sae + code.cols % sae.d_sae], rtol=1e-5, atol=1e-5)
    assert (exact_vals - approx.float()).abs().max() > 0  # bfloat16 rounding is visible, and not what trains
    state = loop.new_state(sae, cfg.train)
    stats = loop.train_steps(sae, T.DataStream(truth, 256, 0, 2, False), 60, cfg.train, progress=False, state=state)
    assert all(p.dtype == torch.float32 for p in sae.parameters())
    assert all(v.dtype == torch.float32 for st in state.optimizer.state.values() for k, v in st.items() if k != "step")
    torch.testing.assert_close(sae.W_dec.norm(dim=2), torch.ones(2, sae.d_sae), rtol=0, atol=1e-5)
    assert max(stats.fvu) < 0.9  # it learns


# ----------------------------------------------------------------------------------------------- CPU speed paths

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), blocks=st.integers(4, 40), k=st.integers(1, 10), seed=st.integers(0, 10**6),
       dead_share=st.sampled_from([0.0, 0.5, 0.97]))
def test_fast_topk_is_torch_topk(rows, blocks, k, seed, dead_share):
    """Block-maxima top-k selects exactly torch.topk's entries (distinct values), also with -inf masks (AuxK)."""
    from synthsae.sae.sparse import TOPK_BLOCK, fast_topk

    m = blocks * TOPK_BLOCK
    k = min(k, max(1, blocks // 4))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, rows, m, generator=g)
    finite = torch.rand(2, 1, m, generator=g) >= dead_share
    x = x.masked_fill(~finite, float("-inf"))
    v, i = fast_topk(x, k)
    rv, ri = torch.topk(x, k, dim=-1, sorted=False)
    assert torch.equal(v.sort(-1).values, rv.sort(-1).values)
    ok = torch.isfinite(rv.sort(-1).values)  # among -inf ties any index is a valid answer
    assert torch.equal(torch.gather(x, 2, i), v)
    assert torch.equal(i.sort(-1).values[ok], ri.sort(-1).values[ok]) or not bool(ok.all())


def test_entry_dots_match_the_embedding_bag_kernel():
    from synthsae.sae.sparse import _PSW_BACKWARD, _entry_dots, code_from_topk, rowwise_dots

    g = torch.Generator().manual_seed(3)
    S, B, m, d, k = 2, 64, 96, 16, 5
    idx = torch.stack([torch.randperm(m, generator=g)[:k] for _ in range(S * B)]).view(S, B, k)
    code = code_from_topk(idx, m)
    grad, W = torch.randn(S * B, d, generator=g), torch.randn(S * m, d, generator=g)
    got = _entry_dots(grad, W, code)
    want = rowwise_dots(grad, code.rows, W, code.cols, code.per_row)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, (grad[code.rows] * W[code.cols]).sum(1), rtol=1e-5, atol=1e-5)
    assert _PSW_BACKWARD is None or got.shape == (S * B * k,)


def test_dtype_flag_is_validated_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    res = CliRunner().invoke(app, ["train", "--preset", "tiny", "--dtype", "float8", "--out", str(tmp_path / "r"), "--quiet"])
    assert res.exit_code == 2 and "train.dtype" in res.output and "bfloat16" in res.output
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1 and not (tmp_path / "r").exists()


def test_run_under_torchrun_splits_pair_scores_and_rank0_reports(tmp_path):
    """`torchrun -m synthsae run`: the whole study finishes, rank 0 alone reports, and the per-latent stability
    (seed pairs split over the ranks) equals a one-process analysis of the same run folder."""
    from synthsae.metrics.run_analysis import LATENTS_FILE, analyze_run

    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text('preset = "tiny"\n[train]\nseeds = 3\nsteps = 60\nbatch_size = 128\ncheckpoint_every = 50\n'
                        '[analysis]\neval_tokens = 2048\npool_refit_steps = 20\n')
    out = tmp_path / "study"
    p = torchrun(2, "-m", "synthsae", "run", "--config", str(cfg_file), "--out", str(out), "--quiet")
    stdout, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    assert stdout.count("report: ") == 1 and (out / "report.html").is_file()
    _, per = analyze_run(out, device="cpu")
    saved = load_file(str(out / LATENTS_FILE))
    assert torch.equal(saved["stability"], per["stability"]) and saved["stability"].shape == (3, 96)


def test_more_ranks_than_gpus_is_a_one_line_error():
    """NCCL needs a GPU per rank: rank 1 on a one-GPU node is refused in one line (seen on an H200 machine, where
    `--device auto` under 2 ranks died with 'invalid device ordinal'), and rank 0 gets cuda:0."""
    from synthsae.config import ConfigError
    from synthsae.distributed import cuda_for_rank

    assert cuda_for_rank(torch.device("cuda"), 0, 1) == torch.device("cuda", 0)
    assert cuda_for_rank(torch.device("cuda", 0), 3, 1) == torch.device("cuda", 0)  # an explicit index is kept
    with pytest.raises(ConfigError) as e:
        cuda_for_rank(torch.device("cuda"), 1, 1)
    assert "\n" not in str(e.value) and "--nproc-per-node" in str(e.value) and "--device cpu" in str(e.value)
