"""Text for the real side: the user's .txt / .jsonl files or folders of them (streamed), or Debian text on this machine.

Documents are cut into pieces of at most ~`MAX_DOC_CHARS` at paragraph breaks (linear time, also for a file
without blank lines), shuffled with a seed and packed into fixed-length token windows (no padding ever): each
window is BOS (when the tokenizer defines one and prepend_bos is on) followed by the next tokens of one stream in
which documents are separated by EOS. User files are read in 1 MB chunks, their order shuffled and their pieces
passed through a shuffle buffer, and reading stops once the windows are full: a corpus of any size is never held in
memory. The small default corpus is shuffled as a whole. Files with NUL bytes are binary: refused (or read only up
to the first NUL); bytes that are not UTF-8 are replaced and counted; one line (`CorpusLog.line`) says what was read.
"""

from __future__ import annotations

import codecs
import json
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from synthsae.config import ConfigError

FORTUNES = Path("/usr/share/games/fortunes")
PYDOC = Path("/usr/share/doc/python3.11/html/_sources")
DEBIAN_PACKAGES = "fortunes bible-kjv python3.11-doc"
MAX_DOC_CHARS = 2000
CHUNK_BYTES = 1 << 20  # files are read this many bytes at a time
SHUFFLE_BUFFER = 4096  # pieces held for shuffling a streamed corpus (~8 MB of text)
TOKENIZE_BATCH = 64  # pieces per tokenizer call
SUFFIXES = (".txt", ".jsonl")  # what a --corpus folder contributes


# ----------------------------------------------------------------------------------------------- splitting


class Splitter:
    """Cuts a text fed in chunks into pieces of at most ~limit characters at paragraph breaks ("\n\n"), in time
    linear in its length; a run of more than 2 x limit characters without a break is cut every `limit` characters.

    The pieces are those of joining paragraphs while they fit under `limit` (the rule of the whole-text split this
    replaced, which was quadratic on a file without blank lines). `work` counts the characters copied or scanned."""

    def __init__(self, limit: int = MAX_DOC_CHARS):
        self.limit, self.cur, self.tail, self.work = limit, "", "", 0

    def _emit(self, out: list[str], s: str) -> None:
        if s.strip():
            out.append(s)

    def _cut(self, s: str, keep: int, out: list[str]) -> str:
        """Emit `limit`-long pieces from the start of s while more than 2 x limit of its first `keep` characters remain."""
        i = 0
        while keep - i > 2 * self.limit:
            self._emit(out, s[i : i + self.limit])
            i += self.limit
        self.work += len(s)
        return s[i:]

    def _para(self, para: str, out: list[str]) -> None:
        if self.cur and len(self.cur) + len(para) > self.limit:
            self._emit(out, self.cur)
            self.cur = ""
        self.cur = f"{self.cur}\n\n{para}" if self.cur else para
        self.work += len(self.cur)
        if len(self.cur) > 2 * self.limit:
            self.cur = self._cut(self.cur, len(self.cur), out)

    def feed(self, text: str) -> list[str]:
        out: list[str] = []
        buf = self.tail + text
        self.work += len(buf)
        start, search = 0, max(len(self.tail) - 1, 0)
        while (j := buf.find("\n\n", search)) >= 0:
            self._para(buf[start:j], out)
            start = search = j + 2
        tail = buf[start:]
        known = len(tail) - tail.endswith("\n")  # a final "\n" may start the next paragraph break
        if known > 2 * self.limit:  # an unfinished paragraph this long is cut now, as it will be when it ends
            if self.cur:
                self._emit(out, self.cur)
                self.cur = ""
            tail = self._cut(tail, known, out)
        self.tail = tail
        return out

    def close(self) -> list[str]:
        out: list[str] = []
        self._para(self.tail, out)
        self.tail = ""
        self._emit(out, self.cur)
        self.cur = ""
        return out


def split_pieces(chunks: Iterable[str], limit: int = MAX_DOC_CHARS) -> Iterator[str]:
    """The pieces of a text given as consecutive chunks (see Splitter)."""
    sp = Splitter(limit)
    for c in chunks:
        yield from sp.feed(c)
    yield from sp.close()


def _pieces(text: str, limit: int = MAX_DOC_CHARS) -> list[str]:
    """Split a long text at paragraph breaks into pieces of at most ~limit characters."""
    return list(split_pieces([text], limit))


# ----------------------------------------------------------------------------------------------- reading files


_BAD: dict = {}  # the counts of the file being decoded (set before each decode call)


def _count_bad(exc: UnicodeDecodeError) -> tuple[str, int]:
    """Decoding error handler: replace the bad bytes by U+FFFD and count them in _BAD."""
    _BAD["n"] = _BAD.get("n", 0) + exc.end - exc.start
    if _BAD.get("first") is None:
        _BAD["first"] = _BAD.get("base", 0) + exc.start
    return "\ufffd", exc.end


codecs.register_error("synthsae-count", _count_bad)


@dataclass
class CorpusLog:
    """What was read from the user's corpus: files opened, bytes, binary files refused, bytes not valid UTF-8."""

    files_listed: int = 0
    files_read: int = 0
    bytes_read: int = 0
    ignored: int = 0  # files of other types inside a --corpus folder
    binary: list[tuple[str, int]] = field(default_factory=list)  # (path, offset of the first NUL byte)
    invalid_utf8: list[tuple[str, int, int]] = field(default_factory=list)  # (path, bytes replaced, first offset)

    def line(self) -> str:
        s = (f"corpus: read {self.files_read} of {self.files_listed} files ({self.bytes_read / 1e6:.1f} MB; reading "
             "stops once the windows are full)")
        if self.ignored:
            s += f"; ignored {self.ignored} files in the folders that are not {' / '.join(SUFFIXES)}"
        if self.binary:
            parts = [f"{p} (refused)" if off == 0 else f"{p} (read up to byte {off})" for p, off in self.binary[:3]]
            s += f"; binary (NUL bytes): {', '.join(parts)}" + (f" and {len(self.binary) - 3} more" if len(self.binary) > 3 else "")
        if self.invalid_utf8:
            parts = [f"{p} ({n} bytes from byte {off})" for p, n, off in self.invalid_utf8[:3]]
            s += (f"; not UTF-8, replaced by U+FFFD: {', '.join(parts)}"
                  + (f" and {len(self.invalid_utf8) - 3} more" if len(self.invalid_utf8) > 3 else ""))
        return s


def _decoded_chunks(path: Path, log: CorpusLog, lines: bool = False) -> Iterator[str]:
    """The text of a file, chunk by chunk (or line by line), as UTF-8 with bad bytes replaced and counted; stops at
    the first NUL byte (a binary file), which is recorded in `log`."""
    global _BAD
    dec = codecs.getincrementaldecoder("utf-8")("synthsae-count")
    bad: dict = {"n": 0, "first": None, "base": 0}
    offset = 0
    log.files_read += 1
    try:
        with open(path, "rb") as f:
            blocks = iter(f) if lines else iter(lambda: f.read(CHUNK_BYTES), b"")
            for raw in blocks:
                z = raw.find(b"\0")
                if z >= 0:
                    log.binary.append((str(path), offset + z))
                    raw = raw[:z]
                bad["base"] = offset
                _BAD = bad
                text = dec.decode(raw, final=z >= 0)
                _note_bad(log, path, bad)
                offset += len(raw)
                log.bytes_read += len(raw)
                yield text
                if z >= 0:
                    return
            _BAD = bad
            text = dec.decode(b"", final=True)
            _note_bad(log, path, bad)
            yield text
    except OSError as exc:
        raise ConfigError(f"corpus: {path}: cannot read it ({exc.strerror or exc})") from None


def _note_bad(log: CorpusLog, path: Path, bad: dict) -> None:
    """Record (or update) the file's count of bytes that were not UTF-8 in the log, as soon as they are seen."""
    if not bad["n"]:
        return
    entry = (str(path), int(bad["n"]), int(bad["first"] or 0))
    if log.invalid_utf8 and log.invalid_utf8[-1][0] == entry[0]:
        log.invalid_utf8[-1] = entry
    else:
        log.invalid_utf8.append(entry)


def _file_pieces(path: Path, log: CorpusLog) -> Iterator[str]:
    """Pieces of one .txt file (split at blank lines) or .jsonl file (its "text" fields, each split)."""
    if path.suffix != ".jsonl":
        yield from split_pieces(_decoded_chunks(path, log))
        return
    for i, line in enumerate(_decoded_chunks(path, log, lines=True)):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, ValueError):  # ValueError: an integer with too many digits
            raise ConfigError(f"corpus: {path} line {i + 1}: not valid JSON (a .jsonl file needs one object per line)") from None
        text = rec.get("text") if isinstance(rec, dict) else None
        if not isinstance(text, str):
            raise ConfigError(f"corpus: {path} line {i + 1}: no string field 'text'")
        yield from split_pieces([text])


def list_files(paths: list[str | Path], log: CorpusLog) -> list[Path]:
    """The files of --corpus: files as given, folders searched recursively for .txt / .jsonl (sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file())
            keep = [f for f in found if f.suffix in SUFFIXES]
            log.ignored += len(found) - len(keep)
            if not keep:
                raise ConfigError(f"corpus: {p}: a folder with no {' / '.join(SUFFIXES)} files")
            files += keep
        elif p.is_file():
            files.append(p)
        else:
            raise ConfigError(f"corpus: {p}: no such file or folder")
    log.files_listed = len(files)
    return files


def stream_pieces(paths: list[str | Path], seed: int, log: CorpusLog, buffer: int = SHUFFLE_BUFFER) -> Iterator[str]:
    """Pieces of the files (order shuffled with `seed`) through a shuffle buffer of `buffer` pieces: memory is bounded
    by the buffer and one chunk, whatever the corpus size."""
    files = list_files(paths, log)
    rng = random.Random(seed)
    rng.shuffle(files)
    held: list[str] = []
    for f in files:
        for piece in _file_pieces(f, log):
            if len(held) < buffer:
                held.append(piece)
                continue
            i = rng.randrange(buffer)
            out, held[i] = held[i], piece
            yield out
    rng.shuffle(held)
    yield from held


# ----------------------------------------------------------------------------------------------- default corpus


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
    """Every piece of the given files in file order, in memory (small corpora and tests; collection streams)."""
    log = CorpusLog()
    docs = [p for f in list_files(paths, log) for p in _file_pieces(f, log)]
    if not docs:
        raise ConfigError(f"corpus: no text in {', '.join(map(str, paths))} (empty or binary files?)")
    return docs, "files: " + ", ".join(str(p) for p in paths)


def shuffled(docs: list[str], seed: int) -> Iterator[str]:
    """The documents in an order shuffled with `seed` (the whole list: for corpora held in memory)."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    return (docs[i] for i in order)


# ----------------------------------------------------------------------------------------------- windows


class CorpusTooSmall(ConfigError):
    """The corpus ran out before the windows were full; `tokens` is what it holds."""

    def __init__(self, msg: str, tokens: int):
        super().__init__(msg)
        self.tokens = tokens


def pack_stream(pieces: Iterable[str], tokenizer, n_contexts: int, ctx_len: int, bos: int | None = None,
                what: str = "corpus") -> Int[Tensor, "n T"]:
    """Tokenize the pieces in order (EOS after each) into one stream and cut `n_contexts` windows from it: BOS plus
    ctx_len - 1 stream tokens when `bos` is given, else ctx_len stream tokens. Stops reading once the windows are full;
    a corpus that runs out first raises CorpusTooSmall naming both token counts."""
    sep = tokenizer.eos_token_id
    body = ctx_len - (bos is not None)
    need = n_contexts * body
    flat = np.empty(need, dtype=np.int32)
    pos, total = 0, 0
    it = iter(pieces)
    while pos < need:
        batch = [p for _, p in zip(range(TOKENIZE_BATCH), it)]
        if not batch:
            break
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            if sep is not None:
                ids = [*ids, int(sep)]
            total += len(ids)
            take = min(len(ids), need - pos)
            flat[pos : pos + take] = ids[:take]
            pos += take
            if pos == need:
                break
    if pos < need:
        raise CorpusTooSmall(f"corpus: {what} holds {total:,} tokens, {need:,} are needed ({n_contexts:,} windows of "
                             f"{body} text tokens{' after BOS' if bos is not None else ''}); give more text "
                             "(--corpus FILE or DIR) or lower --tokens", total)
    win = torch.from_numpy(flat).view(n_contexts, body)
    if bos is not None:
        win = torch.cat([torch.full((n_contexts, 1), int(bos), dtype=torch.int32), win], dim=1)
    return win.contiguous()


def pack_contexts(docs: list[str], tokenizer, n_contexts: int, ctx_len: int, seed: int,
                  bos: int | None = None) -> Int[Tensor, "n T"]:
    """Shuffle the documents, tokenize them in that order (EOS between documents) and cut `n_contexts` windows of ctx_len."""
    return pack_stream(shuffled(docs, seed), tokenizer, n_contexts, ctx_len, bos)
