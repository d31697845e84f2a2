"""Our loaders against each library itself: the library builds an SAE, saves it with its own save function, we load
the folder and must encode and decode random inputs as the library does (atol 1e-5).

Libraries: sae-lens and eai-sparsify are in the `test` extra (CI runs these). dictionary-learning is in the
`formats` extra only: it pulls nnsight, umap-learn, numba, diffusers and a torchvision that must match torch's
build, too heavy and fragile for CI; its test runs where it is installed and is skipped with that reason elsewhere.
"""

from __future__ import annotations

import json

import pytest
import torch

from synthsae.loaders import load_folder, load_stack

D, M = 16, 48
ATOL = 1e-5


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random at a realistic scale (weights ~ 1/sqrt(fan-in), biases ~ 0.1), so biases matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in module.named_parameters():
            scale = 1 / D**0.5 if p.dim() == 2 else 0.1
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _inputs(seed: int = 1, n: int = 128) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs.to(ours.dtype), atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------------- SAELens


def _saelens_cases():
    sl = pytest.importorskip("sae_lens", reason="sae-lens not installed (pip install -e '.[test]')")
    return sl


@pytest.mark.parametrize("arch", ["standard", "topk", "topk_rescaled", "jumprelu", "gated", "no_b_dec_in"])
def test_saelens_inference_saes_match_the_library(tmp_path, arch):
    sl = _saelens_cases()
    kinds = {
        "standard": (sl.StandardSAE, sl.StandardSAEConfig, {}),
        "no_b_dec_in": (sl.StandardSAE, sl.StandardSAEConfig, {"apply_b_dec_to_input": False}),
        "topk": (sl.TopKSAE, sl.TopKSAEConfig, {"k": 5}),
        "topk_rescaled": (sl.TopKSAE, sl.TopKSAEConfig, {"k": 5, "rescale_acts_by_decoder_norm": True}),
        "jumprelu": (sl.JumpReLUSAE, sl.JumpReLUSAEConfig, {}),
        "gated": (sl.GatedSAE, sl.GatedSAEConfig, {}),
    }
    cls, cfg_cls, kw = kinds[arch]
    theirs = cls(cfg_cls(d_in=D, d_sae=M, **kw))
    _randomise(theirs)
    if arch == "jumprelu":
        with torch.no_grad():
            theirs.threshold.copy_(0.2 * torch.rand(M, generator=torch.Generator().manual_seed(5)))
    theirs.save_model(tmp_path / arch)
    loaded = load_folder(tmp_path / arch)
    x = _inputs()
    with torch.no_grad():
        a_theirs, a_ours = theirs.encode(x), loaded.sae.encode(x)[0]
        assert (a_theirs > 0).any() and (a_theirs == 0).any()  # the non-linearity is exercised
        _close(a_ours, a_theirs)
        _close(loaded.sae.decode(a_ours[None])[0], theirs.decode(a_theirs))
    assert loaded.provenance.library == "sae_lens" and loaded.provenance.version == sl.__version__
    assert loaded.frequency is None  # save_model writes no sparsity file


@pytest.mark.parametrize("kind", ["batchtopk", "matryoshka"])
def test_saelens_batchtopk_checkpoint_and_inference_save_match(tmp_path, kind):
    """Training checkpoints keep architecture batchtopk / matryoshka_batchtopk and a scalar topk_threshold;
    save_inference_model writes jumprelu with that threshold everywhere. Both must encode like the library's
    inference SAE loaded from the inference folder."""
    sl = _saelens_cases()
    if kind == "batchtopk":
        theirs = sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(d_in=D, d_sae=M, k=5))
    else:
        theirs = sl.MatryoshkaBatchTopKTrainingSAE(sl.MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=M, k=5,
                                                                                            matryoshka_widths=[16, M]))
    _randomise(theirs)
    with torch.no_grad():
        theirs.topk_threshold.fill_(0.15)
    theirs.save_model(tmp_path / "ckpt")
    theirs.save_inference_model(tmp_path / "inference")
    ckpt_cfg = json.loads((tmp_path / "ckpt" / "cfg.json").read_text())
    assert ckpt_cfg["architecture"] in ("batchtopk", "matryoshka_batchtopk")
    assert json.loads((tmp_path / "inference" / "cfg.json").read_text())["architecture"] == "jumprelu"
    reference = sl.SAE.load_from_disk(str(tmp_path / "inference"), device="cpu")
    x = _inputs()
    with torch.no_grad():
        a_ref = reference.encode(x)
        assert (a_ref > 0).any() and (a_ref == 0).any()
        for folder in ("ckpt", "inference"):
            ours = load_folder(tmp_path / folder).sae
            a = ours.encode(x)[0]
            _close(a, a_ref)
            _close(ours.decode(a[None])[0], reference.decode(a_ref))


@pytest.mark.parametrize("activation", ["relu", "topk"])
def test_saelens_flat_pre6_config_matches_the_library_loader(tmp_path, activation):
    """Configs from before SAELens 6.0 are flat (hook_point, activation_fn_str, activation_fn_kwargs.k, no
    architecture). No pre-6 SAELens installs beside 6.x, so the folder is written by hand (synthsae/loaders/saelens.py) and
    checked against SAELens 6's own loader of such configs (its pre-6 conversion)."""
    sl = _saelens_cases()
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    tensors = {"W_enc": torch.randn(D, M, generator=g) / D**0.5, "b_enc": 0.1 * torch.randn(M, generator=g),
               "W_dec": torch.randn(M, D, generator=g) / D**0.5, "b_dec": 0.1 * torch.randn(D, generator=g)}
    folder = tmp_path / "old"
    folder.mkdir()
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    cfg = {"d_in": D, "d_sae": M, "hook_point": "blocks.3.hook_resid_pre", "hook_point_layer": 3, "dtype": "float32",
           "device": "cpu", "model_name": "gpt2", "activation_fn_str": activation, "apply_b_dec_to_input": True,
           "normalize_activations": False, "sae_lens_training_version": "3.5.0", "prepend_bos": True,
           "context_size": 128, "dataset_path": "x", "finetuning_scaling_factor": False}
    if activation == "topk":
        cfg["activation_fn_kwargs"] = {"k": 6}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({"sparsity": torch.full((M,), -2.0).index_fill(0, torch.tensor([0, 7]), -10.0)},
              str(folder / "sparsity.safetensors"))
    theirs = sl.SAE.load_from_disk(str(folder), device="cpu")
    loaded = load_folder(folder)
    assert loaded.sae.variant == ("topk" if activation == "topk" else "relu")
    assert loaded.provenance.details.get("config_schema") == "flat (SAELens < 6)"
    x = _inputs()
    with torch.no_grad():
        a_theirs, a_ours = theirs.encode(x), loaded.sae.encode(x)[0]
        _close(a_ours, a_theirs)
        _close(loaded.sae.decode(a_ours[None])[0], theirs.decode(a_theirs))
    # log10 sparsity read back as plain frequency; the -10 floor is dead (0)
    assert loaded.frequency[0] == 0 and loaded.frequency[7] == 0
    torch.testing.assert_close(loaded.frequency[1], torch.tensor(0.01))


# ----------------------------------------------------------------------------------------------- sparsify


def _sparsify():
    return pytest.importorskip("sparsify", reason="eai-sparsify not installed (pip install -e '.[test]')")


def _sparsify_coder(seed: int = 0, k: int = 6, **cfg):
    sp = _sparsify()
    coder = sp.SparseCoder(D, sp.SparseCoderConfig(num_latents=M, k=k, **cfg))
    _randomise(coder, seed)
    return coder


def test_sparsify_sae_matches_the_library(tmp_path):
    coder = _sparsify_coder()
    coder.save_to_disk(tmp_path / "layers.6")
    loaded = load_folder(tmp_path / "layers.6")
    x = _inputs()
    with torch.no_grad():
        enc = coder.encode(x)
        dense = torch.zeros(x.shape[0], M).scatter_(1, enc.top_indices, enc.top_acts)
        ours = loaded.sae.encode(x)[0]
        _close(ours, dense)
        _close(loaded.sae.decode(ours[None])[0], coder.decode(enc.top_acts, enc.top_indices))
    assert loaded.sae.variant == "topk" and loaded.sae.cfg.k == 6
    assert loaded.provenance.format == "sparsify" and loaded.provenance.details["hookpoint"] == "layers.6"
    assert loaded.frequency is None  # sparsify keeps no firing statistics: "not measured" without --acts


@pytest.mark.parametrize("flag", ["transcode", "skip_connection"])
def test_sparsify_transcoder_and_skip_connection_are_refused(tmp_path, flag):
    from synthsae.io import RunFileError

    _sparsify_coder(**{flag: True}).save_to_disk(tmp_path / "layers.2")
    with pytest.raises(RunFileError, match=f"{flag} = true is not supported"):
        load_folder(tmp_path / "layers.2")


# ----------------------------------------------------------------------------------------------- dictionary_learning


def _dl_train(tmp_path, configs: list[dict], steps: int = 3):
    """trainSAE's own loop and save (config.json + ae.pt per trainer) on a few batches of random activations."""
    pytest.importorskip("dictionary_learning", reason="dictionary-learning not installed: it is in the `formats` extra, "
                        "not `test` (nnsight, umap-learn, numba, diffusers and a build-matched torchvision are too heavy for CI)")
    from dictionary_learning.training import trainSAE

    g = torch.Generator().manual_seed(0)
    data = iter([torch.randn(64, D, generator=g) for _ in range(steps + 1)])
    trainSAE(data, configs, steps=steps, save_dir=str(tmp_path / "dl"), device="cpu")
    return [tmp_path / "dl" / f"trainer_{i}" for i in range(len(configs))]


def test_dictionary_learning_saes_match_the_library(tmp_path):
    pytest.importorskip("dictionary_learning", reason="dictionary-learning not installed (the `formats` extra)")
    from dictionary_learning.dictionary import AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE, BatchTopKTrainer
    from dictionary_learning.trainers.gdm import GatedSAETrainer
    from dictionary_learning.trainers.jumprelu import JumpReluTrainer
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE, MatryoshkaBatchTopKTrainer
    from dictionary_learning.trainers.standard import StandardTrainer
    from dictionary_learning.trainers.top_k import AutoEncoderTopK, TopKTrainer

    common = dict(steps=3, activation_dim=D, dict_size=M, layer=0, lm_name="none", device="cpu")
    configs = [
        dict(trainer=StandardTrainer, dict_class=AutoEncoder, lr=1e-2, warmup_steps=1, sparsity_warmup_steps=1, seed=11, **common),
        dict(trainer=GatedSAETrainer, dict_class=GatedAutoEncoder, lr=1e-2, warmup_steps=1, sparsity_warmup_steps=1, seed=12, **common),
        dict(trainer=JumpReluTrainer, dict_class=JumpReluAutoEncoder, lr=1e-2, warmup_steps=1, sparsity_warmup_steps=1, seed=13, **common),
        dict(trainer=TopKTrainer, dict_class=AutoEncoderTopK, k=5, warmup_steps=1, threshold_start_step=0, seed=14, **common),
        dict(trainer=BatchTopKTrainer, dict_class=BatchTopKSAE, k=5, warmup_steps=1, threshold_start_step=0, seed=15, **common),
        dict(trainer=MatryoshkaBatchTopKTrainer, dict_class=MatryoshkaBatchTopKSAE, k=5, group_fractions=[1 / 3, 2 / 3],
             warmup_steps=1, threshold_start_step=0, seed=16, **common),
    ]
    classes = [c["dict_class"] for c in configs]
    folders = _dl_train(tmp_path, configs)
    x = _inputs()
    for folder, cls in zip(folders, classes):
        theirs = cls.from_pretrained(str(folder / "ae.pt"))
        loaded = load_folder(folder)
        assert loaded.provenance.format == "dictionary_learning" and loaded.init_seed == configs[folders.index(folder)]["seed"]
        with torch.no_grad():
            a_theirs, a_ours = theirs.encode(x), loaded.sae.encode(x)[0]
            assert (a_theirs > 0).any(), cls.__name__
            _close(a_ours, a_theirs)
            _close(loaded.sae.decode(a_ours[None])[0], theirs.decode(a_theirs))


# ----------------------------------------------------------------------------------------------- stacks of library SAEs


def test_four_sparsify_seeds_stack_in_order(tmp_path):
    folders = []
    for s in range(4):
        _sparsify_coder(seed=s).save_to_disk(tmp_path / f"seed{s}" / "layers.6")
        folders.append(tmp_path / f"seed{s}" / "layers.6")
    stack = load_stack(folders)
    assert stack.sae.n_seeds == 4 and stack.frequency is None
    for s, f in enumerate(folders):
        torch.testing.assert_close(stack.sae.W_dec[s], load_folder(f).sae.W_dec[0])
    assert [p.path for p in stack.provenance] == [str(f) for f in folders]
