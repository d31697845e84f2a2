"""The corpus at scale: linear-time splitting, folders streamed, a line saying what was read (binary, NUL-only, Latin-1),
and a corpus smaller than the tokens asked for refused before collecting, naming both numbers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from real.corpus import CorpusLog, list_files, pack_stream, split_pieces, stream_pieces
from synthsae.config import ConfigError


def _whole_text_pieces(text: str, limit: int) -> list[str]:
    """The rule the streaming splitter must keep: join paragraphs while they fit, cut runs over 2 x limit every limit
    characters (the former whole-text implementation, quadratic on a text without blank lines)."""
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


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.sampled_from(["a", "bc", " ", "\n", "\n\n", "\n\n\n", "xyzxyzxyz", "é"]), max_size=60),
       cuts=st.lists(st.integers(0, 400), max_size=8), limit=st.integers(2, 12))
def test_streamed_split_equals_the_whole_text_rule(parts, cuts, limit):
    text = "".join(parts)
    cuts = sorted({min(c, len(text)) for c in cuts})
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert list(split_pieces(chunks, limit)) == _whole_text_pieces(text, limit)


def _quadratic_work(text: str, limit: int) -> int:
    """Characters the former whole-text split copied: each cut re-copied the rest of the text."""
    work, cur = 0, ""
    for para in text.split("\n\n"):
        cur = f"{cur}\n\n{para}" if cur else para
        work += len(cur)
        while len(cur) > 2 * limit:
            cur = cur[limit:]
            work += len(cur)
    return work


def _splitter_work(path: Path) -> int:
    import real.corpus as C

    sp = C.Splitter()
    n = 0
    for chunk in C._decoded_chunks(path, CorpusLog()):
        n += len(sp.feed(chunk))
    n += len(sp.close())
    assert n > 0
    return sp.work


def test_a_file_without_blank_lines_splits_in_linear_time(tmp_path):
    """The characters the splitter copies or scans grow like the file (4x the size: 4x the work), where the former
    split's grew like its square (16x); and 4x the size takes well under 16x the time (min of 5 timings)."""
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    line = "word " * 1000 + "\n"  # single newlines only: no paragraph break anywhere
    small.write_text(line * 800)  # 4 MB (smaller files fit in the CPU caches and time unlike the larger)
    big.write_text(line * 3200)  # 16 MB
    ratio = _splitter_work(big) / _splitter_work(small)
    assert 3.9 < ratio < 4.1, ratio
    text = line * 100
    assert _quadratic_work(text * 4, 2000) / _quadratic_work(text, 2000) > 14  # the measure sees a quadratic split

    def best(path: Path) -> float:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            _splitter_work(path)
            times.append(time.perf_counter() - t0)
        return min(times)

    assert best(big) / best(small) < 12  # a quadratic split: ~16
    pieces = list(split_pieces([line * 10]))
    assert max(map(len, pieces)) <= 4000 and "".join(pieces) == (line * 10)[: sum(map(len, pieces))]


def _folder(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("alpha text here.\n\nmore alpha text.")
    (d / "sub" / "b.jsonl").write_text(json.dumps({"text": "beta document."}) + "\n\n" + json.dumps({"text": "beta two."}) + "\n")
    (d / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e.".encode("latin-1"))
    (d / "nul.txt").write_bytes(b"\0" * 64)
    (d / "half.txt").write_bytes(b"text before the nul." + b"\0\1\2" + b"after")
    (d / "image.png").write_bytes(b"\x89PNG\r\n")
    return d


def test_a_folder_is_read_and_one_line_says_what_was_read_or_refused(tmp_path):
    log = CorpusLog()
    pieces = sorted(stream_pieces([_folder(tmp_path)], 0, log))
    assert pieces == sorted(["alpha text here.\n\nmore alpha text.", "beta document.", "beta two.",
                             "caf\ufffd cr\ufffdme br\ufffdl\ufffde.", "text before the nul."])
    line = log.line()
    assert "\n" not in line and line.startswith("corpus: read 5 of 5 files")
    assert "ignored 1 files" in line  # image.png
    assert f"{tmp_path / 'corpus' / 'nul.txt'} (refused)" in line
    assert f"{tmp_path / 'corpus' / 'half.txt'} (read up to byte 20)" in line
    assert f"{tmp_path / 'corpus' / 'latin1.txt'} (4 bytes from byte 3)" in line
    # a clean UTF-8 file says nothing of the sort
    clean = CorpusLog()
    list(stream_pieces([tmp_path / "corpus" / "a.txt"], 0, clean))
    assert "binary" not in clean.line() and "UTF-8" not in clean.line()


def test_bad_paths_and_json_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file or folder"):
        list_files([tmp_path / "missing"], CorpusLog())
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.bin").write_bytes(b"1")
    with pytest.raises(ConfigError, match="a folder with no .txt / .jsonl files"):
        list_files([tmp_path / "empty"], CorpusLog())
    bad = tmp_path / "big_int.jsonl"
    bad.write_text('{"text": "ok"}\n{"n": ' + "9" * 5000 + "}\n")
    with pytest.raises(ConfigError, match="line 2: not valid JSON"):
        list(stream_pieces([bad], 0, CorpusLog()))


class _CharTokenizer:
    """One token per character (ids = code points), EOS 0: a tokenizer with no BOS for the packing tests."""

    eos_token_id = 0
    bos_token_id = None

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def test_windows_start_with_bos_and_cut_one_stream():
    tok = _CharTokenizer()
    docs = ["abcdef", "ghij", "klmnopqrst"]
    plain = pack_stream(iter(docs), tok, 3, 5)
    stream = [c for d in docs for c in [*map(ord, d), 0]]
    assert plain.flatten().tolist() == stream[:15]
    bos = pack_stream(iter(docs), tok, 3, 5, bos=7)
    assert bos[:, 0].tolist() == [7, 7, 7] and bos[:, 1:].flatten().tolist() == stream[:12]


def test_the_stream_stops_reading_once_the_windows_are_full(tmp_path):
    """A corpus larger than needed is never read whole: an endless source gives its windows, and of a folder of 200
    files only those read ahead are opened."""
    import itertools

    tok = _CharTokenizer()
    endless = (f"document {i} " * 5 for i in itertools.count())
    assert pack_stream(endless, tok, 4, 50).shape == (4, 50)
    d = tmp_path / "many"
    d.mkdir()
    for i in range(200):
        (d / f"{i:03d}.txt").write_text("\n\n".join(f"file {i} paragraph {j} " * 20 for j in range(30)))
    log = CorpusLog()
    pack_stream(stream_pieces([d], 0, log, buffer=16), tok, 4, 100)
    # what is read ahead: the shuffle buffer (16 pieces) and one tokenizer batch (64 pieces), ~6 pieces a file
    assert log.files_listed == 200 and 1 <= log.files_read <= 20, log.line()


def test_a_corpus_smaller_than_asked_is_refused_before_collecting_with_both_numbers(tmp_path):
    """collect() refuses in one line naming what the corpus holds and what was asked, before it writes anything."""
    pytest.importorskip("transformers")
    from real_helpers import build_tiny

    from real.activations import CollectConfig, collect
    from real.model import load_model

    folder = build_tiny("qwen2", tmp_path / "m")
    lm = load_model(str(folder))
    small = tmp_path / "small.txt"
    text = "the cat sat on the mat . " * 40
    small.write_text(text)
    held = len(lm.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # and the EOS after it
    cfg = CollectConfig(model=str(folder), layer=1, ctx_len=16, train_tokens=3000, eval_tokens=150, corpus=[str(small)])
    with pytest.raises(ConfigError) as exc:
        collect(cfg, tmp_path / "acts", lm=lm, progress=False)
    msg = str(exc.value)
    assert "\n" not in msg and f"holds {held:,} tokens" in msg and "3,000 training + 150 eval tokens" in msg, msg
    assert "--corpus FILE or DIR" in msg and "--tokens" in msg
    assert not (tmp_path / "acts").exists()
    # with fewer tokens asked, the hint's number fits
    fit = int(msg.split("--tokens ")[1].split(" ")[0])
    ok = collect(CollectConfig(**{**cfg.__dict__, "train_tokens": fit}), tmp_path / "acts", lm=lm, progress=False)
    assert ok.meta["complete"]


def test_chunked_reading_keeps_multibyte_characters_and_paragraphs_whole(tmp_path, monkeypatch):
    """Files are read in byte chunks: a character or a paragraph break cut by a chunk boundary is still read whole."""
    import real.corpus as C

    text = "\n\n".join(f"caf\u00e9 \u4e2d\u6587 \U0001f600 paragraph {i} " * (i % 7 + 1) for i in range(60))
    f = tmp_path / "utf8.txt"
    f.write_text(text, encoding="utf-8")
    monkeypatch.setattr(C, "CHUNK_BYTES", 7)
    log = CorpusLog()
    got = list(C._file_pieces(f, log))
    assert got == _whole_text_pieces(text, C.MAX_DOC_CHARS)
    assert log.invalid_utf8 == [] and log.binary == [] and log.bytes_read == len(text.encode())
