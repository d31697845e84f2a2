"""What a study runs on, decided in one place from what the user pointed at (`open_source`).

A `Source` is a synthetic run folder ("run"), a `synthsae real run` folder ("real") or SAE folders of any supported
format ("folders", optionally with activations). It carries the stacked SAEs, their config, the truth (or None),
the evaluation data and its seed, the refit data, the frequencies, the provenance and the output folder. Heavy
parts load on first use, so a Source can be made before training and read after it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from jaxtyping import Float
from torch import Tensor

from synthsae.config import AnalysisConfig, ConfigError, RunConfig

KINDS = ("run", "real", "folders")
EVAL_DATA_SEED_OFFSET = 1_000_003  # the evaluation stream: samples the SAEs never trained on
REAL_CONFIG = "real_config.json"


def eval_data_seed(cfg: RunConfig) -> int:
    """Seed of a synthetic run's evaluation stream (every stage draws its eval sample from it)."""
    return cfg.train.data_seed + EVAL_DATA_SEED_OFFSET


def is_run_dir(path: Path) -> bool:
    """A synthetic run folder holds config.toml and seeds/."""
    return (path / "config.toml").is_file() and (path / "seeds").is_dir()


def is_real_run(path: Path) -> bool:
    """A real run folder holds real_config.json and seeds/."""
    return (path / REAL_CONFIG).is_file() and (path / "seeds").is_dir()


def common_parent(folders: list[Path]) -> Path:
    """The deepest folder above every SAE folder (the default output folder of folder analysis); when that is one
    of the inputs itself, its parent, so no output lands inside an input."""
    common = Path(os.path.commonpath([str(f.resolve()) for f in folders]))
    return common.parent if common in {f.resolve() for f in folders} else common


def seed_folders_of(paths: list[Path], fmt: str | None = None) -> list[Path]:
    """SAE folders (one per seed) from folders, quoted globs and parent folders; one-line ConfigError when a path is
    neither a run nor an SAE folder of a known format, or fewer than two seeds are found."""
    from synthsae.loaders import FORMATS, expand_paths

    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"--format = {fmt!r}: must be one of {', '.join(FORMATS)}")
    folders = expand_paths(paths)
    if fmt is None:
        bad = [p for p in folders if not any(m.looks_like(p) for m in FORMATS.values())]
        if bad:
            raise ConfigError(f"{str(bad[0])!r}: neither a run directory (config.toml + seeds/) nor an SAE folder "
                              "(SAELens cfg.json + sae_weights.safetensors, sparsify cfg.json + sae.safetensors, "
                              "dictionary_learning config.json + ae.pt)")
    if len(folders) < 2:
        raise ConfigError(f"found {len(folders)} SAE folder(s) in {', '.join(map(str, paths))}: one folder is one seed, "
                          "give at least two (or a run directory)")
    return folders


@dataclass
class Source:
    """One study's input and output folder; `kind` says which of the three it is (see the module docstring)."""

    kind: str
    out: Path  # metrics.json, report, figures/, pooled/ and the atlas go here
    run_dir: Path | None = None  # kind run / real: the run folder
    paths: list[Path] = field(default_factory=list)  # kind folders: one SAE folder per seed
    fmt: str | None = None  # kind folders: the format named by the user (None = detected)
    acts_path: Path | None = None  # kind folders: the activations the user gave
    device: str | None = None  # None / "auto" = CUDA when available
    metrics: Path | None = None  # default out/metrics.json (`analyze --out FILE` on a run names another)
    # kind real (attached by real.stages.attach, so this module never imports real/): the run's config, the norm
    # scale training used, the language model and the activation store
    run_config: RunConfig | None = None
    scale: float | None = None
    lm: object | None = None
    store: object | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"source kind = {self.kind!r}: must be one of {', '.join(KINDS)}")
        self.metrics = self.metrics or self.out / "metrics.json"

    # ------------------------------------------------------------------------------------------- what it carries

    @functools.cached_property
    def dev(self) -> torch.device:
        from synthsae.device import pick_device

        return pick_device(self.device or "auto")

    @functools.cached_property
    def _loaded(self):
        """(RunConfig, stacked SAE on CPU, Truth on CPU or None, LoadedStack or None), read once."""
        if self.kind == "run":
            from synthsae.io import load_run

            cfg, sae, truth = load_run(self.run_dir)
            return cfg, sae, truth, None
        if self.kind == "real":
            from synthsae.io import load_sae_folders, seed_folders

            if self.run_config is None:
                raise ConfigError(f"{self.run_dir}: a real run's source needs its config attached (real.stages.attach)")
            return self.run_config, load_sae_folders(seed_folders(self.run_dir)), None, None
        from synthsae.loaders import load_stack

        st = load_stack(self.paths, self.fmt)
        return folder_run_config(st), st.sae, None, st

    @property
    def config(self) -> RunConfig:
        return self._loaded[0]

    @functools.cached_property
    def sae(self):
        """Every seed stacked on the seed axis, on the source's device."""
        return self._loaded[1].to(self.dev)

    @functools.cached_property
    def truth(self):
        """The planted truth (synthetic runs), on the source's device; None elsewhere."""
        t = self._loaded[2]
        return None if t is None else t.to(self.dev)

    @property
    def stack(self):
        """The loaded SAE folders with their provenance (kind folders)."""
        return self._loaded[3]

    @property
    def variant(self) -> str:
        return self.config.sae.variant

    @property
    def eval_seed(self) -> int | None:
        """The evaluation stream's seed (synthetic runs; None where the data is given)."""
        return eval_data_seed(self.config) if self.kind == "run" else None

    def seed_folders(self) -> list[Path]:
        from synthsae.io import seed_folders

        return seed_folders(self.run_dir) if self.run_dir is not None else list(self.paths)

    @functools.cached_property
    def acts(self) -> Float[Tensor, "n d"] | None:
        """The activations the user gave (kind folders), on CPU; None without."""
        if self.acts_path is None:
            return None
        from synthsae.loaders.acts import read_activations

        return read_activations(self.acts_path, self._loaded[1].d_in)

    def eval_x(self, n: int) -> Float[Tensor, "n d"]:
        """n evaluation activations on the device: fresh truth samples (its eval stream), the real run's held-out
        activations (scaled as in training) or the given activations."""
        if self.kind == "run":
            from synthsae.truth import make_generator, sample

            return sample(self.truth, n, make_generator(self.eval_seed, self.truth.device), details=False).x
        if self.kind == "real":
            return (self.store.load("eval", limit=n) * self.scale).to(self.dev)
        return self.acts.to(self.dev)

    def frequency(self, eval_tokens: int) -> tuple[Tensor | None, str | None]:
        """Per-latent firing frequency [S, m] and where it came from (None when nothing measures it)."""
        if self.kind == "run" and self.truth is not None:
            from synthsae.metrics.analyze import measure_frequency

            freq = measure_frequency(self.sae, self.truth, eval_tokens, self.eval_seed)
            return freq, f"measured on {eval_tokens} fresh samples from the truth (data seed {self.eval_seed})"
        if self.kind in ("run", "real"):
            return seed_sparsity(self.seed_folders())
        return self.stack.frequency, self.stack.frequency_source

    def refit_batches(self, batch_size: int) -> Callable[[int], Iterator[Tensor]] | None:
        """Refit data of pooled SAEs: batches(seed) of [B, d] (None = the truth's own training stream)."""
        if self.kind == "real":
            store, scale, dev = self.store, self.scale, self.dev
            return lambda seed: (b.to(dev) for b in store.batches(batch_size, seed, scale=scale))
        return None


def seed_sparsity(folders: list[Path]) -> tuple[Tensor | None, str | None]:
    """Firing frequencies from sparsity.safetensors (log10; the 1e-10 floor reads back as dead) when every folder
    has one."""
    if not folders or not all((f / "sparsity.safetensors").is_file() for f in folders):
        return None, None
    from synthsae.io import load_sparsity
    from synthsae.metrics.frequency import frequency_from_log10

    return frequency_from_log10(load_sparsity(folders).cpu()), "sparsity.safetensors (training; at the log10 floor = dead)"


def folder_run_config(stack, analysis: AnalysisConfig | None = None) -> RunConfig:
    """A RunConfig describing loaded SAE folders: their SAE config, `analysis` (default AnalysisConfig) and default
    refit settings."""
    rc = RunConfig(preset="loaded")
    rc.sae = dataclasses.replace(stack.sae.cfg)
    rc.analysis = analysis or AnalysisConfig()
    rc.train.seeds = stack.sae.n_seeds
    return rc


def open_source(paths: list[Path], *, fmt: str | None = None, acts: Path | None = None, out: Path | None = None,
                device: str | None = None) -> Source:
    """The Source of what the user pointed at: one run folder (synthetic or real, unless a format or activations
    were named), else SAE folders. For SAE folders `out` defaults to their common parent and is checked to be ours
    to write (synthsae.outdir); nothing is written here."""
    paths = [Path(p) for p in paths]
    import glob

    for p in paths:
        if not glob.has_magic(str(p)) and not p.exists():
            raise ConfigError(f"{str(p)!r}: no such file or directory")
    one = len(paths) == 1 and fmt is None
    if one and acts is None and is_run_dir(paths[0]):
        return Source("run", out or paths[0], run_dir=paths[0], device=device)
    if one and is_real_run(paths[0]):
        if acts is not None:
            raise ConfigError("--acts: a real run measures on its own activations (acts/); drop --acts")
        return Source("real", out or paths[0], run_dir=paths[0], device=device)
    from synthsae.outdir import analysis_folder

    folders = seed_folders_of(paths, fmt)
    target = analysis_folder(folders, out, common_parent(folders))
    return Source("folders", target, paths=folders, fmt=fmt, acts_path=acts, device=device)
