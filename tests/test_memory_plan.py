"""The memory and disk plan checked before anything is written: the activation collection's disk estimate (refused
in one line against planted free space), every GPU-scale preset against the target machine (one H200: 139 GB GPU,
128 GB RAM, 64 GB disk), and the atlas's chain fallback formed in blocks that agree with the dense matrix."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from synthsae import memory

GPU_FREE, RAM_FREE, DISK_FREE = 139e9, 128e9, 64e9  # the target machine (issue 22)


# ----------------------------------------------------------------------------------------------- atlas in blocks


def _dense_rank1_groups(Df, mem, m, tau, min_seeds):
    """The chain fallback as it was: one dense float64 cosine matrix of the component."""
    import numpy as np

    from synthsae.metrics.atlas import _components

    X = Df[mem].double()
    seed = mem // m
    cos = X @ X.T
    src, dst = [], []
    for t in torch.unique(seed).tolist():
        other = torch.nonzero(seed == t).squeeze(1)
        v, j = cos[:, other].max(dim=1)
        ok = (v >= tau) & (seed != t)
        src.append(torch.nonzero(ok).squeeze(1).numpy())
        dst.append(other[j[ok]].numpy())
    comp = _components(len(mem), src, dst)
    out = []
    for c in np.unique(comp):
        sel = torch.as_tensor(np.nonzero(comp == c)[0])
        if torch.unique(seed[sel]).numel() >= min_seeds:
            out.append(mem[sel])
    return out


@pytest.mark.parametrize("rows_per_block", [1, 3, 1000])
def test_rank1_groups_in_blocks_equal_the_dense_matrix(rows_per_block):
    """Blocks of 1, 3 or all rows give the groups the dense matrix gives; the planted shared directions are found."""
    from synthsae.metrics.atlas import _rank1_groups
    from synthsae.metrics.matching import unit_rows

    S, m, d, shared = 4, 40, 16, 12
    g = torch.Generator().manual_seed(0)
    base = torch.randn(shared, d, generator=g)
    dec = torch.randn(S, m, d, generator=g)
    dec[:, :shared] = base + 0.05 * torch.randn(S, shared, d, generator=g)  # 12 directions every seed holds
    Df = unit_rows(dec).reshape(S * m, d)
    mem = torch.randperm(S * m, generator=g)[: S * m - 7]  # any order, a few latents left out
    n = mem.numel()
    got = _rank1_groups(Df, mem, m, math.sqrt(0.9), 3, block_bytes=8 * n * rows_per_block)
    want = _dense_rank1_groups(Df, mem, m, math.sqrt(0.9), 3)
    assert [t.tolist() for t in got] == [t.tolist() for t in want]
    planted = {frozenset(int(i) for i in t if int(i) % m < shared) for t in got}
    assert len([p for p in planted if len(p) >= 3]) >= shared - 1


# ----------------------------------------------------------------------------------------------- disk


def test_collection_disk_estimate_bounds_what_is_written(tmp_path):
    """The estimate is at least what a collection writes and at most twice it (slack: one shard, the windows)."""
    pytest.importorskip("transformers")
    from real.activations import CollectConfig, collect, collect_disk_bytes
    from real.model import load_model
    from real_helpers import build_tiny_llama, corpus_file

    model = build_tiny_llama(tmp_path / "model")
    c = CollectConfig(model=str(model), layer=1, ctx_len=32, train_tokens=6000, eval_tokens=600, batch_contexts=8,
                      shard_tokens=1024, corpus=[str(corpus_file(tmp_path))])
    lm = load_model(str(model))
    need = collect_disk_bytes(c, lm.d_model)
    collect(c, tmp_path / "acts", lm=lm, progress=False)
    written = sum(p.stat().st_size for p in (tmp_path / "acts").rglob("*") if p.is_file())
    assert written <= need <= 2 * written, (written, need)


def test_collection_refused_on_planted_small_disk_before_writing(tmp_path, monkeypatch):
    """With 0.1 MB free the collection is refused in one line (estimate and free space) and nothing is written; the
    real CLI exits 2 with that line."""
    pytest.importorskip("transformers")
    from real.activations import CollectConfig, collect
    from real.model import load_model
    from real_helpers import build_tiny_llama, corpus_file
    from typer.testing import CliRunner

    from cli import app

    model = build_tiny_llama(tmp_path / "model")
    corpus = corpus_file(tmp_path)
    monkeypatch.setattr(memory, "free_disk_bytes", lambda path: 100_000)
    c = CollectConfig(model=str(model), layer=1, ctx_len=32, train_tokens=10_000, eval_tokens=600,
                      corpus=[str(corpus)])
    with pytest.raises(memory.DiskLimitError, match=r"writes about \d\.\d MB to .* but 0\.1 MB of disk is free") as e:
        collect(c, tmp_path / "acts", lm=load_model(str(model)), progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "acts").exists()
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["real", "collect", "--out", str(out), "--model", str(model), "--corpus", str(corpus),
                                 "--preset", "quick", "--layer", "1", "--tokens", "10000"])
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and "of disk is free" in errors[0], r.stderr
    assert not out.exists()


def test_gpu_preset_collection_fits_the_target_disk_only(monkeypatch, tmp_path):
    """The real `gpu` preset's activations (20M tokens x SmolLM2's 576 dims, float16) fit 64 GB of free disk and are
    refused with 16 GB free."""
    from real.activations import check_collect_disk, collect_disk_bytes
    from real.config import preset

    c = preset("gpu").collect
    need = collect_disk_bytes(c, 576)
    assert 20e9 < need < 30e9  # 20.07M tokens x (576 x 2 + 12) bytes = 23.4 GB
    monkeypatch.setattr(memory, "free_disk_bytes", lambda path: DISK_FREE)
    check_collect_disk(c, 576, tmp_path)
    monkeypatch.setattr(memory, "free_disk_bytes", lambda path: 16e9)
    with pytest.raises(memory.DiskLimitError, match=r"writes about 23\.\d GB .* but 16\.0 GB of disk is free"):
        check_collect_disk(c, 576, tmp_path)


def test_free_disk_of_a_path_not_yet_made(tmp_path):
    """The free space of a folder still to be created is that of its nearest existing parent."""
    assert memory.free_disk_bytes(tmp_path / "a" / "b" / "c") == memory.free_disk_bytes(tmp_path)


# ----------------------------------------------------------------------------------------------- memory


def _fake_lm(d_model: int = 576, vocab: int = 49152):
    """What check_real_fits reads of a model: SmolLM2-135M's width and vocabulary."""
    head = SimpleNamespace(weight=torch.empty(vocab, 0))
    model = SimpleNamespace(get_output_embeddings=lambda: head, device=torch.device("cpu"), config=SimpleNamespace())
    return SimpleNamespace(d_model=d_model, model=model)


def test_real_gpu_preset_fits_the_target_machine_and_is_refused_below(monkeypatch):
    """The real `gpu` preset's training, analysis and spliced ablation fit 128 GB (the CPU side here stands in for the
    H200's 139 GB, the tighter of the two), and are refused in one line with 4 GB free."""
    from real.config import preset, resolve
    from real.study import check_real_fits

    cfg = resolve(preset("gpu"))
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": RAM_FREE)
    check_real_fits(cfg, _fake_lm())
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 4e9)
    with pytest.raises(memory.MemoryLimitError, match=r"needs about .* GB of memory but 4\.0 GB is free"):
        check_real_fits(cfg, _fake_lm())


@pytest.mark.parametrize("name", ["paper", "synthbench16k", "synthbench16k_subspaces"])
def test_gpu_scale_synthetic_presets_fit_the_target_machine(name, monkeypatch):
    """The synthetic presets meant for a GPU fit 128 GB (truth, training, analysis) and are refused with 1 GB free."""
    from synthsae.config import preset

    cfg = preset(name)
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": RAM_FREE)
    monkeypatch.setattr(memory, "free_disk_bytes", lambda path: DISK_FREE)
    memory.check_run_fits(cfg, "cpu", out="runs/x")
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 1e9)
    with pytest.raises(memory.MemoryLimitError, match="1.0 GB is free"):
        memory.check_run_fits(cfg, "cpu")
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": RAM_FREE)
    monkeypatch.setattr(memory, "free_disk_bytes", lambda path: 1e6)
    with pytest.raises(memory.DiskLimitError, match=r"the run .* writes about .* but 1\.0 MB of disk is free"):
        memory.check_run_fits(cfg, "cpu", out="runs/x")


def test_synthetic_run_refused_on_planted_small_disk_before_writing(tmp_path, monkeypatch):
    """`synthsae run` and `synthsae train` with 10 kB of free disk exit 2 with one line and leave no folder."""
    from typer.testing import CliRunner

    from cli import app

    monkeypatch.setattr(memory, "free_disk_bytes", lambda path: 10_000)
    for cmd in ("run", "train"):
        out = tmp_path / cmd
        r = CliRunner().invoke(app, [cmd, "--preset", "tiny", "--out", str(out)])
        assert r.exit_code == 2, r.output
        errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(errors) == 1 and errors[0].startswith("error:") and "of disk is free" in errors[0], r.stderr
        assert not out.exists()


def test_real_gpu_preset_disk_plan(monkeypatch, tmp_path):
    """The real `gpu` preset's activations plus its training files fit the target's 64 GB of disk; with 25 GB free the
    run is refused (the activations alone would fit), with the activations already collected it is not."""
    from real.config import preset, resolve
    from real.study import check_real_disk

    cfg = resolve(preset("gpu"))
    monkeypatch.setattr(memory, "free_disk_bytes", lambda path: DISK_FREE)
    check_real_disk(cfg, _fake_lm(), tmp_path / "run")
    monkeypatch.setattr(memory, "free_disk_bytes", lambda path: 25e9)
    check_real_disk(cfg, _fake_lm(), tmp_path / "run", collect_only=True)
    with pytest.raises(memory.DiskLimitError, match=r"and training train.seeds = 8 x sae.d_sae = 16384 writes about 2\d\.\d GB"):
        check_real_disk(cfg, _fake_lm(), tmp_path / "run")
    (tmp_path / "run" / "acts").mkdir(parents=True)
    (tmp_path / "run" / "acts" / "meta.json").write_text("{}")
    check_real_disk(cfg, _fake_lm(), tmp_path / "run")
