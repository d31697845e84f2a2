"""Text for the real side: the user's .txt / .jsonl files, or a default built from Debian text on this machine.

Documents are cut into pieces of at most `MAX_DOC_CHARS`, shuffled with a seed (so a small run sees every
source, not the first file only) and packed into fixed-length token windows: no padding is ever needed.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

from synthsae.config import ConfigError

FORTUNES = Path("/usr/share/games/fortunes")
PYDOC = Path("/usr/share/doc/python3.11/html/_sources")
DEBIAN_PACKAGES = "fortunes bible-kjv python3.11-doc"
MAX_DOC_CHARS = 2000


def _pieces(text: str, limit: int = MAX_DOC_CHARS) -> list[str]:
    """Split a long text at paragraph breaks into pieces of at most ~limit characters."""
    out, cur = [], ""
    for para in text.split("\n\n"):
        if cur and len(cur) + len(para) > limit:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
        while len(cur) > 2 * limit:
            out.append(cur[:limit])
            cur = cur[limit:]
    if cur.strip():
        out.append(cur)
    return [p for p in out if p.strip()]


def _fortunes() -> list[str]:
    docs = []
    if FORTUNES.is_dir():
        for f in sorted(FORTUNES.rglob("*")):
            if f.is_file() and f.suffix not in (".dat", ".u8") and not f.is_symlink():
                text = f.read_text(errors="replace")
                docs += [d.strip() for d in text.split("\n%\n") if d.strip()]
    return docs


def _bible() -> list[str]:
    exe = shutil.which("bible")
    if exe is None:
        return []
    try:
        text = subprocess.run([exe, "Gen1:1-Rev22:21"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return ["\n".join(lines[i : i + 20]) for i in range(0, len(lines), 20)]


def _pydoc() -> list[str]:
    docs = []
    if PYDOC.is_dir():
        for f in sorted(PYDOC.rglob("*.txt")):
            docs += _pieces(f.read_text(errors="replace"))
    return docs


def default_documents() -> tuple[list[str], str]:
    """Documents from the Debian packages fortunes, bible-kjv and python3.11-doc (whichever are installed)."""
    parts = {"fortunes": _fortunes(), "bible-kjv": _bible(), "python3.11-doc": _pydoc()}
    docs = [d for v in parts.values() for d in v]
    if not docs:
        raise ConfigError(f"corpus: no files given and no default corpus on this machine; install the Debian packages "
                          f"({DEBIAN_PACKAGES}: apt-get install -y {DEBIAN_PACKAGES}) or pass --corpus FILE")
    desc = "default Debian text: " + ", ".join(f"{k} ({len(v)} documents)" for k, v in parts.items() if v)
    return docs, desc


def read_documents(paths: list[str | Path]) -> tuple[list[str], str]:
    """Documents from .txt files (split at blank lines into pieces) and .jsonl files (field "text" per line)."""
    docs: list[str] = []
    for p in map(Path, paths):
        if not p.is_file():
            raise ConfigError(f"corpus: {p}: no such file")
        if p.suffix == ".jsonl":
            for i, line in enumerate(p.read_text(errors="replace").splitlines()):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise ConfigError(f"corpus: {p} line {i + 1}: not valid JSON (a .jsonl file needs one object per line)") from None
                text = rec.get("text") if isinstance(rec, dict) else None
                if not isinstance(text, str):
                    raise ConfigError(f"corpus: {p} line {i + 1}: no string field 'text'")
                docs += _pieces(text)
        else:
            docs += _pieces(p.read_text(errors="replace"))
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ConfigError(f"corpus: no text in {', '.join(map(str, paths))} (empty files?)")
    return docs, "files: " + ", ".join(str(p) for p in paths)


def pack_contexts(docs: list[str], tokenizer, n_contexts: int, ctx_len: int, seed: int) -> Int[Tensor, "n T"]:
    """Shuffle the documents, tokenize them in that order (EOS between documents) and cut `n_contexts` windows of ctx_len."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    sep = tokenizer.eos_token_id
    need = n_contexts * ctx_len
    ids: list[int] = []
    for i in order:
        ids += tokenizer(docs[i], add_special_tokens=False)["input_ids"]
        if sep is not None:
            ids.append(int(sep))
        if len(ids) >= need:
            break
    have = len(ids) // ctx_len
    if have < n_contexts:
        raise ConfigError(f"corpus: holds {len(ids)} tokens, {need} needed ({n_contexts} windows of {ctx_len}); "
                          f"give more text or lower --tokens")
    return torch.tensor(ids[:need], dtype=torch.int32).view(n_contexts, ctx_len)
