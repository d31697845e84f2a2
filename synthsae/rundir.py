"""Who owns a run folder: a marker file that says synthsae wrote it, and a lock so one process writes it at a time.

`--force` clears only folders that carry the marker (or are empty), and only the names a run writes; a second
process that tries to write the same run while the first holds the lock is refused in one line.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

MARKER = ".synthsae-run"  # written when a run folder is first created; also the file that is locked
# what a run writes at its top level (files and folders); --force removes these and nothing else
RUN_FILES = ("config.toml", "truth.safetensors", "train.json", "metrics.json", "analysis_latents.safetensors",
             "report.md", "report.html")
RUN_DIRS = ("seeds", "checkpoint", "figures", "pooled")

_held: dict[str, list] = {}  # absolute path -> [fd, depth]: the lock is re-entrant within one process


class RunFolderError(FileExistsError):
    """A folder that is not ours to overwrite, or one that another process is writing (one line)."""


def is_run_folder(out: Path) -> bool:
    """True when synthsae wrote this folder: the marker, or (runs made before it) config.toml beside a file that
    only a run holds (truth.safetensors, train.json, a checkpoint or a seed's cfg.json)."""
    out = Path(out)
    if (out / MARKER).is_file():
        return True
    ours = ("truth.safetensors", "train.json", "checkpoint/latest.json", "checkpoint/state.pt")  # only a run holds these
    return (out / "config.toml").is_file() and (any((out / n).is_file() for n in ours)
                                                or any((out / "seeds").glob("seed_*/cfg.json")))


def check_overwritable(out: Path) -> None:
    """Refuse --force on a folder that holds anything but a synthsae run (an empty or absent folder is fine)."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise RunFolderError(f"--out = {str(out)!r}: is a file, not a run folder")
    if any(out.iterdir()) and not is_run_folder(out):
        names = sorted(p.name for p in out.iterdir())
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise RunFolderError(f"{out}: not a synthsae run (no {MARKER}; holds {shown}); --force only overwrites runs, "
                             "so pick an empty or new folder")


def clear_run(out: Path, names: tuple[str, ...] | None = None) -> None:
    """Remove what a run writes (all of RUN_FILES / RUN_DIRS, or only `names`), never anything else.

    Inside a run's folders only our own entries go (seeds/seed_<k>, figures/*.png, pooled/*/, checkpoint/*);
    a folder is removed only once it is empty, so a colleague's file in figures/ survives.
    """
    out = Path(out)
    for name in names or RUN_FILES + RUN_DIRS:
        p = out / name
        if p.is_symlink():  # never delete through a link (to a colleague's folder, say): remove the link itself
            p.unlink()
        elif name in RUN_DIRS and p.is_dir():
            pattern = {"seeds": "seed_*", "figures": "*.png", "pooled": "*", "checkpoint": "*"}[name]
            for child in p.glob(pattern):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink(missing_ok=True)
            try:
                p.rmdir()
            except OSError:
                pass
        elif p.is_file() or p.is_symlink():
            p.unlink()


def remove_path(p: Path) -> None:
    """Remove a file, a link (the link itself, never what it points to) or a folder tree we own."""
    p = Path(p)
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)


def drop_if_only_marker(out: Path) -> None:
    """Undo a folder we created whose command was refused: remove it when it holds only the marker and empty
    folders (anything else in it stays)."""
    out = Path(out)
    if not out.is_dir() or out.is_symlink():
        return
    for p in sorted(out.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if p.is_dir() and not p.is_symlink():
            try:
                p.rmdir()
            except OSError:
                return
        elif p != out / MARKER:
            return
    (out / MARKER).unlink(missing_ok=True)
    try:
        out.rmdir()
    except OSError:
        pass


def mark(out: Path) -> None:
    """Create the folder and its marker (idempotent)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch(exist_ok=True)


def check_not_locked(out: Path) -> None:
    """Refuse (one-line RunFolderError naming the pid) a folder whose lock another process holds, so the loser of
    two concurrent runs is told so, not that the folder is taken."""
    import fcntl

    out = Path(out)
    marker = out / MARKER
    if str(out.absolute()) in _held or not marker.is_file() or marker.is_symlink():
        return
    try:
        fd = os.open(marker, os.O_RDONLY)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                owner = os.read(fd, 64).decode(errors="replace").strip() or "?"
                raise RunFolderError(f"{out}: another synthsae process (pid {owner}) is writing this run; "
                                     "wait for it to finish or stop it first") from None
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on out/MARKER (creating the folder and marker); refuse if another process holds it."""
    import fcntl

    out = Path(out)
    key = str(out.absolute())
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    mark(out)
    fd = os.open(out / MARKER, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        owner = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise RunFolderError(f"{out}: another synthsae process (pid {owner}) is writing this run; "
                                 "wait for it to finish or stop it first") from None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            del _held[key]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def check_target(out: Path, *, resume: bool, force: bool, finished: bool, what: str = "run",
                 ours: bool = False) -> None:
    """The one folder-safety check of every command that writes a run folder, before any work: a path that is a file,
    a folder another process is writing, or a non-empty folder synthsae did not write (unless the caller knows it is
    `ours`) is refused; a `finished` run is replaced only with force, an unfinished one continued only with resume.
    One-line RunFolderError / FileExistsError naming the flag to pass."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out = {str(out)!r}: is a file, not a run folder")
    check_not_locked(out)  # a run in progress elsewhere: say so, rather than "pass --force"
    if force:
        check_overwritable(out)
        return
    if not out.exists() or not any(out.iterdir()):
        return
    if not (ours or is_run_folder(out)):
        names = sorted(p.name for p in out.iterdir())
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise RunFolderError(f"{out}: not a synthsae run (no {MARKER}; holds {shown}); a {what} writes only into a new, "
                             "empty or synthsae run folder: pick another --out")
    if finished and not resume:
        raise FileExistsError(f"{out}: holds a finished {what}; pass --force to overwrite it")
    if not resume:
        raise FileExistsError(f"{out}: is not empty (an unfinished {what}?); pass --resume to finish it or --force to "
                              "start over")
