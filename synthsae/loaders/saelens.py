"""SAELens folders (`cfg.json`, `sae_weights.safetensors`, optional `sparsity.safetensors`): SAELens >= 6 configs
(`architecture` + `metadata`) and the flat configs of earlier versions (`activation_fn_str`, no architecture).

Encode is SAELens's: x' = x - b_dec when apply_b_dec_to_input; pre = x' @ W_enc + b_enc; then ReLU / TopK /
JumpReLU (relu(pre) * (pre > threshold)) / gated. Our own seed folders are SAELens folders too (metadata.variant).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from synthsae.io import RunFileError, load_sae_folders, read_json
from synthsae.metrics.frequency import frequency_from_log10  # the one dead-latent rule (floor = never fired)
from synthsae.sae import saelens_architectures
from synthsae.loaders.common import (
    LoadedSAE,
    Provenance,
    build_sae,
    need_int,
    need_scalar,
    need_tensor,
    read_safetensors,
)

CFG, WEIGHTS, SPARSITY = "cfg.json", "sae_weights.safetensors", "sparsity.safetensors"
# normalize_activations values that change nothing in SAELens's own encode/decode after load_from_disk
NO_OP_NORMALIZATION = ("none", "expected_average_only_in")


def looks_like(folder: Path) -> bool:
    return (folder / CFG).is_file() and (folder / WEIGHTS).is_file()


def flat_to_v6(cfg: dict[str, Any]) -> dict[str, Any]:
    """The fields we need from a pre-6.0 flat config, in 6.x names (what SAELens itself does on load)."""
    out = dict(cfg)
    if "activation_fn_str" in out and "activation_fn" not in out:
        out["activation_fn"] = out["activation_fn_str"]
    if "hook_point" in out and "hook_name" not in out:
        out["hook_name"] = out["hook_point"]
    out.setdefault("apply_b_dec_to_input", True)
    out.setdefault("architecture", "standard")
    kwargs = out.get("activation_fn_kwargs") or {}
    if out.get("activation_fn") == "topk" and isinstance(kwargs, dict) and kwargs.get("k") is not None:
        out["architecture"] = "topk"
        out["k"] = kwargs["k"]
    norm = out.get("normalize_activations")
    if isinstance(norm, bool):
        out["normalize_activations"] = "expected_average_only_in" if norm else "none"
    elif norm is None:
        out["normalize_activations"] = "none"
    return out


def version_of(cfg: dict[str, Any]) -> str | None:
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    v = meta.get("sae_lens_version") or cfg.get("sae_lens_version")
    return str(v) if v else None


def _is_pre6(version: str | None, cfg: dict[str, Any]) -> bool:
    if "metadata" in cfg and "architecture" in cfg:
        return False
    if version is None:
        return True
    try:
        return int(version.split(".")[0]) < 6
    except ValueError:
        return True


def load(folder: Path) -> LoadedSAE:
    """One SAELens folder as our single-seed SAE, with its stored sparsity (log10 frequency) when present."""
    cfg_path = folder / CFG
    raw = read_json(cfg_path)
    if "metadata" in raw and not isinstance(raw["metadata"], dict):
        raise RunFileError(f"{cfg_path}: field 'metadata' must be an object (found a {type(raw['metadata']).__name__})")
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    version = version_of(raw)
    ours = "variant" in meta  # written by synthsae.io
    pre6 = not ours and _is_pre6(version, raw)
    cfg = flat_to_v6(raw) if pre6 else raw
    d_in, d_sae = need_int(cfg, "d_in", cfg_path), need_int(cfg, "d_sae", cfg_path)
    arch, architectures = cfg.get("architecture", "standard"), saelens_architectures()
    if not isinstance(arch, str):
        raise RunFileError(f"{cfg_path}: architecture = {arch!r:.40}: must be a name (known: {', '.join(architectures)})")
    details = {k: cfg.get(k) or meta.get(k) for k in ("hook_name", "model_name") if cfg.get(k) or meta.get(k)}
    if pre6:
        details["config_schema"] = "flat (SAELens < 6)"
    if ours:
        sae = load_sae_folders([folder])
        variant = sae.variant
        library = "synthsae"
        version = meta.get("synthsae_version")  # sae_lens_version here is the schema we write, not a library run
    else:
        norm = cfg.get("normalize_activations", "none")
        if norm not in NO_OP_NORMALIZATION:
            raise RunFileError(f"{cfg_path}: normalize_activations = {norm!r} is not supported "
                               f"(supported: {', '.join(NO_OP_NORMALIZATION)}: fold the normalisation into the weights first)")
        if cfg.get("finetuning_scaling_factor"):
            raise RunFileError(f"{cfg_path}: finetuning_scaling_factor = true is not supported (its decoder scales codes "
                               "by a learned factor; fold it into W_dec first)")
        reshape = cfg.get("reshape_activations", "none")
        if reshape not in ("none", "hook_z", None):
            raise RunFileError(f"{cfg_path}: reshape_activations = {reshape!r} is not supported (supported: none, hook_z)")
        if arch not in architectures:
            raise RunFileError(f"{cfg_path}: architecture {arch!r} is not one we can load "
                               f"(known: {', '.join(architectures)})")
        if pre6 and cfg.get("activation_fn", "relu") not in ("relu", "topk"):
            raise RunFileError(f"{cfg_path}: activation_fn_str = {cfg.get('activation_fn')!r} is not supported "
                               "(supported: relu, topk)")
        variant = architectures[arch]
        sae = _build(folder, cfg, arch, variant, d_in, d_sae)
        library = "sae_lens"
    if sae.d_in != d_in or sae.d_sae != d_sae:
        raise RunFileError(f"{cfg_path}: d_in/d_sae = {d_in}/{d_sae} but the weights are {sae.d_in}/{sae.d_sae}")
    freq, source = None, None
    if (folder / SPARSITY).is_file():
        t = read_safetensors(folder / SPARSITY)
        if "sparsity" not in t or tuple(t["sparsity"].shape) != (d_sae,):
            raise RunFileError(f"{folder / SPARSITY}: needs a tensor 'sparsity' of shape ({d_sae},) "
                               f"(has {', '.join(f'{k} {tuple(v.shape)}' for k, v in t.items()) or 'none'})")
        if not t["sparsity"].is_floating_point() or not bool(torch.isfinite(t["sparsity"]).all()):
            raise RunFileError(f"{folder / SPARSITY}: 'sparsity' must hold finite floating-point log10 frequencies "
                               f"(dtype {t['sparsity'].dtype}, NaN or Inf found or integer values)")
        freq, source = frequency_from_log10(t["sparsity"]), f"{SPARSITY} (log10 frequency recorded by {library} in training)"
    if "k" in cfg:
        details["k"] = cfg["k"]
    prov = Provenance(str(folder), "saelens", library, version, str(arch), variant, d_in, d_sae, details)
    seed = meta.get("init_seed") if ours else None
    return LoadedSAE(sae, freq, source, prov, int(seed) if isinstance(seed, int) else None)


def _build(folder: Path, cfg: dict[str, Any], arch: str, variant: str, d_in: int, d_sae: int):
    where = folder / WEIGHTS
    t = read_safetensors(where)
    out = {"W_enc": need_tensor(t, "W_enc", (d_in, d_sae), where), "W_dec": need_tensor(t, "W_dec", (d_sae, d_in), where),
           "b_dec": need_tensor(t, "b_dec", (d_in,), where)}
    if arch == "gated":
        for k in ("b_gate", "b_mag", "r_mag"):
            out[k] = need_tensor(t, k, (d_sae,), where)
    else:
        out["b_enc"] = need_tensor(t, "b_enc", (d_sae,), where)
    if arch in ("jumprelu",):
        out["threshold"] = need_tensor(t, "threshold", (d_sae,), where)
    if arch in ("batchtopk", "matryoshka_batchtopk"):
        if "threshold" in t:
            out["threshold"] = need_tensor(t, "threshold", (d_sae,), where)
        else:
            thr = torch.tensor(need_scalar(t, "topk_threshold", where))
            out["threshold"] = thr.expand(d_sae).clone()
    k = 1
    if arch == "topk":
        k = need_int(cfg, "k", folder / CFG)
        if k > d_sae:
            raise RunFileError(f"{folder / CFG}: k = {k} exceeds d_sae = {d_sae}")
    if cfg.get("rescale_acts_by_decoder_norm") and arch in ("topk", "batchtopk", "matryoshka_batchtopk"):
        # SAELens multiplies pre-activations by ||W_dec row|| before the top-k (and the threshold) and divides the codes
        # by it before decoding: the same function as folding the norms into the encoder (its fold_W_dec_norm)
        norms = out["W_dec"].norm(dim=1).clamp_min(1e-12)
        out["W_enc"] = out["W_enc"] * norms
        out["b_enc"] = out["b_enc"] * norms
        out["W_dec"] = out["W_dec"] / norms[:, None]
    return build_sae(variant, d_in, d_sae, out, k=k, apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
                     where=where)
