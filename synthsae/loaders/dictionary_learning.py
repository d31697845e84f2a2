"""dictionary_learning folders (`trainer_<i>/`): `ae.pt` (a pickled state dict) and the trainer's `config.json`.

`ae.pt` is read with `torch.load(weights_only=True)` only: a pickle that would build anything but tensors is refused
and nothing in it runs. The class comes from config.json's trainer.dict_class. Like the library's own
`AutoEncoder.from_pretrained`, plain ReLU autoencoders get unit-norm decoder rows (the norms move into the encoder,
the reconstruction is unchanged).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from synthsae.io import RunFileError
from synthsae.loaders.common import LoadedSAE, Provenance, build_sae, need_scalar, need_tensor
from synthsae.io import read_json

CFG, WEIGHTS = "config.json", "ae.pt"
# dict_class -> our variant
CLASSES = {
    "AutoEncoder": "relu",
    "GatedAutoEncoder": "gated",
    "JumpReluAutoEncoder": "jumprelu",
    "AutoEncoderTopK": "topk",
    "BatchTopKSAE": "batchtopk",
    "MatryoshkaBatchTopKSAE": "matryoshka",
}


def looks_like(folder: Path) -> bool:
    return (folder / WEIGHTS).is_file() and (folder / CFG).is_file()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True): tensors and plain containers only; any other pickle is refused unrun."""
    if not path.is_file():
        raise RunFileError(f"{path}: missing")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "not a weights-only pickle"
        raise RunFileError(f"{path}: refused: not a weights-only state dict, nothing was run ({first[:160]})") from None
    except Exception as exc:  # noqa: BLE001 - truncated zips, wrong magic numbers ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunFileError(f"{path}: unreadable or corrupted torch file ({first[:160]})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RunFileError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    return obj


def load(folder: Path) -> LoadedSAE:
    cfg_path, where = folder / CFG, folder / WEIGHTS
    cfg = read_json(cfg_path)
    trainer = cfg.get("trainer")
    if not isinstance(trainer, dict):
        raise RunFileError(f"{cfg_path}: field 'trainer' missing or not an object")
    cls = trainer.get("dict_class")
    if not isinstance(cls, str) or cls not in CLASSES:
        raise RunFileError(f"{cfg_path}: trainer.dict_class = {cls!r} is not supported (supported: {', '.join(CLASSES)})")
    variant = CLASSES[cls]
    sd = read_state_dict(where)
    d_in, d_sae = _dims(sd, cls, where)
    for key, val in (("activation_dim", d_in), ("dict_size", d_sae)):
        if trainer.get(key) is not None and trainer[key] != val:
            raise RunFileError(f"{cfg_path}: trainer.{key} = {trainer[key]} but {WEIGHTS} has {val}")
    k, apply_b_dec = 1, True
    if cls == "AutoEncoder":
        W_enc = need_tensor(sd, "encoder.weight", (d_sae, d_in), where).T
        b_enc = need_tensor(sd, "encoder.bias", (d_sae,), where)
        W_dec = need_tensor(sd, "decoder.weight", (d_in, d_sae), where).T
        norms = W_dec.norm(dim=1).clamp_min(1e-12)
        t = {"W_enc": W_enc * norms, "b_enc": b_enc * norms, "W_dec": W_dec / norms[:, None],
             "b_dec": need_tensor(sd, "bias", (d_in,), where)}
    elif cls == "GatedAutoEncoder":
        t = {"W_enc": need_tensor(sd, "encoder.weight", (d_sae, d_in), where).T,
             "W_dec": need_tensor(sd, "decoder.weight", (d_in, d_sae), where).T,
             "b_dec": need_tensor(sd, "decoder_bias", (d_in,), where),
             "b_gate": need_tensor(sd, "gate_bias", (d_sae,), where),
             "b_mag": need_tensor(sd, "mag_bias", (d_sae,), where),
             "r_mag": need_tensor(sd, "r_mag", (d_sae,), where)}
    elif cls == "JumpReluAutoEncoder":
        t = {k_: need_tensor(sd, k_, s, where) for k_, s in
             (("W_enc", (d_in, d_sae)), ("b_enc", (d_sae,)), ("W_dec", (d_sae, d_in)), ("b_dec", (d_in,)), ("threshold", (d_sae,)))}
        apply_b_dec = False  # the library's default for its own files (only SAELens imports set it)
    else:  # TopK family
        if cls == "MatryoshkaBatchTopKSAE":
            t = {k_: need_tensor(sd, k_, s, where) for k_, s in
                 (("W_enc", (d_in, d_sae)), ("b_enc", (d_sae,)), ("W_dec", (d_sae, d_in)), ("b_dec", (d_in,)))}
        else:
            t = {"W_enc": need_tensor(sd, "encoder.weight", (d_sae, d_in), where).T,
                 "b_enc": need_tensor(sd, "encoder.bias", (d_sae,), where),
                 "W_dec": need_tensor(sd, "decoder.weight", (d_in, d_sae), where).T,
                 "b_dec": need_tensor(sd, "b_dec", (d_in,), where)}
        k = int(need_scalar(sd, "k", where))
        if not 0 < k <= d_sae:
            raise RunFileError(f"{where}: k = {k} must be in 1..{d_sae}")
        if cls != "AutoEncoderTopK":  # BatchTopK and Matryoshka encode with the global threshold by default
            t["threshold"] = torch.full((d_sae,), need_scalar(sd, "threshold", where))
    t = {k_: v.contiguous() for k_, v in t.items()}
    sae = build_sae(variant, d_in, d_sae, t, k=k, apply_b_dec_to_input=apply_b_dec, where=where)
    seed = trainer.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise RunFileError(f"{cfg_path}: trainer.seed = {seed!r:.40}: must be an integer >= 0")
    details = {k_: trainer[k_] for k_ in ("trainer_class", "lm_name", "layer", "submodule_name", "seed", "k")
               if trainer.get(k_) is not None}
    prov = Provenance(str(folder), "dictionary_learning", "dictionary_learning", None, str(cls), variant, d_in, d_sae, details)
    return LoadedSAE(sae, None, None, prov, int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else None)


def _dims(sd: dict[str, torch.Tensor], cls: str, where: Path) -> tuple[int, int]:
    """(d_in, d_sae) from the state dict's main weight."""
    if cls in ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"):
        if "W_enc" not in sd or sd["W_enc"].dim() != 2:
            raise RunFileError(f"{where}: tensor 'W_enc' [d_in, d_sae] missing (has {', '.join(sorted(sd)) or 'none'})")
        return int(sd["W_enc"].shape[0]), int(sd["W_enc"].shape[1])
    if "encoder.weight" not in sd or sd["encoder.weight"].dim() != 2:
        raise RunFileError(f"{where}: tensor 'encoder.weight' [d_sae, d_in] missing (has {', '.join(sorted(sd)) or 'none'})")
    return int(sd["encoder.weight"].shape[1]), int(sd["encoder.weight"].shape[0])
