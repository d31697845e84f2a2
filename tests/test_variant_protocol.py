"""The variant protocol: a new variant is one registered class (here, in this module only) that trains through the
normal entry, saves and loads, has its own config rules checked by `validate`, and whose declarations (sparsity
knob, bench settings, SAELens names) reach the bench and the loaders without any other module knowing it."""

from __future__ import annotations

import json

import pytest
import torch

from synthsae.bench import bench_sae_settings, k_for_l0, sparsity_knob
from synthsae.config import ConfigError, SAEConfig, preset, validate, validate_sae
from synthsae.io import load_run
from synthsae.sae import build_sae, known_names, register_variant, saelens_architectures
from synthsae.sae.base import SAE, SAEOutput, batch_scale
from synthsae.train import train_run

NAME = "toy_protocol"


@register_variant(NAME)
class ToyProtocolSAE(SAE):
    """ReLU codes with a plain L1 penalty of weight sae.l1_coeff: its only sparsity, so it must be positive."""

    saelens_architecture = "toy_protocol_arch"
    saelens_reads = ("toy_protocol_arch",)
    sparsity_knob = "l1_coeff"
    bench_sae = {"l1_warmup_steps": 0}

    @classmethod
    def check_config(cls, cfg: SAEConfig, prefix: str = "sae") -> None:
        if cfg.l1_coeff <= 0:
            raise ConfigError(f"{prefix}.l1_coeff = {cfg.l1_coeff!r}: must be > 0 for {NAME} (its only sparsity)")

    def forward(self, x, step: int = 0, dead=None) -> SAEOutput:
        acts = self.encode(x)
        x_hat = self.decode(acts)
        return self.output(x, x_hat, acts, aux=self.cfg.l1_coeff * acts.sum(dim=2).mean(dim=1) / batch_scale(x, self.n_seeds))


def toy_cfg(steps: int = 4):
    cfg = preset("tiny")
    cfg.sae.variant = NAME
    cfg.train.steps, cfg.train.seeds, cfg.train.checkpoint_every = steps, 2, steps
    cfg.analysis.eval_tokens = 512
    return cfg


def test_toy_variant_trains_saves_and_loads(tmp_path):
    out = tmp_path / "run"
    sae = train_run(toy_cfg(), out, progress=False)
    assert isinstance(sae, ToyProtocolSAE) and sae.n_seeds == 2
    summary = json.loads((out / "train.json").read_text())
    assert summary["steps"] == 4
    seed_cfg = json.loads(next((out / "seeds").glob("*/cfg.json")).read_text())
    assert seed_cfg["architecture"] == "toy_protocol_arch" and seed_cfg["metadata"]["variant"] == NAME
    cfg, loaded, _ = load_run(out)
    assert cfg.sae.variant == NAME and isinstance(loaded, ToyProtocolSAE)
    for k, v in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.cpu()), k


def test_toy_variant_checks_its_own_config():
    cfg = toy_cfg()
    validate(cfg)
    cfg.sae.l1_coeff = 0.0
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value) == f"sae.l1_coeff = 0.0: must be > 0 for {NAME} (its only sparsity)"
    with pytest.raises(ConfigError, match=r"^metadata\.sae\.l1_coeff = 0\.0: must be > 0"):
        validate_sae(cfg.sae, prefix="metadata.sae")
    validate_sae(SAEConfig(variant="relu", l1_coeff=0.0))  # another variant's rules are not this one's


def test_a_failing_plugin_check_is_one_line(monkeypatch):
    def broken(cls, cfg, prefix="sae"):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(ToyProtocolSAE, "check_config", classmethod(broken))
    with pytest.raises(ConfigError) as err:
        validate_sae(SAEConfig(variant=NAME))
    assert str(err.value) == (f"sae.variant = {NAME!r}: plug-in class {__name__}.ToyProtocolSAE failed to check its "
                              "config: RuntimeError: boom")


def test_declarations_reach_bench_loaders_and_names():
    assert NAME in known_names()
    assert sparsity_knob(NAME) == "l1_coeff" and bench_sae_settings(NAME) == {"l1_warmup_steps": 0}
    assert k_for_l0(NAME, SAEConfig(variant=NAME), 6.0) == 6  # default latents_per_k = 1
    assert saelens_architectures()["toy_protocol_arch"] == NAME
    assert build_sae(SAEConfig(variant=NAME, d_sae=8), 4, [0]).latent_groups() == []


def test_shipped_saelens_map_and_bench_hooks():
    archs = saelens_architectures()
    assert {a: archs[a] for a in ("standard", "topk", "jumprelu", "gated", "batchtopk", "matryoshka_batchtopk")} == {
        "standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated", "batchtopk": "batchtopk",
        "matryoshka_batchtopk": "matryoshka"}
    assert "blocktopk" not in archs.values()
    blk = SAEConfig(variant="blocktopk", d_sae=12, k=2, group_sizes=[1, 2, 3, 6])
    assert build_sae(blk, 4, [0]).latent_groups() == [1, 2, 3, 6]
    assert k_for_l0("blocktopk", blk, 6.0) == 2 and bench_sae_settings("blocktopk") == {"group_size": 2, "group_sizes": []}
    assert build_sae(SAEConfig(variant="topk", d_sae=8, k=2), 4, [0]).latent_groups() == []
    with pytest.raises(ConfigError, match=r"^sae\.k = 5: must be an integer 1\.\.4$"):
        validate_sae(SAEConfig(variant="blocktopk", d_sae=8, k=5, group_size=2))


def test_known_names_in_a_fresh_process_lists_the_shipped_variants():
    """The CLI's --variant help: every name, even when nothing has been registered yet (no plug-in imported)."""
    import subprocess
    import sys

    from conftest import SHIPPED

    code = "from synthsae.sae import known_names; print(','.join(known_names()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert set(SHIPPED) <= set(out.split(","))
