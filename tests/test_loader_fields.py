"""Every field of an SAE folder is checked once, in the loader: a bad value is a one-line RunFileError naming the
file and the field, never a traceback and never accepted silently (SAELens, synthsae's own, sparsify,
dictionary_learning, --acts, seed folder names)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import make_sae
from synthsae.io import RunFileError, save_seed_folder, seed_folders
from synthsae.loaders import load_folder
from synthsae.loaders.acts import read_activations
from test_loaders import D, M, dl_folder, saelens_folder, sparsify_folder


def _edit(path: Path, fn) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


def _ours(path: Path) -> Path:
    sae = make_sae(1, D, M, "topk", k=3)
    return save_seed_folder(path, sae, 0, {})


def _huge(path: Path) -> None:
    path.write_text(path.read_text().replace(f'"d_in": {D}', '"d_in": ' + "9" * 5000))


def _retype(file: Path, key: str, fn) -> None:
    from safetensors.torch import load_file

    t = load_file(str(file))
    t[key] = fn(t[key])
    save_file(t, str(file))


CASES = {
    # SAELens (another library's files)
    "saelens architecture list": (lambda p: saelens_folder(p, 0), lambda p: _edit(p / "cfg.json", lambda c: c.update(architecture=["topk"])), "architecture"),
    "saelens huge integer": (lambda p: saelens_folder(p, 0), lambda p: _huge(p / "cfg.json"), "too long"),
    "saelens d_sae 1e20": (lambda p: saelens_folder(p, 0), lambda p: _edit(p / "cfg.json", lambda c: c.update(d_sae=10**20)), "d_sae"),
    "saelens integer weights": (lambda p: saelens_folder(p, 0), lambda p: _retype(p / "sae_weights.safetensors", "W_dec", lambda t: t.long()), "floating point"),
    "saelens 2-D sparsity": (lambda p: saelens_folder(p, 0, sparsity=torch.zeros(1, M)), None, "sparsity"),
    "saelens NaN sparsity": (lambda p: saelens_folder(p, 0, sparsity=torch.full((M,), float("nan"))), None, "finite"),
    "saelens metadata list": (lambda p: saelens_folder(p, 0), lambda p: _edit(p / "cfg.json", lambda c: c.update(metadata=[1])), "metadata"),
    # synthsae's own folders (metadata.sae)
    "ours k x": (_ours, lambda p: _edit(p / "cfg.json", lambda c: c["metadata"]["sae"].update(k="x")), "metadata.sae.k"),
    "ours k 0": (_ours, lambda p: _edit(p / "cfg.json", lambda c: c["metadata"]["sae"].update(k=0)), "metadata.sae.k"),
    "ours k 1e20": (_ours, lambda p: _edit(p / "cfg.json", lambda c: c["metadata"]["sae"].update(k=10**20)), "metadata.sae.k"),
    "ours unknown field": (_ours, lambda p: _edit(p / "cfg.json", lambda c: c["metadata"]["sae"].update(frobnicate=1)), "frobnicate"),
    "ours metadata list": (_ours, lambda p: _edit(p / "cfg.json", lambda c: c.update(metadata=["x"])), "metadata"),
    "ours variant list": (_ours, lambda p: _edit(p / "cfg.json", lambda c: c["metadata"].update(variant=["topk"])), "variant"),
    # sparsify
    "sparsify expansion_factor x": (lambda p: sparsify_folder(p, 0, num_latents=0, expansion_factor="x"), None, "expansion_factor"),
    "sparsify 0-d encoder": (lambda p: sparsify_folder(p, 0), lambda p: _retype(p / "sae.safetensors", "encoder.weight", lambda t: t[0, 0].clone()), "encoder.weight"),
    # dictionary_learning
    "dl class list": (lambda p: dl_folder(p, 0), lambda p: _edit(p / "config.json", lambda c: c["trainer"].update(dict_class=["AutoEncoder"])), "dict_class"),
    "dl seed x": (lambda p: dl_folder(p, 0), lambda p: _edit(p / "config.json", lambda c: c["trainer"].update(seed="x")), "trainer.seed"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_field_is_one_line_error(tmp_path, name):
    make, damage, word = CASES[name]
    folder = make(tmp_path / "f")
    if damage is not None:
        damage(folder)
    with pytest.raises(RunFileError) as e:
        load_folder(folder)
    msg = str(e.value)
    assert "\n" not in msg and word in msg and str(folder) in msg, msg


def test_integer_activations_are_refused(tmp_path):
    p = tmp_path / "acts.safetensors"
    save_file({"acts": torch.ones(10, D, dtype=torch.int64)}, str(p))
    with pytest.raises(RunFileError, match="dtype torch.int64.*floating point"):
        read_activations(p, D)


def test_seed_folder_with_a_non_numeric_name_is_named(tmp_path):
    for name in ("seed_0", "seed_abc"):
        (tmp_path / "seeds" / name).mkdir(parents=True)
    with pytest.raises(RunFileError, match="seed_abc: not a seed folder name"):
        seed_folders(tmp_path)


def test_stack_that_would_not_fit_is_refused_before_allocation(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    big = 2**26  # 2 seeds of 2^26 x 2^26 float32 weights: petabytes
    for s in range(2):
        f = _ours(tmp_path / "saes" / f"seed_{s}")
        _edit(f / "cfg.json", lambda c: (c.update(d_in=big, d_sae=big), c["metadata"]["sae"].update(d_sae=big)))
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "saes"), "--device", "cpu", "--out", str(tmp_path / "o")])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "GB of memory" in lines[0] and "d_sae = 67108864" in lines[0], res.output
    assert not (tmp_path / "o").exists()
