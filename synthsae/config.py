"""Dataclass configs, named presets, TOML load/save and validation with one-line errors.

Every config error is a `ConfigError` whose message names the field, the bad value and what is allowed,
so the CLI can print it as one line and exit with code 2.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from synthsae.errors import ConfigError
from synthsae.fileio import atomic_write_text
from synthsae.sae_config import SAEConfig

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


@dataclass
class TruthConfig:
    """The planted ground truth: rank-1 atoms, isotropic rank-r subspaces, optional frames."""

    d: int = 64
    n_atoms: int = 150
    subspace_ranks: list[int] = field(default_factory=lambda: [4, 6, 4, 8, 8, 3, 6, 5, 2, 4, 8, 4])
    # per block (or one value for all): True = orthogonal to every other component (the clean theory case),
    # False = a random subspace in superposition with atoms and other superposed blocks
    subspace_orthogonal: list[bool] = field(
        default_factory=lambda: [True, False, False, True, False, False, True, False, False, True, False, False]
    )
    # where blocks sit in the Zipf frequency order: "spread" (evenly, both frequent and rare),
    # "frequent" (the top ranks) or "rare" (the bottom ranks)
    subspace_frequency: str = "spread"
    # True: a rank-r block fires r times as often as an atom in the same Zipf slot (capped at max_prob), so each
    # of its r directions sees as much data as that atom; False: it fires like the atom (its directions starve)
    subspace_prob_per_dim: bool = True
    frame_ranks: list[int] = field(default_factory=list)  # r of each frame (a circle is r = 2)
    frame_sizes: list[int] = field(default_factory=list)  # n > r fixed directions of each frame
    target_l0: float = 8.0  # expected number of active components per sample
    zipf_exponent: float = 1.0  # firing probability of the j-th most frequent component ~ (j+1)^-exponent
    max_prob: float = 0.5  # no component fires more often than this
    magnitude_mean: float = 1.0  # a ~ magnitude_mean * exp(magnitude_log_std * N(0,1)) > 0
    magnitude_log_std: float = 0.25
    cofire_groups: int = 0  # 0 = independent firing; else components share a latent Gaussian per group
    cofire_corr: float = 0.0  # Gaussian-copula correlation inside a group (marginal frequencies are kept)
    noise_std: float = 0.01  # isotropic Gaussian noise per dimension
    bias_norm: float = 0.5  # norm of the constant offset b
    n_classes: int = 64  # width C of the fixed random readout head W_head [d, C]
    head_scale: float = 2.0  # std of the head logits for a typical sample
    seed: int = 0  # seed of the truth itself (directions, probabilities, head), not of the data stream
    # SynthSAEBench-style statistics (all off by default, so the other presets sample exactly as before)
    zipf_min_prob: float = 0.0  # > 0: firing probability of rank j ~ (j+1)^-exponent rescaled to [zipf_min_prob, max_prob]; target_l0 unused
    magnitude_mean_rare: float = 0.0  # > 0: a component's mean magnitude falls linearly from magnitude_mean (most frequent) to this (rarest)
    hierarchy_roots: int = 0  # > 0: trees of atoms; the most frequent atoms are the roots, their children the next ones breadth-first
    hierarchy_branching: int = 4  # children per parent
    hierarchy_depth: int = 3  # levels below a root; a child fires only when its parent fires
    hierarchy_exclusive: bool = True  # siblings are mutually exclusive (one of the drawn children fires, uniformly)
    hierarchy_scale_children: bool = True  # a child's magnitude is multiplied by its parent's magnitude / the parent's mean
    corr_rank: int = 0  # > 0: low-rank Gaussian-copula correlation of every component's firing (factor entries ~ N(0, corr_scale^2))
    corr_scale: float = 0.1

    @property
    def n_hierarchy(self) -> int:
        """Atoms inside the hierarchy trees (roots and every level below)."""
        b, per_tree = self.hierarchy_branching, sum(self.hierarchy_branching ** i for i in range(self.hierarchy_depth + 1))
        return self.hierarchy_roots * per_tree if b >= 1 else self.hierarchy_roots

    @property
    def n_blocks(self) -> int:
        return len(self.subspace_ranks)

    @property
    def n_components(self) -> int:
        return self.n_atoms + self.n_blocks + len(self.frame_ranks)

    @property
    def total_rank(self) -> int:
        return self.n_atoms + sum(self.subspace_ranks) + sum(self.frame_ranks)


@dataclass
class TrainConfig:
    """How the S seeds are trained: one batched step for all of them."""

    seeds: int = 8
    init_seeds: list[int] = field(default_factory=list)  # empty = 0..seeds-1
    data_seed: int = 1234
    vary_data: bool = False  # True = each seed gets its own data stream (with seed_mode shared_data: independent)
    seed_mode: str = "shared_data"  # what seeds share: see SEED_MODES and resolved_seed_mode()
    steps: int = 3000
    batch_size: int = 1024
    lr: float = 3e-3
    warmup_steps: int = 100
    decay_start: float = 0.8  # fraction of steps after which the learning rate decays linearly to 0
    grad_clip: float = 1.0
    checkpoint_every: int = 500
    dead_window_tokens: int = 100_000  # a latent is dead if it has not fired in this many training tokens (AuxK revives it)
    device: str = "auto"  # "auto" = cuda when available, else cpu
    dtype: str = "float32"

    def resolved_init_seeds(self) -> list[int]:
        """The init seed of every seed index: all the first one under seed_mode shared_init."""
        seeds = list(self.init_seeds) if self.init_seeds else list(range(self.seeds))
        return [seeds[0]] * len(seeds) if self.resolved_seed_mode() == "shared_init" else seeds

    def resolved_seed_mode(self) -> str:
        """seed_mode, with vary_data = true (its older spelling) turning the default shared_data into independent."""
        return "independent" if self.seed_mode == "shared_data" and self.vary_data else self.seed_mode

    def data_varies(self) -> bool:
        """Whether seed s reads its own data stream (data_seed + s) rather than the one shared stream."""
        return self.resolved_seed_mode() in ("independent", "shared_init")


@dataclass
class AnalysisConfig:
    """Cut-offs of the metrics (what each decides: docs/metrics.md)."""

    tau: float = 0.7
    tau_sweep: list[float] = field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    stable_cutoff: float = 0.8
    unstable_cutoff: float = 0.2
    match: str = "maxcos"
    eval_tokens: int = 32768
    pool_refit_steps: int = 300  # encoder + bias refit of a pooled SAE (decoder frozen)
    pool_primary: str = "coverage"  # the pooling rule whose pool (at the base width) decides the pooling verdict


@dataclass
class RunConfig:
    """Everything a run needs, saved fully resolved as the run's config.toml."""

    preset: str = "default"
    truth: TruthConfig = field(default_factory=TruthConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)


# ----------------------------------------------------------------------------------------------- presets


def _preset_tiny() -> RunConfig:
    truth = TruthConfig(
        d=32,
        n_atoms=40,
        subspace_ranks=[4, 3, 4],
        subspace_orthogonal=[True, False, False],
        target_l0=4.0,
        n_classes=32,
    )
    return RunConfig(
        preset="tiny",
        truth=truth,
        sae=SAEConfig(d_sae=96, k=4, l1_warmup_steps=50),
        train=TrainConfig(seeds=3, steps=1500, batch_size=512, warmup_steps=50, checkpoint_every=500),
    )


def _preset_default() -> RunConfig:
    # d = 64, 150 atoms, 12 blocks of ranks 2..8: four orthogonal to everything else (clean basis
    # ambiguity, ranks 4, 8, 6, 4), eight in superposition with the atoms; the list order is the frequency
    # order (spread from frequent to rare), interleaving the two geometries so frequency and geometry
    # can be told apart.
    return RunConfig(preset="default")


def _preset_paper() -> RunConfig:
    truth = TruthConfig(
        d=768,
        n_atoms=4096,
        subspace_ranks=[2, 3, 4, 4, 6, 6, 8, 8] * 4,
        subspace_orthogonal=[True] * 8 + [False] * 24,
        frame_ranks=[2, 2],
        frame_sizes=[7, 12],
        target_l0=24.0,
        n_classes=512,
    )
    return RunConfig(
        preset="paper",
        truth=truth,
        sae=SAEConfig(d_sae=8192, k=32),
        train=TrainConfig(seeds=8, steps=20000, batch_size=4096),
    )


def _preset_synthbench16k() -> RunConfig:
    # SynthSAEBench-16k (v2) statistics: 16,384 rank-1 features in 768 dims, Zipf exponent 0.5 rescaled to
    # [5e-4, 0.4], 128 trees (branching 4, depth 3) with mutually exclusive children scaled by their parent,
    # low-rank firing correlation (rank 25, scale 0.1), mean magnitudes 5 -> 4 from frequent to rare.
    # No planted subspaces (see synthbench16k_subspaces); SAE width 4096 as SynthSAEBench recommends.
    truth = TruthConfig(
        d=768,
        n_atoms=16384,
        subspace_ranks=[],
        subspace_orthogonal=[False],
        target_l0=34.0,  # unused: zipf_min_prob sets the probabilities (expected L0 ~ 34 after the hierarchy)
        zipf_exponent=0.5,
        max_prob=0.4,
        zipf_min_prob=5e-4,
        magnitude_mean=5.0,
        magnitude_mean_rare=4.0,
        magnitude_log_std=0.11,  # ~ SynthSAEBench's std 0.5 at mean 4.5
        hierarchy_roots=128,
        hierarchy_branching=4,
        hierarchy_depth=3,
        corr_rank=25,
        corr_scale=0.1,
        n_classes=1024,
    )
    return RunConfig(
        preset="synthbench16k",
        truth=truth,
        sae=SAEConfig(d_sae=4096, k=25),
        train=TrainConfig(seeds=4, steps=30000, batch_size=4096),
    )


def _preset_synthbench16k_subspaces() -> RunConfig:
    # synthbench16k plus 20 planted subspaces (ranks 2..8) in superposition with its features.
    cfg = _preset_synthbench16k()
    cfg.preset = "synthbench16k_subspaces"
    cfg.truth.subspace_ranks = [2, 3, 4, 6, 8] * 4
    cfg.truth.subspace_orthogonal = [False] * 20
    return cfg


PRESETS = {
    "tiny": _preset_tiny,
    "default": _preset_default,
    "paper": _preset_paper,
    "synthbench16k": _preset_synthbench16k,
    "synthbench16k_subspaces": _preset_synthbench16k_subspaces,
}


def preset(name: str) -> RunConfig:
    """A fresh copy of the named preset; unknown names list the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"preset = {name!r}: unknown; known presets are {', '.join(PRESETS)}")
    return PRESETS[name]()


# ----------------------------------------------------------------------------------------------- validation

KNOWN_DTYPES = ("float32", "float64", "bfloat16", "float16", "tf32")
SUBSPACE_FREQUENCIES = ("spread", "frequent", "rare")
MATCH_RULES = ("maxcos", "hungarian", "strict")


def _err(name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{name} = {value!r}: {allowed}")


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi)
    if not ok:
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise _err(name, value, f"must be an integer {rng}")


def _check_float(name: str, value: Any, lo: float, hi: float | None = None, lo_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and (hi is None or value <= hi)
    if not ok:
        lo_txt = f"> {lo}" if lo_open else f">= {lo}"
        rng = f"{lo_txt} and <= {hi}" if hi is not None else lo_txt
        raise _err(name, value, f"must be a finite number {rng}")


def validate_truth(t: TruthConfig, prefix: str = "truth") -> None:
    """Raise ConfigError on the first bad value of a truth config."""
    _check_int(f"{prefix}.d", t.d, 1)
    _check_int(f"{prefix}.n_atoms", t.n_atoms, 0)
    if not isinstance(t.subspace_ranks, list):
        raise _err(f"{prefix}.subspace_ranks", t.subspace_ranks, "must be a list of integers in 1..d")
    for i, r in enumerate(t.subspace_ranks):
        _check_int(f"{prefix}.subspace_ranks[{i}]", r, 1, t.d)
    orth = t.subspace_orthogonal
    if not isinstance(orth, list) or not all(isinstance(o, bool) for o in orth):
        raise _err(f"{prefix}.subspace_orthogonal", orth, "must be a list of true/false")
    if len(orth) not in (1, len(t.subspace_ranks)) and t.subspace_ranks:
        raise _err(
            f"{prefix}.subspace_orthogonal",
            orth,
            f"must have one entry or one per block ({len(t.subspace_ranks)})",
        )
    if t.subspace_frequency not in SUBSPACE_FREQUENCIES:
        raise _err(f"{prefix}.subspace_frequency", t.subspace_frequency, f"must be one of {', '.join(SUBSPACE_FREQUENCIES)}")
    if len(t.frame_ranks) != len(t.frame_sizes):
        raise _err(f"{prefix}.frame_sizes", t.frame_sizes, f"must have one entry per frame rank ({len(t.frame_ranks)})")
    for i, (r, n) in enumerate(zip(t.frame_ranks, t.frame_sizes)):
        _check_int(f"{prefix}.frame_ranks[{i}]", r, 2, t.d)
        _check_int(f"{prefix}.frame_sizes[{i}]", n, r + 1)
    orth_flags = block_orthogonal_flags(t)
    r_orth = sum(r for r, o in zip(t.subspace_ranks, orth_flags) if o)
    others = t.n_atoms + len(t.frame_ranks) + sum(1 for o in orth_flags if not o)
    if r_orth > t.d or (others and r_orth >= t.d):
        raise _err(
            f"{prefix}.subspace_orthogonal",
            orth,
            f"orthogonal blocks' total rank {r_orth} must leave room in d = {t.d} for the other components",
        )
    free = t.d - r_orth
    for i, (r, o) in enumerate(zip(t.subspace_ranks, orth_flags)):
        if not o and r > free:
            raise _err(f"{prefix}.subspace_ranks[{i}]", r, f"a superposed block must fit in the {free} dims left by orthogonal blocks")
    for i, r in enumerate(t.frame_ranks):
        if r > free:
            raise _err(f"{prefix}.frame_ranks[{i}]", r, f"a frame must fit in the {free} dims left by orthogonal blocks")
    n_comp = t.n_components
    if n_comp == 0:
        raise _err(f"{prefix}.n_atoms", t.n_atoms, "the truth needs at least one component (atom, subspace or frame)")
    _check_float(f"{prefix}.max_prob", t.max_prob, 0.0, 1.0, lo_open=True)
    _check_float(f"{prefix}.target_l0", t.target_l0, 0.0, lo_open=True)
    if t.target_l0 > n_comp * t.max_prob:
        raise _err(
            f"{prefix}.target_l0",
            t.target_l0,
            f"must be <= number of components x max_prob = {n_comp} x {t.max_prob} = {n_comp * t.max_prob:g}",
        )
    _check_float(f"{prefix}.zipf_exponent", t.zipf_exponent, 0.0)
    _check_float(f"{prefix}.magnitude_mean", t.magnitude_mean, 0.0, lo_open=True)
    _check_float(f"{prefix}.magnitude_log_std", t.magnitude_log_std, 0.0)
    _check_int(f"{prefix}.cofire_groups", t.cofire_groups, 0)
    _check_float(f"{prefix}.cofire_corr", t.cofire_corr, 0.0, 0.99)
    if t.cofire_corr > 0 and t.cofire_groups == 0:
        raise _err(f"{prefix}.cofire_groups", t.cofire_groups, "must be >= 1 when cofire_corr > 0")
    _check_float(f"{prefix}.noise_std", t.noise_std, 0.0)
    _check_float(f"{prefix}.bias_norm", t.bias_norm, 0.0)
    _check_int(f"{prefix}.n_classes", t.n_classes, 2)
    _check_float(f"{prefix}.head_scale", t.head_scale, 0.0)
    _check_int(f"{prefix}.seed", t.seed, 0)
    if t.zipf_min_prob != 0.0:
        _check_float(f"{prefix}.zipf_min_prob", t.zipf_min_prob, 0.0, lo_open=True)
        if t.zipf_min_prob >= t.max_prob:
            raise _err(f"{prefix}.zipf_min_prob", t.zipf_min_prob, f"must be 0 (off) or below max_prob = {t.max_prob}")
    _check_float(f"{prefix}.magnitude_mean_rare", t.magnitude_mean_rare, 0.0)
    _check_int(f"{prefix}.hierarchy_roots", t.hierarchy_roots, 0)
    _check_int(f"{prefix}.hierarchy_branching", t.hierarchy_branching, 2, 16)
    _check_int(f"{prefix}.hierarchy_depth", t.hierarchy_depth, 1, 8)
    if t.hierarchy_roots and t.n_hierarchy > t.n_atoms:
        raise _err(f"{prefix}.hierarchy_roots", t.hierarchy_roots,
                   f"{t.hierarchy_roots} trees of branching {t.hierarchy_branching} and depth {t.hierarchy_depth} need "
                   f"{t.n_hierarchy} atoms; n_atoms = {t.n_atoms}")
    _check_int(f"{prefix}.corr_rank", t.corr_rank, 0)
    _check_float(f"{prefix}.corr_scale", t.corr_scale, 0.0)
    if t.corr_rank > 0 and t.cofire_corr > 0:
        raise _err(f"{prefix}.corr_rank", t.corr_rank, "must be 0 when cofire_corr > 0 (one correlation model at a time)")


def block_orthogonal_flags(t: TruthConfig) -> list[bool]:
    """One orthogonality flag per block (a single flag is broadcast)."""
    orth = list(t.subspace_orthogonal)
    if len(orth) == 1:
        return orth * len(t.subspace_ranks)
    return orth


def validate_sae(s: SAEConfig, d: int | None = None, prefix: str = "sae") -> None:
    """Raise ConfigError on the first bad SAE value: the shared fields here, then the variant's own rules (its
    `check_config`); the variant must be registered."""
    from synthsae.sae import check_variant_config, get_variant  # late import: the registry lives with the variants

    if not isinstance(s.variant, str):
        raise _err(f"{prefix}.variant", s.variant, "must be a variant name (a string)")
    try:
        get_variant(s.variant)  # only this variant's plug-in is imported: a broken other one does not matter
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("sae.variant", f"{prefix}.variant", 1)) from None
    _check_int(f"{prefix}.d_sae", s.d_sae, 1)
    _check_int(f"{prefix}.k", s.k, 1, s.d_sae)
    _check_float(f"{prefix}.l1_coeff", s.l1_coeff, 0.0)
    _check_int(f"{prefix}.l1_warmup_steps", s.l1_warmup_steps, 0)
    _check_float(f"{prefix}.jumprelu_init_threshold", s.jumprelu_init_threshold, 0.0)
    _check_float(f"{prefix}.jumprelu_bandwidth", s.jumprelu_bandwidth, 0.0, lo_open=True)
    _check_float(f"{prefix}.l0_coeff", s.l0_coeff, 0.0)
    _check_int(f"{prefix}.aux_k", s.aux_k, 0)
    _check_float(f"{prefix}.aux_coeff", s.aux_coeff, 0.0)
    prev = 0
    for i, p in enumerate(s.matryoshka_prefixes):
        _check_int(f"{prefix}.matryoshka_prefixes[{i}]", p, prev + 1, s.d_sae)
        prev = p
    _check_int(f"{prefix}.group_size", s.group_size, 1, s.d_sae)
    for i, g in enumerate(s.group_sizes):
        _check_int(f"{prefix}.group_sizes[{i}]", g, 1, s.d_sae)
    if s.group_sizes and sum(s.group_sizes) != s.d_sae:
        raise _err(f"{prefix}.group_sizes", s.group_sizes, f"must sum to d_sae = {s.d_sae} (sums to {sum(s.group_sizes)})")
    check_variant_config(s, prefix)


# what the S seeds share: independent = own init and own data stream; shared_init = one init, own data streams;
# shared_data = own init, one data stream (the default, as before seed_mode existed)
SEED_MODES = ("independent", "shared_init", "shared_data")


MAX_STEPS = 10**8  # far beyond any study (the paper preset trains 30k steps); more is a typo that would run for ever


def validate_train(t: TrainConfig, prefix: str = "train") -> None:
    """Raise ConfigError on the first bad training value."""
    _check_int(f"{prefix}.seeds", t.seeds, 1)
    if t.init_seeds:
        if len(t.init_seeds) != t.seeds:
            raise _err(f"{prefix}.init_seeds", t.init_seeds, f"must list exactly seeds = {t.seeds} seeds (or be empty)")
        if len(set(t.init_seeds)) != len(t.init_seeds):
            raise _err(f"{prefix}.init_seeds", t.init_seeds, "must not repeat a seed")
        for i, s in enumerate(t.init_seeds):
            _check_int(f"{prefix}.init_seeds[{i}]", s, 0)
    if t.seed_mode not in SEED_MODES:
        raise _err(f"{prefix}.seed_mode", t.seed_mode, f"must be one of {', '.join(SEED_MODES)}")
    _check_int(f"{prefix}.data_seed", t.data_seed, 0)
    _check_int(f"{prefix}.steps", t.steps, 1, MAX_STEPS)
    _check_int(f"{prefix}.batch_size", t.batch_size, 1)
    _check_float(f"{prefix}.lr", t.lr, 0.0, lo_open=True)
    _check_int(f"{prefix}.warmup_steps", t.warmup_steps, 0)
    _check_float(f"{prefix}.decay_start", t.decay_start, 0.0, 1.0)
    _check_float(f"{prefix}.grad_clip", t.grad_clip, 0.0)
    _check_int(f"{prefix}.checkpoint_every", t.checkpoint_every, 1)
    _check_int(f"{prefix}.dead_window_tokens", t.dead_window_tokens, 1)
    if t.device != "auto" and not (t.device == "cpu" or t.device.startswith("cuda")):
        raise _err(f"{prefix}.device", t.device, "must be auto, cpu, cuda or cuda:N")
    if t.dtype not in KNOWN_DTYPES:
        raise _err(f"{prefix}.dtype", t.dtype, f"must be one of {', '.join(KNOWN_DTYPES)}")


POOL_RULES = ("coverage", "coverage_freq", "union")


def validate_analysis(a: AnalysisConfig, prefix: str = "analysis") -> None:
    _check_float(f"{prefix}.tau", a.tau, -1.0, 1.0)
    for i, v in enumerate(a.tau_sweep):
        _check_float(f"{prefix}.tau_sweep[{i}]", v, -1.0, 1.0)
    _check_float(f"{prefix}.stable_cutoff", a.stable_cutoff, 0.0, 1.0)
    _check_float(f"{prefix}.unstable_cutoff", a.unstable_cutoff, 0.0, 1.0)
    if a.unstable_cutoff > a.stable_cutoff:
        raise _err(f"{prefix}.unstable_cutoff", a.unstable_cutoff, f"must be <= stable_cutoff = {a.stable_cutoff}")
    if a.match not in MATCH_RULES:
        raise _err(f"{prefix}.match", a.match, f"must be one of {', '.join(MATCH_RULES)}")
    _check_int(f"{prefix}.eval_tokens", a.eval_tokens, 1)
    _check_int(f"{prefix}.pool_refit_steps", a.pool_refit_steps, 0)
    if a.pool_primary not in POOL_RULES:
        raise _err(f"{prefix}.pool_primary", a.pool_primary, f"must be one of {', '.join(POOL_RULES)}")


def validate(cfg: RunConfig) -> RunConfig:
    """Validate every section; returns the config so calls can chain."""
    validate_truth(cfg.truth)
    validate_sae(cfg.sae, cfg.truth.d)
    validate_train(cfg.train)
    validate_analysis(cfg.analysis)
    return cfg


# ----------------------------------------------------------------------------------------------- TOML

_SECTIONS = {"truth": TruthConfig, "sae": SAEConfig, "train": TrainConfig, "analysis": AnalysisConfig}


def _coerce(section: str, cls: type, raw: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown field; allowed fields are {', '.join(known)}")
    obj = cls()
    for key, value in raw.items():
        default = getattr(obj, key)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(default, list) and not isinstance(value, list):
            raise _err(f"{section}.{key}", value, "must be a list")
        if isinstance(default, bool) and not isinstance(value, bool):
            raise _err(f"{section}.{key}", value, "must be true or false")
        if isinstance(default, str) and not isinstance(value, str):
            raise _err(f"{section}.{key}", value, "must be a string")
        setattr(obj, key, value)
    return obj


def from_dict(raw: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Build a RunConfig from a nested dict (a parsed TOML file), on top of a preset.

    A top-level `preset = "name"` picks the base; sections then override its fields one by one.
    """
    raw = dict(raw)
    for key in raw:
        if key != "preset" and key not in _SECTIONS:
            raise ConfigError(f"{key}: unknown section; allowed are preset, {', '.join(_SECTIONS)}")
    name = raw.get("preset", base.preset if base else "default")
    if not isinstance(name, str):
        raise _err("preset", name, "must be a preset name string")
    cfg = base if base is not None and "preset" not in raw else preset(name)
    cfg = dataclasses.replace(cfg)
    for section, cls in _SECTIONS.items():
        if section not in raw:
            continue
        if not isinstance(raw[section], dict):
            raise _err(section, raw[section], "must be a table")
        merged = {**asdict(getattr(cfg, section)), **raw[section]}
        setattr(cfg, section, _coerce(section, cls, merged))
    return cfg


def load(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a TOML config file; any problem is a one-line ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config = {str(p)!r}: no such file")
    try:
        raw = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config = {str(p)!r}: not valid TOML ({exc})") from None
    return validate(from_dict(raw))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(cfg: RunConfig) -> str:
    """The fully resolved config as TOML text (every field written, so a run never depends on defaults)."""
    lines = [f"preset = {_toml_value(cfg.preset)}", ""]
    for section in _SECTIONS:
        lines.append(f"[{section}]")
        for key, value in asdict(getattr(cfg, section)).items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def save(cfg: RunConfig, path: str | os.PathLike[str]) -> None:
    atomic_write_text(path, to_toml(cfg))


def differences(saved: RunConfig, given: RunConfig) -> list[tuple[str, Any, Any]]:
    """(field, saved value, given value) for every field where two configs differ, in file order."""
    out: list[tuple[str, Any, Any]] = []
    if saved.preset != given.preset:
        out.append(("preset", saved.preset, given.preset))
    for section in _SECTIONS:
        a, b = asdict(getattr(saved, section)), asdict(getattr(given, section))
        out.extend((f"{section}.{k}", a[k], b.get(k)) for k in a if a[k] != b.get(k))
    return out


def describe_differences(diffs: list[tuple[str, Any, Any]], limit: int = 3) -> str:
    """'train.steps: run has 1500, given 100; ...' (at most `limit` fields, then how many more)."""
    parts = [f"{name}: run has {_toml_value(a)}, given {_toml_value(b)}" for name, a, b in diffs[:limit]]
    if len(diffs) > limit:
        parts.append(f"{len(diffs) - limit} more")
    return "; ".join(parts)
