"""Loaders without the libraries: detection, stacking, globs, refusals and one-line errors (exit 2), weights-only
frequency, --acts, and `synthsae analyze` end to end on 4 SAELens and 4 sparsify seeds.

Folders here are written by hand in each library's layout (synthsae/loaders/<library>.py) so these run without them;
tests/test_loaders_libraries.py checks the same loaders against the libraries themselves.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from cli import app
from synthsae.io import RunFileError
from synthsae.loaders import detect_format, expand_paths, load_folder, load_stack

runner = CliRunner()
D, M = 12, 32


def _one_line(out: str) -> str:
    return " ".join(out.split())


def _weights(seed: int, d: int = D, m: int = M, base: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Random canonical weights; with `base`, decoder rows = base + a little noise (seeds that agree)."""
    g = torch.Generator().manual_seed(seed)
    dec = torch.randn(m, d, generator=g)
    if base is not None:
        dec = base + 0.05 * dec
    dec = dec / dec.norm(dim=1, keepdim=True)
    return {"W_enc": dec.T.contiguous(), "b_enc": -0.1 * torch.rand(m, generator=g), "W_dec": dec,
            "b_dec": 0.1 * torch.randn(d, generator=g)}


def saelens_folder(path: Path, seed: int, arch: str = "standard", d: int = D, m: int = M, sparsity=None, base=None,
                   version: str = "6.5.0") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    w = _weights(seed, d, m, base)
    cfg = {"architecture": arch, "d_in": d, "d_sae": m, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": version, "hook_name": "blocks.2.hook_resid_post", "model_name": "gpt2"}}
    if arch == "topk":
        cfg.update(k=3, rescale_acts_by_decoder_norm=False)
    save_file(w, str(path / "sae_weights.safetensors"))
    if sparsity is not None:
        save_file({"sparsity": sparsity}, str(path / "sparsity.safetensors"))
    (path / "cfg.json").write_text(json.dumps(cfg))
    return path


def sparsify_folder(path: Path, seed: int, d: int = D, m: int = M, base=None, **cfg_extra) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    w = _weights(seed, d, m, base)
    save_file({"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"], "W_dec": w["W_dec"],
               "b_dec": w["b_dec"]}, str(path / "sae.safetensors"))
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": m, "k": 3,
           "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": d, **cfg_extra}
    (path / "cfg.json").write_text(json.dumps(cfg))
    return path


def dl_folder(path: Path, seed: int, d: int = D, m: int = M) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    w = _weights(seed, d, m)
    torch.save({"bias": w["b_dec"], "encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"],
                "decoder.weight": w["W_dec"].T.contiguous()}, path / "ae.pt")
    (path / "config.json").write_text(json.dumps({"trainer": {"dict_class": "AutoEncoder", "activation_dim": d,
                                                              "dict_size": m, "seed": 40 + seed, "layer": 3}}))
    return path


# ----------------------------------------------------------------------------------------------- formats


def test_detection_and_reference_encode_for_each_layout(tmp_path):
    """Each format is detected from its files, and encodes by its library's formula (written out here)."""
    x = torch.randn(20, D, generator=torch.Generator().manual_seed(0))
    w = _weights(1)
    sl, sp, dl = saelens_folder(tmp_path / "a", 1), sparsify_folder(tmp_path / "b", 1), dl_folder(tmp_path / "c", 1)
    assert [detect_format(p) for p in (sl, sp, dl)] == ["saelens", "sparsify", "dictionary_learning"]
    relu = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    torch.testing.assert_close(load_folder(sl).sae.encode(x)[0], relu)
    torch.testing.assert_close(load_folder(dl).sae.encode(x)[0], relu)
    top = load_folder(sp).sae.encode(x)[0]
    vals, idx = relu.topk(3, dim=1)
    torch.testing.assert_close(top, torch.zeros_like(relu).scatter(1, idx, vals))
    dl_loaded = load_folder(dl)
    assert dl_loaded.init_seed == 41 and dl_loaded.provenance.details["layer"] == 3


def test_format_override_and_unknown_format(tmp_path):
    sl = saelens_folder(tmp_path / "a", 1)
    assert load_folder(sl, "saelens").provenance.format == "saelens"
    with pytest.raises(RunFileError, match="sae.safetensors"):
        load_folder(sl, "sparsify")  # forced to the wrong format: its missing file is named
    with pytest.raises(RunFileError, match="must be one of saelens, sparsify, dictionary_learning"):
        load_folder(sl, "nope")
    with pytest.raises(RunFileError, match="not an SAE folder"):
        detect_format(tmp_path)


def test_stored_log10_sparsity_becomes_frequency_with_dead_at_the_floor(tmp_path):
    sp = torch.full((M,), -1.0)
    sp[:4] = -10.0  # log10(0 + 1e-10): never fired
    sp[4] = -3.0
    loaded = load_folder(saelens_folder(tmp_path / "a", 0, sparsity=sp))
    assert loaded.frequency[:4].eq(0).all()
    torch.testing.assert_close(loaded.frequency[4], torch.tensor(1e-3))
    torch.testing.assert_close(loaded.frequency[5], torch.tensor(0.1))
    assert "sparsity.safetensors" in loaded.frequency_source


def test_unsupported_settings_are_refused_with_the_field_named(tmp_path):
    p = saelens_folder(tmp_path / "a", 0)
    cfg = json.loads((p / "cfg.json").read_text())
    for field, value, allowed in (("normalize_activations", "layer_norm", "none, expected_average_only_in"),
                                  ("architecture", "temporal", "standard")):
        (p / "cfg.json").write_text(json.dumps({**cfg, field: value}))
        with pytest.raises(RunFileError, match=f"{field}.*{value}") as e:
            load_folder(p)
        assert allowed in str(e.value) and "\n" not in str(e.value)
    for flag in ("transcode", "skip_connection"):
        q = sparsify_folder(tmp_path / flag, 0, **{flag: True})
        with pytest.raises(RunFileError, match=f"{flag} = true is not supported"):
            load_folder(q)
    q = sparsify_folder(tmp_path / "gm", 0, activation="groupmax")
    with pytest.raises(RunFileError, match="activation = 'groupmax'.*supported: topk"):
        load_folder(q)


# ----------------------------------------------------------------------------------------------- pickles


class _Evil:
    """A pickle payload whose unpickling would create a file (it must never run)."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_that_is_not_weights_only_is_refused_and_nothing_runs(tmp_path):
    folder = dl_folder(tmp_path / "trainer_0", 0)
    marker = tmp_path / "pwned.txt"
    state = {"encoder.weight": torch.zeros(M, D), "payload": _Evil(str(marker))}
    torch.save(state, folder / "ae.pt")
    with open(tmp_path / "check.pkl", "wb") as f:  # the payload is live: plain pickle.load would create the file
        pickle.dump(_Evil(str(tmp_path / "control.txt")), f)
    with open(tmp_path / "check.pkl", "rb") as f:
        pickle.load(f).close()
    assert (tmp_path / "control.txt").exists()
    with pytest.raises(RunFileError, match="refused: not a weights-only state dict, nothing was run") as e:
        load_folder(folder)
    assert "\n" not in str(e.value)
    assert not marker.exists()
    res = runner.invoke(app, ["analyze", str(folder), str(dl_folder(tmp_path / "trainer_1", 1)), "--device", "cpu"])
    assert res.exit_code == 2 and "refused" in _one_line(res.output) and not marker.exists()


def test_truncated_or_non_dict_torch_file_is_one_line_error(tmp_path):
    folder = dl_folder(tmp_path / "trainer_0", 0)
    data = (folder / "ae.pt").read_bytes()
    (folder / "ae.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunFileError, match="unreadable or corrupted torch file") as e:
        load_folder(folder)
    assert "\n" not in str(e.value)
    torch.save([torch.zeros(2)], folder / "ae.pt")
    with pytest.raises(RunFileError, match="expected a state dict of tensors"):
        load_folder(folder)


# ----------------------------------------------------------------------------------------------- stacking & paths


def test_mixed_shapes_name_the_odd_folder(tmp_path):
    a, b = saelens_folder(tmp_path / "s0", 0), saelens_folder(tmp_path / "s1", 1)
    odd = saelens_folder(tmp_path / "s2", 2, m=M + 8)
    with pytest.raises(RunFileError) as e:
        load_stack([a, b, odd])
    assert str(e.value).startswith(str(odd)) and f"d_sae={M + 8}" in str(e.value)
    arch = saelens_folder(tmp_path / "s3", 3, arch="topk")
    with pytest.raises(RunFileError, match=f"^{arch}: topk"):
        load_stack([a, arch])
    res = runner.invoke(app, ["analyze", str(a), str(b), str(odd), "--device", "cpu"])
    assert res.exit_code == 2 and "s2" in _one_line(res.output)
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1


def test_globs_and_parent_folders(tmp_path):
    for s in range(3):
        sparsify_folder(tmp_path / "sp" / f"run{s}" / "layers.6", s)
        saelens_folder(tmp_path / "sl" / f"seed_{s}", s)
    want = [tmp_path / "sp" / f"run{s}" / "layers.6" for s in range(3)]
    assert expand_paths([str(tmp_path / "sp" / "*" / "layers.6")]) == want
    assert expand_paths([tmp_path / "sp"]) == want  # one SAE sub-folder per run
    assert expand_paths([tmp_path / "sl"]) == [tmp_path / "sl" / f"seed_{s}" for s in range(3)]
    sparsify_folder(tmp_path / "sp" / "run0" / "layers.9", 0)
    with pytest.raises(RunFileError, match="several SAE folders"):
        expand_paths([tmp_path / "sp"])
    with pytest.raises(RunFileError, match="given twice"):
        expand_paths([tmp_path / "sl" / "seed_0", tmp_path / "sl" / "seed_0"])
    with pytest.raises(RunFileError, match="matches nothing"):
        expand_paths([str(tmp_path / "none*")])


@pytest.mark.parametrize("damage", ["missing_weights", "missing_cfg", "truncated", "bad_json", "wrong_shape"])
def test_damaged_folders_are_one_line_errors_exit_2(tmp_path, damage):
    good = saelens_folder(tmp_path / "s0", 0)
    bad = saelens_folder(tmp_path / "s1", 1)
    w = bad / "sae_weights.safetensors"
    if damage == "missing_weights":
        w.unlink()
        fmt_args = ["--format", "saelens"]
    else:
        fmt_args = []
    if damage == "missing_cfg":
        (bad / "cfg.json").unlink()
        fmt_args = ["--format", "saelens"]
    if damage == "truncated":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    if damage == "bad_json":
        (bad / "cfg.json").write_text("{not json")
    if damage == "wrong_shape":
        save_file({**_weights(1), "W_dec": torch.zeros(M, D + 1)}, str(w))
    res = runner.invoke(app, ["analyze", str(good), str(bad), "--device", "cpu", *fmt_args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "s1" in lines[0]
    assert not (tmp_path / "metrics.json").exists()  # nothing written


# ----------------------------------------------------------------------------------------------- analysis


def _acts(tmp_path: Path, n: int = 600, d: int = D, key: str = "acts") -> Path:
    p = tmp_path / "acts.safetensors"
    save_file({key: torch.randn(n, d, generator=torch.Generator().manual_seed(9))}, str(p))
    return p


def test_weights_only_vs_given_activations(tmp_path):
    base = torch.randn(M, D, generator=torch.Generator().manual_seed(100))
    folders = [saelens_folder(tmp_path / "sl" / f"seed_{s}", s, base=base) for s in range(3)]
    res = runner.invoke(app, ["analyze", str(tmp_path / "sl"), "--device", "cpu", "--no-report"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "sl" / "metrics.json").read_text())
    assert m["analysis"]["frequency"] is None and "ablation" not in m
    assert m["sources"]["frequency_source"].startswith("not measured")
    assert [f["path"] for f in m["sources"]["folders"]] == [str(f) for f in folders]
    assert m["sources"]["folders"][0]["version"] == "6.5.0" and m["sources"]["libraries"] == ["sae_lens 6.5.0"]
    assert m["analysis"]["stability"]["mean"]["value"] > 0.9  # near-copies of one dictionary are stable
    res = runner.invoke(app, ["analyze", str(tmp_path / "sl"), "--device", "cpu", "--no-report", "--acts", str(_acts(tmp_path))])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "sl" / "metrics.json").read_text())
    assert m["analysis"]["settings"]["frequency_source"].startswith("measured on 600 given activations")
    assert len(m["sources"]["activations"]["fvu_per_seed"]) == 3 and m["ablation"]["eval_tokens"] == 600
    assert m["sources"]["ablation_folders"] == [str(f) for f in folders]
    # weights only again on the same folders: that ablation stays
    runner.invoke(app, ["analyze", str(tmp_path / "sl"), "--device", "cpu", "--no-report"])
    m = json.loads((tmp_path / "sl" / "metrics.json").read_text())
    assert m["ablation"]["eval_tokens"] == 600 and m["sources"]["activations"] is None
    # another set of folders into the same metrics.json: the old ablation (of other SAEs) is dropped
    runner.invoke(app, ["analyze", str(folders[0]), str(folders[1]), "--device", "cpu", "--no-report", "--out",
                        str(tmp_path / "sl" / "metrics.json")])
    assert "ablation" not in json.loads((tmp_path / "sl" / "metrics.json").read_text())


def test_bad_acts_are_one_line_errors(tmp_path):
    for s in range(2):
        saelens_folder(tmp_path / "sl" / f"seed_{s}", s)
    wrong = _acts(tmp_path, d=D + 1)
    res = runner.invoke(app, ["analyze", str(tmp_path / "sl"), "--device", "cpu", "--acts", str(wrong)])
    assert res.exit_code == 2 and f"d_in = {D}" in _one_line(res.output)
    save_file({"a": torch.zeros(4, D), "b": torch.zeros(4, D)}, str(tmp_path / "two.safetensors"))
    res = runner.invoke(app, ["analyze", str(tmp_path / "sl"), "--device", "cpu", "--acts", str(tmp_path / "two.safetensors")])
    assert res.exit_code == 2 and "cannot tell which tensor" in _one_line(res.output)
    res = runner.invoke(app, ["analyze", str(tmp_path / "sl"), "--format", "nope"])
    assert res.exit_code == 2 and "--format = 'nope'" in _one_line(res.output)


def test_acts_folder_of_shards(tmp_path):
    from synthsae.loaders.acts import read_activations

    shards = tmp_path / "cache"
    shards.mkdir()
    for i in range(3):
        save_file({"activations": torch.full((5, 2, D), float(i))}, str(shards / f"shard_{i:03d}.safetensors"))
    x = read_activations(shards, D)
    assert x.shape == (30, D) and x[0, 0] == 0 and x[-1, 0] == 2


# ----------------------------------------------------------------------------------------------- end to end


SECTIONS = ["Stability distribution", "Stability against firing frequency", "Truth recovery by component rank",
            "Unstable latents tile reproducible subspaces", "Functional asymmetry (ablation)", "Pooling seeds"]


@pytest.mark.parametrize("library", ["saelens", "sparsify"])
def test_analyze_four_seeds_of_a_library_gives_the_report_sections(tmp_path, library):
    """4 seeds written by the library itself (skipped without it) through `synthsae analyze` (a glob / a parent),
    `synthsae pool` and `synthsae report`: the same six sections as our own runs, provenance on top."""
    base = torch.randn(M, D, generator=torch.Generator().manual_seed(7))
    if library == "saelens":
        sl = pytest.importorskip("sae_lens", reason="sae-lens not installed (pip install -e '.[test]')")
        for s in range(4):
            sae = sl.TopKSAE(sl.TopKSAEConfig(d_in=D, d_sae=M, k=3))
            w = _weights(s, base=base)
            with torch.no_grad():
                for k, v in w.items():
                    getattr(sae, k).copy_(v)
            sae.save_model(tmp_path / "runs" / f"seed_{s}")
        save_file({"sparsity": torch.full((M,), -2.0)}, str(tmp_path / "runs" / "seed_0" / "sparsity.safetensors"))
        target = [str(tmp_path / "runs")]
    else:
        sp = pytest.importorskip("sparsify", reason="eai-sparsify not installed (pip install -e '.[test]')")
        for s in range(4):
            coder = sp.SparseCoder(D, sp.SparseCoderConfig(num_latents=M, k=3))
            w = _weights(s, base=base)
            with torch.no_grad():
                coder.encoder.weight.copy_(w["W_enc"].T)
                coder.encoder.bias.copy_(w["b_enc"])
                coder.W_dec.copy_(w["W_dec"])
                coder.b_dec.copy_(w["b_dec"])
            coder.save_to_disk(tmp_path / "runs" / f"run{s}" / "layers.4")
        target = [str(tmp_path / "runs" / "*" / "layers.4")]
    acts = _acts(tmp_path)
    res = runner.invoke(app, ["analyze", *target, "--device", "cpu", "--acts", str(acts)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["pool", *target, "--device", "cpu", "--acts", str(acts), "--steps", "5", "--width", str(M),
                              "--rule", "coverage"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["report", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "runs" / "report.md").read_text()
    for title in SECTIONS:
        assert f"## {title}" in md
    verdicts = dict(line.split(" | ")[:2] for line in md.splitlines() if line.startswith("| ") and " | **" in line)
    measured = {t for t, v in verdicts.items() if "not measured" not in v}
    assert measured >= {"| Stability distribution", "| Stability against firing frequency",
                        "| Functional asymmetry (ablation)", "| Pooling seeds"}
    lib = "sae_lens" if library == "saelens" else "sparsify"
    assert f"written by {lib}" in md and md.count("- seed ") == 4
    assert os.fspath(tmp_path / "runs") in md
