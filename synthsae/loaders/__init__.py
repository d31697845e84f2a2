"""Load SAEs written by other libraries (SAELens, sparsify, dictionary_learning) as our multi-seed SAE.

One folder = one seed. `load_folder` turns a folder into a single-seed SAE with the library's own encode/decode,
its stored firing frequency (plain, dead = 0) where the library keeps one, and a provenance record;
`load_stack` stacks several folders of one shape on the seed axis; `expand_paths` turns globs and parent folders
into seed folders. The format is detected from the files; `fmt` overrides.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from synthsae.io import RunFileError
from synthsae.loaders import dictionary_learning, saelens, sparsify
from synthsae.loaders.common import LoadedSAE, Provenance
from synthsae.sae.base import SAE

FORMATS = {"saelens": saelens, "sparsify": sparsify, "dictionary_learning": dictionary_learning}

__all__ = ["FORMATS", "LoadedSAE", "LoadedStack", "Provenance", "detect_format", "expand_paths", "load_folder",
           "load_stack"]


@dataclass
class LoadedStack:
    """S folders stacked on the seed axis: the SAE, per-seed stored frequencies (or None) and provenance per seed."""

    sae: SAE
    frequency: Float[Tensor, "S m"] | None  # None unless every folder stores one
    frequency_source: str | None
    provenance: list[Provenance]

    def sources(self) -> list[dict]:
        return [p.as_dict() for p in self.provenance]


def detect_format(folder: str | os.PathLike[str]) -> str:
    """The format of an SAE folder from the files it holds (one-line RunFileError when it is none we know)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunFileError(f"{folder}: no such SAE folder")
    found = [name for name, mod in FORMATS.items() if mod.looks_like(folder)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise RunFileError(f"{folder}: files of several formats ({', '.join(found)}); choose one with --format")
    have = sorted(p.name for p in folder.iterdir())[:8]
    raise RunFileError(f"{folder}: not an SAE folder (SAELens: cfg.json + sae_weights.safetensors; sparsify: cfg.json + "
                       f"sae.safetensors; dictionary_learning: config.json + ae.pt); it holds {', '.join(have) or 'nothing'}")


def load_folder(folder: str | os.PathLike[str], fmt: str | None = None) -> LoadedSAE:
    """One SAE folder as a single-seed SAE (format detected unless `fmt` names one of FORMATS)."""
    folder = Path(folder)
    if fmt is not None and fmt not in FORMATS:
        raise RunFileError(f"format = {fmt!r}: must be one of {', '.join(FORMATS)}")
    if not folder.is_dir():
        raise RunFileError(f"{folder}: no such SAE folder")
    return FORMATS[fmt or detect_format(folder)].load(folder)


def _is_sae_folder(p: Path) -> bool:
    return p.is_dir() and any(mod.looks_like(p) for mod in FORMATS.values())


def expand_paths(paths: list[str | os.PathLike[str]]) -> list[Path]:
    """Seed folders from command-line paths: a glob pattern (quoted, so the shell left it), an SAE folder, or a
    parent folder whose direct sub-folders (or their single SAE sub-folder, as sparsify's `layers.N/`) are SAE
    folders. Order: as given, globs and parents sorted by name. Duplicates are an error."""
    out: list[Path] = []
    for raw in paths:
        s = str(raw)
        if glob.has_magic(s):
            hits = sorted(Path(h) for h in glob.glob(s))
            if not hits:
                raise RunFileError(f"{s!r}: the pattern matches nothing")
            out += hits
            continue
        p = Path(s)
        if not p.exists():
            raise RunFileError(f"{s!r}: no such file or directory")
        if not p.is_dir() or _is_sae_folder(p):
            out.append(p)
            continue
        kids = sorted(c for c in p.iterdir() if c.is_dir())
        direct = [c for c in kids if _is_sae_folder(c)]
        if direct:
            out += direct
            continue
        nested = [[g for g in sorted(c.iterdir()) if _is_sae_folder(g)] for c in kids]
        several = [n for n in nested if len(n) > 1]
        if several:
            raise RunFileError(f"{p}: {several[0][0].parent} holds several SAE folders ({', '.join(g.name for g in several[0])}); "
                               f"name one with a glob, e.g. '{p}/*/{several[0][0].name}'")
        if nested and all(len(n) == 1 for n in nested if n) and any(nested):
            out += [n[0] for n in nested if n]
            continue
        out.append(p)  # not an SAE folder: load_folder names it
    seen: set[Path] = set()
    for p in out:
        r = p.resolve()
        if r in seen:
            raise RunFileError(f"{p}: given twice (each folder is one seed)")
        seen.add(r)
    return out


def _signature(sae: SAE) -> tuple:
    return (sae.variant, sae.d_in, sae.d_sae, sae.cfg.k if sae.variant in ("topk",) else None,
            bool(sae.cfg.apply_b_dec_to_input))


def _describe(sae: SAE) -> str:
    k = f" k={sae.cfg.k}" if sae.variant == "topk" else ""
    return f"{sae.variant} d_in={sae.d_in} d_sae={sae.d_sae}{k} apply_b_dec_to_input={bool(sae.cfg.apply_b_dec_to_input)}"


def stack(loaded: list[LoadedSAE]) -> LoadedStack:
    """Stack single-seed SAEs of one variant and shape on the seed axis; the first odd one is named."""
    if not loaded:
        raise RunFileError("no SAE folders given")
    first = loaded[0]
    for item in loaded[1:]:
        if _signature(item.sae) != _signature(first.sae):
            raise RunFileError(f"{item.provenance.path}: {_describe(item.sae)} does not match {first.provenance.path}: "
                               f"{_describe(first.sae)} (every seed must have one architecture and shape)")
    from synthsae.memory import check_stack_fits

    check_stack_fits(len(loaded), first.sae.d_in, first.sae.d_sae, str(first.provenance.path))
    seeds = [it.init_seed if it.init_seed is not None else i for i, it in enumerate(loaded)]
    cls = type(first.sae)
    sae = cls.empty_like(first.sae.cfg, first.sae.d_in, seeds, device="cpu", dtype=torch.float32)
    states = [it.sae.state_dict() for it in loaded]
    sae.load_state_dict({k: torch.cat([s[k] for s in states], dim=0) for k in states[0]})
    freq, source = None, None
    if all(it.frequency is not None for it in loaded):
        freq = torch.stack([it.frequency for it in loaded])
        srcs = sorted({it.frequency_source for it in loaded if it.frequency_source})
        source = "; ".join(srcs)
    return LoadedStack(sae, freq, source, [it.provenance for it in loaded])


def load_stack(folders: list[str | os.PathLike[str]], fmt: str | None = None) -> LoadedStack:
    """Several SAE folders (one per seed, same architecture and shape) as one multi-seed SAE."""
    return stack([load_folder(f, fmt) for f in folders])
