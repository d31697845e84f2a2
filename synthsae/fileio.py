"""Atomic file writes (temp file beside the target, then rename): a reader never sees half a file.

Files get the mode a plain `open()` would give them (0666 minus the umask), so a run can be shared; JSON files
that another command merges into are read through `read_json_object`, which names a corrupt file in one line.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from torch import Tensor

_UMASK_LOCK = threading.Lock()


class BadFileError(ValueError):
    """A file we need is corrupt or of the wrong kind: one line naming the path and what to do."""


def current_umask() -> int:
    """The process umask (read by setting and restoring it; guarded against other threads doing the same)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is renamed over `path`, on failure removed.

    mkstemp creates the temp file as 0600; it is given 0666 & ~umask before the rename, as open() would.
    """
    p = Path(path)
    check_regular(p, "output file")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, p)
    finally:
        Path(tmp).unlink(missing_ok=True)


def check_regular(path: str | os.PathLike[str], what: str) -> None:
    """Refuse (one-line BadFileError) a path that exists but is not a regular file (a pipe, a device such as
    /dev/null, a socket): a rename over it would replace it with a file."""
    p = Path(path)
    if p.exists() and not p.is_file() and not p.is_dir():
        kind = ("a named pipe (FIFO)" if p.is_fifo() else "a character device" if p.is_char_device() else
                "a block device" if p.is_block_device() else "a socket" if p.is_socket() else "not a regular file")
        raise BadFileError(f"{what} = {str(p)!r}: is {kind}; synthsae writes only regular files, give a file path")


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


def read_json_object(path: str | os.PathLike[str]) -> dict:
    """A JSON object file as a dict; a corrupt file or one holding something else is a one-line BadFileError."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadFileError(f"{p}: not valid JSON ({str(exc).splitlines()[0]}); it is never replaced silently: move it "
                           "away to rebuild it, or restore it from a copy") from None
    if not isinstance(obj, dict):
        raise BadFileError(f"{p}: holds a JSON {type(obj).__name__}, not an object; move it away to rebuild it")
    return obj


def merge_json_key(path: str | os.PathLike[str], key: str, value: Any) -> None:
    """Read-modify-write a JSON object file: set `key`, keep every other key, write atomically.

    Several commands (analyze, ablate, pool) share one metrics.json; none may clobber another's numbers, so a
    corrupt file is refused (BadFileError) rather than replaced.
    """
    p = Path(path)
    old = read_json_object(p) if p.is_file() else {}
    old[key] = value
    atomic_write_json(p, old)


def _nearest_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_dir(path: str | os.PathLike[str], what: str) -> None:
    """Refuse (one-line BadFileError) a folder we could not create or write into, before any work starts."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise BadFileError(f"{what} = {str(p)!r}: is a file, not a folder")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise BadFileError(f"{what} = {str(p)!r}: {str(base)!r} is a file, so the folder cannot be created")
    if not os.access(base, os.W_OK | os.X_OK):
        raise BadFileError(f"{what} = {str(p)!r}: {str(base)!r} is not writable (permission denied)")


def check_writable_file(path: str | os.PathLike[str], what: str) -> None:
    """Refuse (one-line BadFileError) a file path that is a folder or whose folder cannot be written."""
    p = Path(path)
    if p.is_dir():
        raise BadFileError(f"{what} = {str(p)!r}: is a folder; give a file name")
    check_regular(p, what)
    base = _nearest_existing(p.parent)
    if not base.is_dir():
        raise BadFileError(f"{what} = {str(p)!r}: {str(base)!r} is a file, so the folder cannot be created")
    check_writable_dir(p.parent, what)
    if p.exists() and not os.access(p, os.W_OK):
        raise BadFileError(f"{what} = {str(p)!r}: is not writable (permission denied)")
