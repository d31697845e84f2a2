"""Collect residual-stream activations after block L into safetensors shards; read them back memory-mapped.

Folder layout (`acts/` of a real run, or any folder):
- `meta.json`: model, its fingerprint, layer, d_model, window length, whether each window starts with BOS (and its
  id), corpus and what was read of it, the outlier rule, counts;
- `contexts.safetensors`: `tokens [n_contexts, ctx_len]` int32 (the windows, train first, eval last);
- `shards/shard_<k>.safetensors`: `acts [n, d]`, `token_ids [n]`, `context_ids [n]`, `positions [n]` for the
  kept tokens of a contiguous range of windows (in the file's metadata).
Each window starts with the tokenizer's BOS when it defines one and `prepend_bos` is on (SAELens's prepend_bos: the
model sees inputs shaped like its training data); position 0 (BOS or not) is never kept.
Kept tokens: position > 0 and norm <= `outlier_factor` x the median norm (measured on the first batch and
then fixed). Each shard is written atomically, so a killed collection resumes after its last shard.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from synthsae.config import ConfigError
from synthsae.fileio import atomic_save_safetensors, atomic_write_json
from synthsae.io import RunFileError

META = "meta.json"
CONTEXTS = "contexts.safetensors"
SHARDS = "shards"
FORMAT = "synthsae-activations-1"


@dataclass
class CollectConfig:
    """What to collect: model, block, window length, how many tokens (train + eval), corpus and outlier rule."""

    model: str = "smollm2"
    layer: int = 15
    ctx_len: int = 128
    train_tokens: int = 300_000
    eval_tokens: int = 16_384
    batch_contexts: int = 8
    shard_tokens: int = 65_536
    corpus: list[str] = field(default_factory=list)  # empty = the default Debian corpus
    corpus_seed: int = 0
    outlier_factor: float = 10.0
    dtype: str = "float32"  # storage dtype of the activations (float32 or float16)
    prepend_bos: bool = True  # each window starts with the tokenizer's BOS token when it defines one

    def n_contexts(self) -> tuple[int, int]:
        per = self.ctx_len - 1  # position 0 is never kept
        return math.ceil(self.train_tokens / per), math.ceil(self.eval_tokens / per)


def validate_collect(c: CollectConfig) -> None:
    for name, lo in (("layer", 0), ("ctx_len", 2), ("train_tokens", 1), ("eval_tokens", 1), ("batch_contexts", 1),
                     ("shard_tokens", 1)):
        v = getattr(c, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ConfigError(f"collect.{name} = {v!r}: must be an integer >= {lo}")
    if not (isinstance(c.outlier_factor, (int, float)) and c.outlier_factor > 1):
        raise ConfigError(f"collect.outlier_factor = {c.outlier_factor!r}: must be a number > 1")
    if c.dtype not in ("float32", "float16"):
        raise ConfigError(f"collect.dtype = {c.dtype!r}: must be float32 or float16")
    if not isinstance(c.prepend_bos, bool):
        raise ConfigError(f"collect.prepend_bos = {c.prepend_bos!r}: must be true or false")
    if not isinstance(c.corpus, list) or not all(isinstance(p, str) and p for p in c.corpus):
        raise ConfigError(f"collect.corpus = {c.corpus!r}: must be a list of file or folder paths")


def collect_disk_bytes(c: CollectConfig, d_model: int, done_contexts: int = 0) -> int:
    """Bytes a collection still writes (on the high side: every token after position 0 kept): per token d_model
    activations in the storage dtype plus three int32 ids, the windows file, 4 kB of header and metadata per file.
    An atomic write renames its temporary file, so a shard never occupies twice its size."""
    n_train, n_eval = c.n_contexts()
    left = max(0, n_train + n_eval - done_contexts)
    per_token = d_model * (2 if c.dtype == "float16" else 4) + 12
    tokens = left * (c.ctx_len - 1)
    windows = 0 if done_contexts else 4 * (n_train + n_eval) * c.ctx_len
    n_files = tokens // c.shard_tokens + 3  # shards, the windows, meta.json
    return tokens * per_token + windows + 4096 * n_files


def check_collect_disk(c: CollectConfig, d_model: int, out: str | Path, done_contexts: int = 0) -> None:
    """Refuse (one line: the estimate and the free disk) a collection that would not fit where it writes."""
    from synthsae.memory import check_disk

    n_train, n_eval = c.n_contexts()
    check_disk(collect_disk_bytes(c, d_model, done_contexts),
               f"collecting {n_train + n_eval - done_contexts:,} windows x {c.ctx_len - 1} tokens x d_model {d_model} "
               f"({c.dtype})", "free disk, pass another --out, lower collect.train_tokens or store float16", out)


def bos_id(c: CollectConfig, tokenizer) -> int | None:
    """The BOS token id each window starts with: the tokenizer's, when it defines one and prepend_bos is on."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return int(bos) if c.prepend_bos and bos is not None else None


def check_ctx_len(c: CollectConfig, lm) -> None:
    """A window may not be longer than the positions the model was built for."""
    cfg = lm.model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if isinstance(limit, int) and c.ctx_len > limit:
        raise ConfigError(f"collect.ctx_len = {c.ctx_len}: longer than the {limit} positions {lm.name} takes; "
                          f"pick at most {limit}")


def _identity(c: CollectConfig, lm, contexts_hash: str, corpus_desc: str, bos: int | None) -> dict:
    """What a cache must match to be reused: model weights, layer, BOS setting, windows (hence corpus and seed)."""
    return {"format": FORMAT, "model": c.model, "model_fingerprint": lm.fingerprint, "layer": c.layer,
            "d_model": lm.d_model, "n_layers": lm.n_layers, "ctx_len": c.ctx_len, "prepend_bos": bos is not None,
            "bos_token_id": bos, "contexts_hash": contexts_hash, "corpus": corpus_desc, "dtype": c.dtype,
            "outlier_factor": c.outlier_factor}


def _hash_tokens(t: Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]


def _mismatch(saved: dict, want: dict) -> str | None:
    for k in ("format", "model_fingerprint", "layer", "ctx_len", "prepend_bos", "contexts_hash", "dtype", "outlier_factor"):
        have = saved.get(k, False) if k == "prepend_bos" else saved.get(k)  # folders from before BOS: none prepended
        if have != want.get(k):
            return f"{k}: cached {have!r}, requested {want.get(k)!r}"
    return None


def windows(c: CollectConfig, tokenizer, log=None) -> tuple[Tensor, str, int | None, dict | None]:
    """The token windows of a collection (train first, eval last), the corpus description, the BOS id they start with
    and, for user files, what was read (also said in one line through `log`). A corpus smaller than the tokens asked
    for is refused here, before any activation is computed, in one line with both numbers."""
    from real.corpus import CorpusLog, CorpusTooSmall, default_documents, pack_stream, shuffled, stream_pieces

    n_train, n_eval = c.n_contexts()
    bos = bos_id(c, tokenizer)
    if c.corpus:
        read = CorpusLog()
        pieces = stream_pieces(c.corpus, c.corpus_seed, read)
        desc = ("files: " if all(Path(p).is_file() for p in c.corpus) else "files and folders: ") + ", ".join(c.corpus)
        what = f"--corpus {' '.join(c.corpus)}"
    else:
        read = None
        docs, desc = default_documents()
        pieces, what = shuffled(docs, c.corpus_seed), "the default Debian text"
    try:
        tokens = pack_stream(pieces, tokenizer, n_train + n_eval, c.ctx_len, bos, what=what)
    except CorpusTooSmall as exc:
        body = c.ctx_len - (bos is not None)
        fit = (exc.tokens // body - n_eval) * (c.ctx_len - 1)
        hint = f"--tokens {fit} or less" if fit > 0 else "a smaller collect.eval_tokens"
        raise ConfigError(f"corpus: {what} holds {exc.tokens:,} tokens, {(n_train + n_eval) * body:,} are needed for "
                          f"{c.train_tokens:,} training + {c.eval_tokens:,} eval tokens; give more text "
                          f"(--corpus FILE or DIR) or {hint}") from None
    finally:
        if read is not None and log is not None:
            log(read.line())
    info = None
    if read is not None:
        info = {"line": read.line(), "files_listed": read.files_listed, "files_read": read.files_read,
                "bytes_read": read.bytes_read, "binary": read.binary, "invalid_utf8": read.invalid_utf8,
                "ignored": read.ignored}
    return tokens, desc, bos, info


def collect(c: CollectConfig, out: str | Path, *, lm=None, progress: bool = True, stop_after_shards: int | None = None,
            force: bool = False, log=None) -> "ActivationStore":
    """Collect (or finish collecting) activations into `out`; an existing complete cache is returned as is.

    A folder holding activations of another model, layer, corpus or window length is refused (one line), and only
    replaced with force. stop_after_shards=N stops after writing N shards in this call (as if killed; tests use it).
    """
    from real.model import check_layer, hidden_after, load_model

    validate_collect(c)
    out = Path(out)
    lm = lm or load_model(c.model)
    check_layer(lm, c.layer)
    check_ctx_len(c, lm)
    n_train, n_eval = c.n_contexts()
    if log is None and progress:
        def log(m: str) -> None:
            print(m, file=sys.stderr)
    tokens, corpus_desc, bos, read = windows(c, lm.tokenizer, log)
    ident = _identity(c, lm, _hash_tokens(tokens), corpus_desc, bos)
    meta_path = out / META
    meta: dict
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            raise RunFileError(f"{meta_path}: not valid JSON; move the folder away or pass another --out") from None
        bad = _mismatch(meta, ident)
        if bad and force:
            from synthsae.rundir import remove_path

            remove_path(out)  # a link is removed itself, never what it points to
            return collect(c, out, lm=lm, progress=progress, stop_after_shards=stop_after_shards, log=lambda m: None)
        if bad:
            raise ConfigError(f"{out}: holds activations of another collection ({bad}); pass another --out or --force")
        if meta.get("complete"):
            return ActivationStore(out)
    else:
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"{out}: is not empty and holds no {META}; pass another --out")
        check_collect_disk(c, lm.d_model, out)  # before anything is written
        meta = {**ident, "n_train_contexts": n_train, "n_eval_contexts": n_eval, "complete": False,
                "config": asdict(c), "counts": {}, "corpus_read": read}
        atomic_save_safetensors({"tokens": tokens}, out / CONTEXTS)
        atomic_write_json(meta_path, meta)

    store = ActivationStore(out, require_complete=False)
    done_ctx = store.shards[-1].ctx_end if store.shards else 0
    if done_ctx:  # a resumed collection: what is left must fit
        check_collect_disk(c, lm.d_model, out, done_ctx)
    counts = dict(meta.get("counts") or {})
    for k in ("kept", "position0", "padding", "outliers"):
        counts.setdefault(k, 0)
    threshold = meta.get("outlier_norm_threshold")
    meta["collect_seconds_before"] = float(meta.get("collect_seconds", 0.0))
    dtype = torch.float16 if c.dtype == "float16" else torch.float32
    n_ctx = n_train + n_eval
    from synthsae.progress import progress_bar as tqdm

    bar = tqdm(total=n_ctx * c.ctx_len, initial=done_ctx * c.ctx_len, unit="tok", unit_scale=True, file=sys.stderr,
               desc=f"collect layer {c.layer}", disable=not progress, dynamic_ncols=True, mininterval=2.0)
    buf: list[dict] = []
    buf_rows, buf_start, written = 0, done_ctx, 0
    t0 = time.perf_counter()
    try:
        for a in range(done_ctx, n_ctx, c.batch_contexts):
            b = min(a + c.batch_contexts, n_ctx)
            ids = tokens[a:b].long()
            h = hidden_after(lm, ids, c.layer).cpu()  # [B, T, d]
            norms = h.norm(dim=-1)
            if threshold is None:
                threshold = float(c.outlier_factor * norms[:, 1:].median())
                meta["outlier_norm_threshold"] = threshold
                meta["outlier_rule"] = f"norm > {c.outlier_factor:g} x median norm of the first batch (positions > 0)"
            keep = torch.ones_like(norms, dtype=torch.bool)
            keep[:, 0] = False
            outl = (norms > threshold) & keep
            keep &= ~outl
            counts["position0"] += b - a
            counts["outliers"] += int(outl.sum())
            counts["kept"] += int(keep.sum())
            ci, pi = torch.nonzero(keep, as_tuple=True)
            buf.append({"acts": h[ci, pi].to(dtype), "token_ids": ids[ci, pi].int(), "context_ids": (ci + a).int(),
                        "positions": pi.int()})
            buf_rows += ci.numel()
            bar.update((b - a) * c.ctx_len)
            if progress:
                bar.set_postfix_str(f"{counts['kept'] / max(time.perf_counter() - t0, 1e-9):.0f} kept tok/s", refresh=False)
            if buf_rows >= c.shard_tokens or b == n_ctx:
                _write_shard(out, len(store.shards), buf, buf_start, b)
                store.shards.append(ShardInfo(out / SHARDS / _shard_name(len(store.shards)), buf_start, b, buf_rows))
                meta["counts"] = counts
                meta["complete"] = b == n_ctx
                meta["collect_seconds"] = float(meta.get("collect_seconds_before", 0.0)) + time.perf_counter() - t0
                meta["model_tokens_per_second"] = (b - done_ctx) * c.ctx_len / max(time.perf_counter() - t0, 1e-9)
                atomic_write_json(meta_path, meta)  # after the shard: meta never counts a shard that is not there
                buf, buf_rows, buf_start = [], 0, b
                written += 1
                if stop_after_shards is not None and written >= stop_after_shards and b < n_ctx:
                    break
    finally:
        bar.close()
    return ActivationStore(out, require_complete=False)


def _shard_name(k: int) -> str:
    return f"shard_{k:05d}.safetensors"


def _write_shard(out: Path, k: int, buf: list[dict], ctx_start: int, ctx_end: int) -> None:
    tensors = {key: torch.cat([b[key] for b in buf]) for key in buf[0]}
    atomic_save_safetensors(tensors, out / SHARDS / _shard_name(k),
                            metadata={"ctx_start": str(ctx_start), "ctx_end": str(ctx_end)})


# ----------------------------------------------------------------------------------------------- reading


@dataclass
class ShardInfo:
    path: Path
    ctx_start: int
    ctx_end: int
    rows: int


_NP = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64}


def read_header(path: Path) -> tuple[dict, int]:
    """The safetensors JSON header of `path` and the byte offset where its data starts; one-line error if damaged."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                raise ValueError("header length beyond the end of the file")
            header = json.loads(f.read(n))
        for name, t in header.items():
            if name == "__metadata__":
                continue
            if t["dtype"] not in _NP:
                raise ValueError(f"tensor {name!r} has dtype {t['dtype']}")
            lo, hi = t["data_offsets"]
            if 8 + n + hi > size or hi - lo != int(np.prod(t["shape"])) * np.dtype(_NP[t["dtype"]]).itemsize:
                raise ValueError(f"tensor {name!r} runs past the end of the file (truncated?)")
        return header, 8 + n
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise RunFileError(f"{path}: corrupt activation shard ({exc}); delete it and run collect again to redo it") from None


def mmap_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only numpy memmap (nothing is read until indexed)."""
    header, start = read_header(path)
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        lo, _ = t["data_offsets"]
        out[name] = np.memmap(path, dtype=_NP[t["dtype"]], mode="r", offset=start + lo, shape=tuple(t["shape"]))
    return out


class ActivationStore:
    """A collected folder: metadata, windows, and memory-mapped shards split into train / eval by window id."""

    def __init__(self, folder: str | Path, require_complete: bool = True):
        self.folder = Path(folder)
        mp = self.folder / META
        if not mp.is_file():
            raise RunFileError(f"{mp}: missing (not an activation folder; run `synthsae real collect` first)")
        try:
            self.meta = json.loads(mp.read_text())
        except json.JSONDecodeError:
            raise RunFileError(f"{mp}: not valid JSON") from None
        if require_complete and not self.meta.get("complete"):
            raise RunFileError(f"{self.folder}: collection did not finish; run the same collect command again to resume it")
        self.shards: list[ShardInfo] = []
        for p in sorted((self.folder / SHARDS).glob("shard_*.safetensors")):
            header, _ = read_header(p)
            md = header.get("__metadata__") or {}
            try:
                a, b = int(md["ctx_start"]), int(md["ctx_end"])
                rows = int(header["acts"]["shape"][0])
                if header["acts"]["shape"][1] != self.meta["d_model"]:
                    raise ValueError("width differs from meta.json")
            except (KeyError, ValueError, IndexError) as exc:
                raise RunFileError(f"{p}: corrupt activation shard ({exc}); delete it and run collect again") from None
            if self.shards and a != self.shards[-1].ctx_end:
                raise RunFileError(f"{p}: starts at window {a}, previous shard ended at {self.shards[-1].ctx_end}")
            self.shards.append(ShardInfo(p, a, b, rows))
        self._maps: dict[Path, dict[str, np.ndarray]] = {}

    @property
    def d(self) -> int:
        return int(self.meta["d_model"])

    @property
    def n_train_contexts(self) -> int:
        return int(self.meta["n_train_contexts"])

    def tokens(self) -> Tensor:
        from safetensors.torch import load_file

        try:
            return load_file(str(self.folder / CONTEXTS))["tokens"]
        except Exception as exc:  # noqa: BLE001
            raise RunFileError(f"{self.folder / CONTEXTS}: unreadable ({str(exc).splitlines()[0] if str(exc) else exc})") from None

    def maps(self, shard: ShardInfo) -> dict[str, np.ndarray]:
        if shard.path not in self._maps:
            self._maps[shard.path] = mmap_tensors(shard.path)
        return self._maps[shard.path]

    def split_ranges(self, split: str) -> list[tuple[ShardInfo, int, int]]:
        """(shard, row_lo, row_hi) pieces holding the kept tokens of the train or eval windows."""
        cut = self.n_train_contexts
        out = []
        for s in self.shards:
            if split == "train" and s.ctx_start >= cut or split == "eval" and s.ctx_end <= cut:
                continue
            ctx = self.maps(s)["context_ids"]
            k = int(np.searchsorted(ctx, cut))
            lo, hi = (0, k) if split == "train" else (k, s.rows)
            if hi > lo:
                out.append((s, lo, hi))
        return out

    def n_rows(self, split: str) -> int:
        return sum(hi - lo for _, lo, hi in self.split_ranges(split))

    def load(self, split: str, key: str = "acts", limit: int | None = None) -> Tensor:
        """All rows of one field of a split (up to `limit`), as a float32 / int tensor in memory."""
        parts, n = [], 0
        for s, lo, hi in self.split_ranges(split):
            if limit is not None:
                hi = min(hi, lo + limit - n)
            parts.append(np.asarray(self.maps(s)[key][lo:hi]))
            n += hi - lo
            if limit is not None and n >= limit:
                break
        arr = np.concatenate(parts) if parts else np.zeros((0,))
        t = torch.from_numpy(arr.copy())
        return t.float() if key == "acts" else t.long()

    def batches(self, batch_size: int, seed: int, passes: int | None = None, scale: float = 1.0, start: int = 0):
        """Shuffled training batches [B, d] (scaled by `scale`): a fresh permutation of all train rows per pass.

        `start` skips that many batches without reading them (a resumed run continues the same stream).
        """
        ranges = self.split_ranges("train")
        sizes = np.array([hi - lo for _, lo, hi in ranges])
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        n = int(offsets[-1])
        if n < batch_size:
            raise ConfigError(f"train.batch_size = {batch_size}: larger than the {n} collected training tokens")
        gen = np.random.default_rng(seed)
        p = 0
        while passes is None or p < passes:
            perm = gen.permutation(n)
            for i in range(0, n - batch_size + 1, batch_size):
                if start > 0:
                    start -= 1
                    continue
                idx = np.sort(perm[i : i + batch_size])
                which = np.searchsorted(offsets, idx, side="right") - 1
                rows = []
                for r in np.unique(which):
                    s, lo, _ = ranges[r]
                    rows.append(self.maps(s)["acts"][lo + idx[which == r] - offsets[r]])
                x = torch.from_numpy(np.concatenate(rows).astype(np.float32, copy=False))
                yield x * scale if scale != 1.0 else x
            p += 1


def activation_scale(store: ActivationStore, n: int = 16384) -> float:
    """SAELens's expected_average_only_in factor: sqrt(d) / mean norm, so scaled activations have mean norm sqrt(d)."""
    x = store.load("train", limit=n)
    return float(math.sqrt(store.d) / x.norm(dim=-1).mean().clamp_min(1e-12))
