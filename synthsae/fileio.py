"""Atomic file writes (temp file beside the target, then rename): a reader never sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from torch import Tensor


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is renamed over `path`, on failure removed."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, p)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def atomic_save_safetensors(tensors: dict[str, Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> None:
    """safetensors.torch.save_file, atomically; tensors are made contiguous and moved to the CPU."""
    from safetensors.torch import save_file

    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata=metadata)


def merge_json_key(path: str | os.PathLike[str], key: str, value: Any) -> None:
    """Read-modify-write a JSON object file: set `key`, keep every other key, write atomically.

    Several commands (analyze, ablate, pool) share one metrics.json; none may clobber another's numbers.
    """
    p = Path(path)
    old: dict = {}
    if p.is_file():
        try:
            old = json.loads(p.read_text())
        except json.JSONDecodeError:
            old = {}
        if not isinstance(old, dict):
            old = {}
    old[key] = value
    atomic_write_json(p, old)
