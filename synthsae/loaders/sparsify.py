"""EleutherAI sparsify folders (one per hookpoint, e.g. `layers.6/`): `cfg.json` + `sae.safetensors`.

Keys: `encoder.weight [d_sae, d_in]`, `encoder.bias [d_sae]`, `W_dec [d_sae, d_in]` (already our layout), `b_dec`.
Encode: top-k of relu((x - b_dec) @ encoder.weight.T + encoder.bias); decode: codes @ W_dec + b_dec, i.e. our TopK.
Transcoders, skip connections and the groupmax activation compute something else and are refused.
"""

from __future__ import annotations

from pathlib import Path

from synthsae.io import RunFileError
from synthsae.loaders.common import LoadedSAE, Provenance, build_sae, need_int, need_tensor, read_safetensors
from synthsae.io import read_json

CFG, WEIGHTS = "cfg.json", "sae.safetensors"


def looks_like(folder: Path) -> bool:
    return (folder / CFG).is_file() and (folder / WEIGHTS).is_file()


def load(folder: Path) -> LoadedSAE:
    cfg_path, where = folder / CFG, folder / WEIGHTS
    cfg = read_json(cfg_path)
    if not where.is_file():
        raise RunFileError(f"{where}: missing (a sparsify folder needs {CFG} and {WEIGHTS})")
    for flag, why in (("transcode", "a transcoder predicts another module's output, not its own input"),
                      ("skip_connection", "its W_skip term is not part of an SAE's dictionary")):
        if cfg.get(flag):
            raise RunFileError(f"{cfg_path}: {flag} = true is not supported ({why}); only plain sparsify SAEs load")
    act = cfg.get("activation", "topk")
    if act != "topk":
        raise RunFileError(f"{cfg_path}: activation = {act!r} is not supported (supported: topk)")
    d_in, k = need_int(cfg, "d_in", cfg_path), need_int(cfg, "k", cfg_path)
    t = read_safetensors(where)
    if "encoder.weight" not in t:
        raise RunFileError(f"{where}: tensor 'encoder.weight' missing (has {', '.join(sorted(t)) or 'none'})")
    if t["encoder.weight"].dim() != 2:
        raise RunFileError(f"{where}: tensor 'encoder.weight' has shape {tuple(t['encoder.weight'].shape)}, expected "
                           f"[num_latents, d_in = {d_in}]")
    d_sae = int(t["encoder.weight"].shape[0])
    for key in ("num_latents", "expansion_factor"):
        v = cfg.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise RunFileError(f"{cfg_path}: field {key!r} must be an integer >= 0 (found {v!r:.40})")
    stated = cfg.get("num_latents") or d_in * int(cfg.get("expansion_factor") or 0)
    if stated and stated != d_sae:
        raise RunFileError(f"{cfg_path}: num_latents/expansion_factor give {stated} latents but encoder.weight has {d_sae}")
    if k > d_sae:
        raise RunFileError(f"{cfg_path}: k = {k} exceeds the {d_sae} latents")
    tensors = {
        "W_enc": need_tensor(t, "encoder.weight", (d_sae, d_in), where).T.contiguous(),
        "b_enc": need_tensor(t, "encoder.bias", (d_sae,), where),
        "W_dec": need_tensor(t, "W_dec", (d_sae, d_in), where),
        "b_dec": need_tensor(t, "b_dec", (d_in,), where),
    }
    sae = build_sae("topk", d_in, d_sae, tensors, k=k, apply_b_dec_to_input=True, where=where)
    details = {"hookpoint": folder.name, "k": k, "multi_topk": bool(cfg.get("multi_topk", False)),
               "normalize_decoder": cfg.get("normalize_decoder")}
    prov = Provenance(str(folder), "sparsify", "sparsify", None, "topk", "topk", d_in, d_sae, details)
    return LoadedSAE(sae, None, None, prov)
