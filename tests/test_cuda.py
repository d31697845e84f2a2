"""The CUDA path against the CPU: training (float32 and bfloat16), cross-seed scores, the real side's splice.

Each test runs on the CPU in every suite (so a refactor keeps it alive) and again on CUDA under the `cuda` mark
(`pytest -m cuda` on a GPU machine; benchmarks/device_check.py runs that selection).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synthsae.config import preset
from synthsae.io import load_run
from synthsae.metrics.stability import pair_scores
from synthsae.train import train_run
from synthsae.checkpoint import load_train_summary

REPO = Path(__file__).resolve().parents[1]
NO_CUDA = not torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(NO_CUDA, reason="needs CUDA")])]


def _train(out: Path, device: str, dtype: str = "float32", steps: int = 150):
    cfg = preset("tiny")
    cfg.train.seeds, cfg.train.steps, cfg.train.device, cfg.train.dtype = 2, steps, device, dtype
    cfg.analysis.eval_tokens = 4096
    train_run(cfg, out, progress=False)
    return load_run(out)[1], load_train_summary(out)


@pytest.mark.parametrize("device", DEVICES)
def test_training_on_device_agrees_with_cpu(device, tmp_path):
    """Same config and seeds: the CPU gives the CPU's weights exactly; CUDA (other kernels, other summation order)
    gives the same SAEs up to float rounding that the top-k can amplify: FVU within 0.01 and matched decoders."""
    ref, ref_sum = _train(tmp_path / "ref", "cpu")
    got, got_sum = _train(tmp_path / "got", device)
    if device == "cpu":
        assert torch.equal(ref.W_dec, got.W_dec)
        return
    assert max(abs(a - b) for a, b in zip(ref_sum["eval"]["fvu"], got_sum["eval"]["fvu"])) < 0.01
    cos = torch.nn.functional.cosine_similarity(ref.W_dec.detach().cpu(), got.W_dec.detach().cpu(), dim=-1)
    assert cos.median() > 0.99, cos.median()  # most latents keep their identity over 150 steps


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_selection_matmul_trains_as_well(device, tmp_path):
    """--dtype bfloat16 (the encoder matmul that picks the active latents) reaches the float32 FVU within 0.03."""
    _, f32 = _train(tmp_path / "f32", device, "float32")
    sae, bf16 = _train(tmp_path / "bf16", device, "bfloat16")
    assert sae.W_dec.dtype == torch.float32  # weights stay float32
    for a, b in zip(f32["eval"]["fvu"], bf16["eval"]["fvu"]):
        assert abs(a - b) < 0.03, (a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_pair_scores_on_device_equal_cpu(device):
    g = torch.Generator().manual_seed(0)
    dec = torch.randn(3, 80, 16, generator=g)
    dec[1, :40] = dec[0, :40] + 0.05 * torch.randn(40, 16, generator=g)  # half the latents reappear
    ref, ref_idx = pair_scores(dec, device="cpu")
    got, got_idx = pair_scores(dec.to(device), device=device)
    torch.testing.assert_close(got.cpu(), ref, equal_nan=True, atol=1e-5, rtol=1e-5)
    assert torch.equal(got_idx.cpu(), ref_idx)


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
def test_real_run_on_cuda_splices_with_the_suffix(tmp_path):
    """The real side end to end on CUDA (tiny Llama): collect, train, splice (suffix path reproduces the clean
    logits), pool, atlas, triggers; the CPU twin is tests/test_real.py's tiny-Llama run."""
    sys.path.insert(0, str(Path(__file__).parent))
    from real_helpers import build_tiny_llama, corpus_file

    model, corpus = build_tiny_llama(tmp_path / "model"), corpus_file(tmp_path)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "synthsae", "real", "run", "--out", str(out), "--model", str(model), "--corpus",
           str(corpus), "--preset", "quick", "--layer", "1", "--tokens", "3000", "--seeds", "2", "--d-sae", "64",
           "--k", "4", "--passes", "2", "--device", "cuda"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={"PYTHONPATH": str(REPO), **_env()})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["splice"]["forward"] == "suffix"
    assert {"analysis", "ablation", "pooling", "triggers", "atlas"} <= set(metrics)


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
