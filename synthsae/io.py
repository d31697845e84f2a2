"""Save and load SAEs in SAELens's folder layout, truth files and whole run folders.

A seed folder holds `cfg.json` (SAELens 6 fields + `architecture`; our variant, seeds and configs under
`metadata`), `sae_weights.safetensors` (that seed's tensors, no S axis, SAELens names) and
`sparsity.safetensors` (key `sparsity` [d_sae]: log10 of each latent's firing frequency, +1e-10 inside the log).
Every problem with a file is a one-line `RunFileError` naming the file and what is wrong.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from synthsae.config import ConfigError, RunConfig, SAEConfig
from synthsae.fileio import atomic_save_safetensors, atomic_write_json
from synthsae.sae import get_variant, saelens_architectures
from synthsae.sae.base import SAE

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
SPARSITY = "sparsity.safetensors"
SAELENS_VERSION = "6.0.0"  # the config schema we write (SAELens reads metadata.sae_lens_version)


class RunFileError(ConfigError):
    """A missing, unreadable or inconsistent file in a seed or run folder (one line: the path and the problem)."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------------------------- seed folders


def save_seed_folder(folder: str | os.PathLike[str], sae: SAE, s: int, metadata: dict[str, Any],
                     sparsity: Float[Tensor, " m"] | None = None, cfg_extra: dict[str, Any] | None = None) -> Path:
    """Write seed s of `sae` as a SAELens folder (atomic per file); `cfg_extra` adds or replaces cfg.json keys."""
    folder = Path(folder)
    meta = {"sae_lens_version": SAELENS_VERSION, "sae_lens_training_version": SAELENS_VERSION,
            "variant": sae.variant, "init_seed": sae.init_seeds[s], **metadata}
    meta.setdefault("sae", asdict(sae.cfg))
    cfg = {
        "architecture": sae.saelens_architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": _dtype_name(sae.dtype),
        "device": "cpu",
        "apply_b_dec_to_input": bool(sae.cfg.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": "none",
        **sae.saelens_cfg(),
        "metadata": meta,
    }
    cfg.update(cfg_extra or {})  # a replaced key keeps its place, a new one goes last
    atomic_save_safetensors({k: v.detach() for k, v in sae.seed_tensors(s).items()}, folder / WEIGHTS)
    if sparsity is not None:
        atomic_save_safetensors({"sparsity": sparsity.detach().float()}, folder / SPARSITY)
    atomic_write_json(folder / CFG, cfg)  # written last: a folder with cfg.json is complete
    return folder


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, or a one-line RunFileError naming it."""
    if not path.is_file():
        raise RunFileError(f"{path}: missing")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFileError(f"{path}: not valid JSON ({exc})") from None
    except ValueError as exc:  # an integer of thousands of digits (Python's int-from-string limit)
        raise RunFileError(f"{path}: a number in it is too long to read ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(obj, dict):
        raise RunFileError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def _read_cfg(folder: Path) -> dict[str, Any]:
    path = folder / CFG
    if not folder.is_dir():
        raise RunFileError(f"{folder}: no such seed folder")
    if not path.is_file():
        raise RunFileError(f"{path}: missing (a seed folder needs {CFG}, {WEIGHTS})")
    cfg = read_json(path)
    for key in ("d_in", "d_sae"):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_DIM:
            raise RunFileError(f"{path}: field {key!r} must be an integer 1..{MAX_DIM} (found {short_repr(v)})")
    if "metadata" in cfg and not isinstance(cfg["metadata"], dict):
        raise RunFileError(f"{path}: field 'metadata' must be an object (found a {type(cfg['metadata']).__name__})")
    return cfg


MAX_DIM = 2**26  # d_in / d_sae above this are typos (a stacked SAE of that size would not fit anywhere)


def short_repr(v: Any) -> str:
    """repr(v) cut to 40 characters, for naming a bad value in a one-line error."""
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def read_tensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file on the CPU; RunFileError (one line) when missing or damaged."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise RunFileError(f"{path}: missing")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for damaged files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunFileError(f"{path}: unreadable or corrupted safetensors file ({msg})") from None


def sae_config_from_cfg(cfg: dict[str, Any], where: Path) -> SAEConfig:
    """Our SAEConfig from a cfg.json: metadata.sae when we wrote it, else from SAELens's own fields."""
    meta = cfg.get("metadata") or {}
    if not isinstance(meta, dict):
        raise RunFileError(f"{where / CFG}: field 'metadata' must be an object (found a {type(meta).__name__})")
    if isinstance(meta.get("sae"), dict):
        known = {f.name for f in fields(SAEConfig)}
        unknown = sorted(set(meta["sae"]) - known)
        if unknown:
            raise RunFileError(f"{where / CFG}: metadata.sae.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")
        sc = SAEConfig(**meta["sae"])
    else:
        arch, arch_to_variant = cfg.get("architecture", "standard"), saelens_architectures()
        if not isinstance(arch, str) or arch not in arch_to_variant:
            raise RunFileError(f"{where / CFG}: architecture = {short_repr(arch)} is not one we can load "
                               f"(known: {', '.join(arch_to_variant)})")
        k = cfg.get("k", 1)
        sc = SAEConfig(variant=arch_to_variant[arch], d_sae=cfg["d_sae"], k=k,
                       apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)))
    variant = meta.get("variant", sc.variant)
    if not isinstance(variant, str):
        raise RunFileError(f"{where / CFG}: metadata.variant = {short_repr(variant)}: must be a variant name")
    sc.variant = variant
    if sc.d_sae != cfg["d_sae"]:
        raise RunFileError(f"{where / CFG}: d_sae = {cfg['d_sae']} but metadata.sae.d_sae = {short_repr(sc.d_sae)}")
    from synthsae.config import validate_sae

    try:
        validate_sae(sc, cfg["d_in"])  # k = "x", 0 or 1e20 and every other field, checked once, here
    except ConfigError as exc:
        raise RunFileError(f"{where / CFG}: {str(exc).replace('sae.', 'metadata.sae.', 1)}") from None
    seed = meta.get("init_seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise RunFileError(f"{where / CFG}: metadata.init_seed = {short_repr(seed)}: must be an integer >= 0")
    return sc


def load_sae_folders(folders: list[str | os.PathLike[str]], device: str | torch.device = "cpu") -> SAE:
    """Stack S seed folders (same variant and shapes) into one SAE with S seeds, in the given order."""
    if not folders:
        raise RunFileError("no seed folders given")
    paths = [Path(f) for f in folders]
    cfgs = [_read_cfg(p) for p in paths]
    sae_cfgs = [sae_config_from_cfg(c, p) for c, p in zip(cfgs, paths)]
    first, first_cfg = paths[0], sae_cfgs[0]
    for p, c, sc in zip(paths, cfgs, sae_cfgs):
        if sc.variant != first_cfg.variant or c["d_in"] != cfgs[0]["d_in"] or sc.d_sae != first_cfg.d_sae:
            raise RunFileError(f"{p}: {sc.variant} d_in={c['d_in']} d_sae={sc.d_sae} does not match {first}: "
                               f"{first_cfg.variant} d_in={cfgs[0]['d_in']} d_sae={first_cfg.d_sae}")
    try:
        cls = get_variant(first_cfg.variant)
    except ConfigError as exc:
        raise RunFileError(f"{first / CFG}: {exc}") from None
    init_seeds = [int((c.get("metadata") or {}).get("init_seed", i)) for i, c in enumerate(cfgs)]
    dtype = getattr(torch, str(cfgs[0].get("dtype", "float32")).removeprefix("torch."), torch.float32)
    if not isinstance(dtype, torch.dtype):
        dtype = torch.float32
    from synthsae.memory import check_stack_fits

    check_stack_fits(len(paths), cfgs[0]["d_in"], first_cfg.d_sae, str(first))  # before the stack is allocated
    sae = cls.empty_like(first_cfg, cfgs[0]["d_in"], init_seeds, device="cpu", dtype=dtype)
    expected = {k: tuple(t.shape) for k, t in sae.seed_tensors(0).items()}
    per_seed = []
    for p in paths:
        tensors = read_tensors(p / WEIGHTS)
        for k, shape in expected.items():
            if k not in tensors:
                raise RunFileError(f"{p / WEIGHTS}: tensor {k!r} missing (has {', '.join(sorted(tensors)) or 'none'})")
            if tuple(tensors[k].shape) != shape:
                raise RunFileError(f"{p / WEIGHTS}: tensor {k!r} has shape {tuple(tensors[k].shape)}, expected {shape}")
            if not tensors[k].is_floating_point():
                raise RunFileError(f"{p / WEIGHTS}: tensor {k!r} has dtype {tensors[k].dtype}; weights must be floating point")
            if not bool(torch.isfinite(tensors[k]).all()):
                raise RunFileError(f"{p / WEIGHTS}: tensor {k!r} holds NaN or Inf values")
        per_seed.append(tensors)
    try:
        sae.load_seed_tensors(per_seed)
    except (KeyError, RuntimeError) as exc:
        raise RunFileError(f"{first}: cannot load weights ({exc})") from None
    return sae.to(device)


def load_sparsity(folders: list[str | os.PathLike[str]]) -> Float[Tensor, "S m"]:
    """log10 firing frequencies [S, d_sae] from each folder's sparsity.safetensors."""
    rows = []
    for f in folders:
        t = read_tensors(Path(f) / SPARSITY)
        if "sparsity" not in t:
            raise RunFileError(f"{Path(f) / SPARSITY}: no 'sparsity' tensor")
        rows.append(t["sparsity"].reshape(-1))
    if len({r.numel() for r in rows}) > 1:
        raise RunFileError(f"{folders[0]}: sparsity lengths differ across folders ({sorted({r.numel() for r in rows})})")
    return torch.stack(rows)


# ----------------------------------------------------------------------------------------------- truth & runs


def save_truth(path: str | os.PathLike[str], truth) -> None:
    """truth.safetensors: Truth.tensors() by name (docs/architecture.md), with the truth config as JSON metadata."""
    atomic_save_safetensors(truth.tensors(), path, metadata={"truth_config": json.dumps(asdict(truth.cfg))})


def load_truth_tensors(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The raw tensors of a truth.safetensors file (readable without our code, too)."""
    return read_tensors(Path(path))


def seed_folders(run_dir: str | os.PathLike[str]) -> list[Path]:
    """seeds/seed_<k>/ of a run, in k order."""
    root = Path(run_dir) / "seeds"
    if not root.is_dir():
        raise RunFileError(f"{root}: missing (is {run_dir} a finished training run?)")
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("seed_"):
            if not (p.name[5:].isascii() and p.name[5:].isdigit() and len(p.name) <= 15):
                raise RunFileError(f"{p}: not a seed folder name (seed_<k>, k a whole number); rename or move it away")
            found.append((int(p.name[5:]), p))
    if not found:
        raise RunFileError(f"{root}: holds no seed_<k> folders")
    return [p for _, p in sorted(found)]


def check_seed_folders(run_dir: str | os.PathLike[str], allow_missing: bool = False) -> list[str]:
    """Names of the seed folders a run's config.toml promises (train.seeds) but seeds/ lacks.

    Missing folders are a one-line RunFileError unless allow_missing (then the caller says which are gone).
    """
    from synthsae import config as C

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.toml"
    if not cfg_path.is_file() or not (run_dir / "seeds").is_dir():
        return []
    try:
        n = C.load(cfg_path).train.seeds
    except ConfigError as exc:
        raise RunFileError(f"{cfg_path}: {exc}") from None
    present = {p.name for p in seed_folders(run_dir)} if any((run_dir / "seeds").glob("seed_*")) else set()
    missing = [f"seed_{k}" for k in range(n) if f"seed_{k}" not in present]
    if missing and not allow_missing:
        raise RunFileError(f"{run_dir / 'seeds'}: missing {', '.join(missing)} of the run's {n} seeds; pass "
                           f"--allow-missing-seeds to go on with the {n - len(missing)} present")
    return missing


def load_run(run_dir: str | os.PathLike[str], device: str | torch.device = "cpu"):
    """(RunConfig, SAE with every seed, Truth or None) of a run folder; checks the truth file against the config."""
    from synthsae import config as C

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFileError(f"{run_dir}: no such run folder")
    cfg_path = run_dir / "config.toml"
    if not cfg_path.is_file():
        raise RunFileError(f"{cfg_path}: missing (not a run folder?)")
    try:
        cfg: RunConfig = C.load(cfg_path)
    except ConfigError as exc:
        raise RunFileError(f"{cfg_path}: {exc}") from None
    sae = load_sae_folders(seed_folders(run_dir), device=device)
    truth = None
    tpath = run_dir / "truth.safetensors"
    if tpath.exists():
        from synthsae.truth import build_truth

        stored = load_truth_tensors(tpath)
        truth = build_truth(cfg.truth, device=device)
        for k, v in truth.tensors().items():
            if k not in stored or stored[k].shape != v.shape or not torch.allclose(stored[k].to(v.device, v.dtype), v, atol=1e-6):
                raise RunFileError(f"{tpath}: tensor {k!r} does not match the truth built from config.toml")
    return cfg, sae, truth
