"""Every model's own input conventions: BOS at the start of each window, tiny random Gemma 2 / Gemma 3 / Qwen2 models
(built in the test, BOS-defining tokenizers, no downloads) through collection and the spliced ablation, GGUF files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from real_helpers import build_tiny, build_tiny_llama, corpus_file, write_tiny_qwen2_gguf  # noqa: E402

KINDS = ["gemma3", "qwen2", "gemma2"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="module")
def corpus(root):
    return corpus_file(root)


@pytest.fixture(scope="module", params=KINDS)
def tiny_lm(request, root):
    from real.model import load_model

    folder = build_tiny(request.param, root / request.param)
    return request.param, folder, load_model(str(folder))


def _cfg(folder, corpus, **kw):
    from real.activations import CollectConfig

    base = dict(model=str(folder), layer=1, ctx_len=24, train_tokens=600, eval_tokens=200, batch_contexts=8,
                shard_tokens=300, corpus=[str(corpus)])
    base.update(kw)
    return CollectConfig(**base)


def _cli(*args):
    from typer.testing import CliRunner

    from cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


# ----------------------------------------------------------------------------------------------- BOS


def test_collect_starts_each_window_with_bos_and_keeps_what_the_model_computes(tiny_lm, corpus, tmp_path):
    """Windows are BOS + text; position 0 (the BOS) is never kept; kept rows are the model's activations on the
    window with its BOS; meta.json says so."""
    from real.activations import collect
    from real.model import hidden_after

    kind, folder, lm = tiny_lm
    bos = lm.tokenizer.bos_token_id
    assert bos is not None
    store = collect(_cfg(folder, corpus), tmp_path / "acts", lm=lm, progress=False)
    tokens = store.tokens()
    assert bool((tokens[:, 0] == bos).all()) and not bool((tokens[:, 1:] == bos).any())
    assert store.meta["prepend_bos"] is True and store.meta["bos_token_id"] == bos
    assert store.meta["config"]["prepend_bos"] is True
    pos = store.load("train", "positions")
    assert int(pos.min()) >= 1
    ctx = store.load("eval", "context_ids", limit=6)
    p = store.load("eval", "positions", limit=6)
    x = store.load("eval", limit=6)
    h = hidden_after(lm, tokens[int(ctx[0]) : int(ctx[0]) + 1].long(), 1)[0]
    assert torch.allclose(x, h[p], atol=1e-5)
    # the same text without BOS gives other activations at the same text tokens: the setting matters
    h_nobos = hidden_after(lm, tokens[int(ctx[0]) : int(ctx[0]) + 1, 1:].long(), 1)[0]
    assert float((h[1:] - h_nobos).abs().max()) > 1e-3


def test_no_prepend_bos_and_a_folder_of_the_other_setting_is_refused(tiny_lm, corpus, tmp_path):
    from real.activations import collect
    from synthsae.config import ConfigError

    kind, folder, lm = tiny_lm
    plain = collect(_cfg(folder, corpus, prepend_bos=False), tmp_path / "plain", lm=lm, progress=False)
    t = plain.tokens()
    assert plain.meta["prepend_bos"] is False and plain.meta["bos_token_id"] is None
    assert not bool((t == lm.tokenizer.bos_token_id).any())
    with_bos = collect(_cfg(folder, corpus), tmp_path / "bos", lm=lm, progress=False)
    # the windows hold the same text stream: BOS + its next 23 tokens against 24 consecutive tokens
    assert torch.equal(with_bos.tokens()[0, 1:], t.flatten()[:23])
    before = {p: p.read_bytes() for p in sorted((tmp_path / "plain").rglob("*")) if p.is_file()}
    with pytest.raises(ConfigError, match="prepend_bos: cached False, requested True"):
        collect(_cfg(folder, corpus), tmp_path / "plain", lm=lm, progress=False)
    with pytest.raises(ConfigError, match="prepend_bos: cached True, requested False"):
        collect(_cfg(folder, corpus, prepend_bos=False), tmp_path / "bos", lm=lm, progress=False)
    assert before == {p: p.read_bytes() for p in sorted((tmp_path / "plain").rglob("*")) if p.is_file()}


def test_a_folder_from_before_the_bos_setting_counts_as_collected_without_bos(root, corpus, tmp_path):
    """meta.json written before prepend_bos existed has no such key: its windows had no BOS, so a BOS request is refused."""
    from real.activations import collect
    from real.model import load_model
    from synthsae.config import ConfigError

    lm = load_model(str(build_tiny("qwen2", root / "qwen2_old")))
    collect(_cfg(root / "qwen2_old", corpus, prepend_bos=False), tmp_path / "old", lm=lm, progress=False)
    meta_path = tmp_path / "old" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["prepend_bos"], meta["bos_token_id"]
    meta_path.write_text(json.dumps(meta))
    assert collect(_cfg(root / "qwen2_old", corpus, prepend_bos=False), tmp_path / "old", lm=lm, progress=False).meta["complete"]
    with pytest.raises(ConfigError, match="prepend_bos: cached False"):
        collect(_cfg(root / "qwen2_old", corpus), tmp_path / "old", lm=lm, progress=False)


def test_a_tokenizer_without_bos_gets_plain_windows(root, corpus, tmp_path):
    from real.activations import collect
    from real.model import load_model

    folder = build_tiny_llama(root / "llama_nobos")
    lm = load_model(str(folder))
    assert lm.tokenizer.bos_token_id is None
    store = collect(_cfg(folder, corpus), tmp_path / "acts", lm=lm, progress=False)
    assert store.meta["prepend_bos"] is False and store.meta["bos_token_id"] is None
    assert store.meta["config"]["prepend_bos"] is True  # asked for, but there is no BOS to prepend


def test_cli_no_prepend_bos_is_recorded_and_a_run_of_the_other_setting_refused(root, corpus, tmp_path):
    folder = build_tiny("qwen2", root / "qwen2_cli")
    common = ["--model", folder, "--corpus", corpus, "--preset", "quick", "--layer", "1", "--tokens", "800"]
    out = tmp_path / "run"
    r = _cli("real", "collect", "--out", out, "--no-prepend-bos", *common)
    assert r.exit_code == 0, r.output
    assert "left out position 0 (no BOS)" in r.stdout and "corpus: read 1 of 1 files" in r.stdout
    meta = json.loads((out / "acts" / "meta.json").read_text())
    assert meta["prepend_bos"] is False
    assert json.loads((out / "real_config.json").read_text())["collect"]["prepend_bos"] is False
    r = _cli("real", "collect", "--out", out, *common)
    assert r.exit_code == 2 and "another config (differs in collect)" in r.stderr, r.output
    r = _cli("real", "collect", "--out", tmp_path / "run2", *common)
    assert r.exit_code == 0, r.output
    assert "left out position 0 (BOS token 3)" in r.stdout
    assert json.loads((tmp_path / "run2" / "acts" / "meta.json").read_text())["prepend_bos"] is True


def test_ctx_len_longer_than_the_model_takes_is_refused(tiny_lm, corpus, tmp_path):
    from real.activations import collect
    from synthsae.config import ConfigError

    kind, folder, lm = tiny_lm
    with pytest.raises(ConfigError, match="collect.ctx_len = 300: longer than the 256 positions"):
        collect(_cfg(folder, corpus, ctx_len=300), tmp_path / "acts", lm=lm, progress=False)
    assert not (tmp_path / "acts").exists()


# ----------------------------------------------------------------------------------------------- splice


def _random_sae(d: int, seeds: int = 2, m: int = 48, k: int = 6):
    from synthsae.config import SAEConfig
    from synthsae.sae import build_sae

    torch.manual_seed(0)
    sae = build_sae(SAEConfig(variant="topk", d_sae=m, k=k), d, list(range(seeds)), "cpu", torch.float32)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
    return sae


def _windows(lm, corpus, n=5, T=20):
    from real.corpus import pack_contexts, read_documents

    docs, _ = read_documents([corpus])
    return pack_contexts(docs, lm.tokenizer, n, T, seed=2, bos=lm.tokenizer.bos_token_id)


@pytest.mark.parametrize("layer", [0, 2])
def test_splice_suffix_reproduces_the_hook_path(tiny_lm, corpus, layer):
    """Later blocks run from the spliced stream with the model's own masks (sliding windows of 5 tokens in 20-token
    windows for Gemma), embedding scaling and logit soft-capping give the numbers of rerunning the whole model."""
    from real.splice import splice_eval

    kind, folder, lm = tiny_lm
    tokens = _windows(lm, corpus)
    sae = _random_sae(lm.d_model)
    masks = torch.rand(3, 2, 48, generator=torch.Generator().manual_seed(3)) < torch.tensor([0.0, 0.4, 1.0])[:, None, None]
    kw = dict(scale=2.0, masks=masks, batch_contexts=2)
    auto = splice_eval(lm, sae, tokens, layer, **kw)
    slow = splice_eval(lm, sae, tokens, layer, path="hook", **kw)
    assert auto["path"] == "suffix", kind
    for key in ("ce", "kl", "fvu"):
        assert torch.allclose(auto[key], slow[key], atol=1e-4, rtol=0), key
    for key in ("ce_clean", "ce_zero", "kl_zero"):
        assert auto[key] == pytest.approx(slow[key], abs=1e-4), key
    assert float((auto["ce"][1:] - auto["ce"][0]).abs().max()) > 1e-3


def test_suffix_without_the_models_own_arguments_falls_back_by_its_own_check(root, corpus, monkeypatch):
    """Gemma 3's blocks get different masks (sliding / full) and its logits are soft-capped: a suffix that gives every
    block the last block's arguments, or skips the soft-capping, does not reproduce the clean logits, and the
    ablation takes the hook path (with the hook path's numbers)."""
    import real.model as M
    from real.splice import splice_eval

    lm = M.load_model(str(build_tiny("gemma3", root / "gemma3_fallback")))
    tokens = _windows(lm, corpus, n=2)
    sae = _random_sae(lm.d_model)
    kw = dict(scale=2.0, batch_contexts=2)
    slow = splice_eval(lm, sae, tokens, 0, path="hook", **kw)
    real_suffix = M.model_suffix

    class OneMask(M.Suffix):
        def clean(self, ids):
            h, logits, calls = super().clean(ids)
            return h, logits, M.LayerCalls([calls.calls[-1]] * len(calls.calls), calls.batch)

    monkeypatch.setattr(M, "model_suffix", lambda lm_, layer: OneMask(**vars(real_suffix(lm_, layer))))
    wrong = splice_eval(lm, sae, tokens, 0, **kw)
    assert wrong["path"] == "hook" and torch.equal(wrong["ce"], slow["ce"])

    def no_cap(lm_, layer):
        s = real_suffix(lm_, layer)
        s.softcap = None
        return s

    monkeypatch.setattr(M, "model_suffix", no_cap)
    assert splice_eval(lm, sae, tokens, 0, **kw)["path"] == "hook"
    monkeypatch.setattr(M, "model_suffix", real_suffix)
    assert real_suffix(lm, 0).softcap == pytest.approx(2.0)
    assert splice_eval(lm, sae, tokens, 0, **kw)["path"] == "suffix"


# ----------------------------------------------------------------------------------------------- GGUF


def test_a_gguf_of_another_architecture_loads_through_the_cache(tmp_path, corpus, monkeypatch):
    """--model FILE.gguf: a Qwen2 GGUF written here is dequantized once into the cache and gives the logits of the
    model it was written from; its tokenizer's BOS starts each window; a second load reuses the cache."""
    from real.activations import collect
    from real.model import load_model

    monkeypatch.setenv("SYNTHSAE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny-qwen2.gguf"
    ref = write_tiny_qwen2_gguf(path)
    lm = load_model(str(path))
    assert type(lm.model).__name__ == "Qwen2ForCausalLM" and lm.tokenizer.bos_token_id == 1
    ids = torch.randint(2, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(lm.model(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-5)
    cached = list((tmp_path / "cache" / "models").iterdir())
    assert len(cached) == 1 and (cached[0] / "DONE").is_file()
    again = load_model(str(path))
    assert again.fingerprint == lm.fingerprint and list((tmp_path / "cache" / "models").iterdir()) == cached
    store = collect(_cfg(path, corpus, ctx_len=16, train_tokens=150, eval_tokens=45), tmp_path / "acts", lm=lm,
                    progress=False)
    assert bool((store.tokens()[:, 0] == 1).all()) and store.meta["prepend_bos"] is True


def test_bad_model_files_are_one_line_errors(tmp_path, corpus):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf at all")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0" * 16)
    for model, expect in ((fake, "not a GGUF file"), (other, "a file that is not .gguf"),
                          (tmp_path / "missing", "no such file or folder")):
        r = _cli("real", "collect", "--out", tmp_path / "out", "--model", model, "--corpus", corpus, "--preset", "quick")
        assert r.exit_code == 2, r.output
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], r.stderr


# ----------------------------------------------------------------------------------------------- presets


def test_gpu_preset_is_sized_in_steps_from_the_converged_cpu_point():
    """The gpu preset's steps are the CPU default's converged steps x lr, at the gpu lr, times the width allowance;
    fewer tokens keep the steps (more passes); --passes decides the steps again; a bad `steps` is one line."""
    from real.config import CONVERGED_STEPS_X_LR, GPU_STEPS, WIDTH_ALLOWANCE, preset, resolve, with_overrides
    from synthsae.config import ConfigError

    default = resolve(preset("default"))
    assert default.train.steps * default.train.lr == pytest.approx(CONVERGED_STEPS_X_LR)  # the measured point
    gpu = resolve(preset("gpu"))
    assert gpu.train.steps == GPU_STEPS == round(WIDTH_ALLOWANCE * CONVERGED_STEPS_X_LR / gpu.train.lr) == 37_500
    assert gpu.passes == 8  # ceil(37,500 x 4,096 / 20M)
    small = with_overrides(preset("gpu"), tokens=4_662_420)
    assert small.train.steps == 37_500 and small.passes == 33
    assert with_overrides(preset("gpu"), passes=2).train.steps == 2 * 20_000_000 // 4096
    assert with_overrides(preset("gpu"), prepend_bos=False).collect.prepend_bos is False
    bad = preset("gpu")
    bad.steps = -1
    with pytest.raises(ConfigError, match="steps = -1: must be an integer >= 0"):
        resolve(bad)
