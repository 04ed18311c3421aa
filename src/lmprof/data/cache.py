"""The token cache: each (source, tokenizer, split) tokenized once into flat memmapped arrays.

Layout of `<cache_dir>/<source>-<tokenizer>-<key digest>/`:

    manifest.json     what was built from what (written last: a directory without it is junk)
    train.bin         flat token stream: doc EOS doc EOS ... (uint16 when the vocabulary fits)
    val.bin
    train_docs.npy    int64 offsets: document i is [d[i], d[i+1]) of the stream, its EOS included
    val_docs.npy
    tokenizer.json / chars.json   the trained tokenizer (bpe / char)

The directory name is keyed on the source's identity, the tokenizer's settings and
val_fraction, never on sequence length, so a sequence-length sweep reuses one cache. The
manifest's content hash catches an edited corpus, which rebuilds in place. A build writes into a
temporary directory and renames it into place, all under a lock, so concurrent builders neither
corrupt each other nor build twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmprof.data.sources import Document, Source
from lmprof.data.tokenizers import Tokenizer, fixed_tokenizer, load_tokenizer, train_tokenizer
from lmprof.io import atomic_write_text, file_lock

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHUNK_CHARS = 4 << 20  # text per encode_batch call: bounds the tokenizer's transient memory


@dataclass
class TokenCache:
    path: Path
    manifest: dict[str, Any]
    tokenizer: Tokenizer
    train: np.ndarray  # read-only memmaps
    val: np.ndarray
    train_docs: np.ndarray  # int64 document offsets into `train`, n_documents + 1 of them
    val_docs: np.ndarray
    built: bool


def cache_key(source: Source, spec: dict[str, Any], val_fraction: float) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "source": source.identity(),
        "tokenizer": spec,
        "val_fraction": val_fraction,
    }


def cache_path(
    cache_dir: str | Path, source: Source, spec: dict[str, Any], val_fraction: float
) -> Path:
    key = cache_key(source, spec, val_fraction)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    tok = spec["name"] + (str(spec["vocab_size"]) if "vocab_size" in spec else "")
    return Path(cache_dir) / f"{source.label()}-{tok}-{digest}"


def open_cache(
    source: Source,
    spec: dict[str, Any],
    val_fraction: float,
    cache_dir: str | Path,
    log: Callable[[str], Any] = print,
) -> TokenCache:
    """The cache for this source and tokenizer, built first if missing or stale."""
    fixed = fixed_tokenizer(spec)  # gpt2 unavailable: fail before reading the corpus
    key = cache_key(source, spec, val_fraction)
    path = cache_path(cache_dir, source, spec, val_fraction)
    content_hash = source.content_hash()  # outside the lock: reading files needs no exclusion
    t0 = time.perf_counter()
    with file_lock(path):
        manifest, why = _check(path, key, content_hash)
        built = manifest is None
        if manifest is None:
            manifest = _build(path, source, spec, fixed, key, content_hash)
        # Opened under the lock: a rebuild by another process after this point replaces the
        # directory, and these open mappings keep the files they were opened on.
        cache = _open(path, manifest, spec, fixed, built)
    secs = time.perf_counter() - t0
    m = manifest
    what = (
        f"{m['train']['tokens']:,} train + {m['val']['tokens']:,} val tokens, "
        f"{m['train']['documents'] + m['val']['documents']:,} documents, "
        f"tokenizer {cache.tokenizer.name} ({cache.tokenizer.vocab_size} ids), {m['dtype']}"
    )
    if built:
        log(f"data: built token cache {path} in {secs:.1f}s ({why}): {what}")
    else:
        log(f"data: reused token cache {path}: {what}")
    return cache


def _check(
    path: Path, key: dict[str, Any], content_hash: str | None
) -> tuple[dict[str, Any] | None, str]:
    """(manifest, "") when the cache at `path` is complete and current, else (None, why not)."""
    mfile = path / MANIFEST
    if not mfile.is_file():
        return None, "new" if not path.exists() else "incomplete"
    try:
        m = json.loads(mfile.read_text())
    except (OSError, ValueError):
        return None, "unreadable manifest"
    if m.get("format_version") != FORMAT_VERSION:
        return None, "data format changed"
    if m.get("key") != json.loads(json.dumps(key)):
        return None, "different source or tokenizer"
    if content_hash is not None and m.get("content_hash") != content_hash:
        return None, "source changed"
    try:
        itemsize = np.dtype(m["dtype"]).itemsize
        for split in ("train", "val"):
            s = m[split]
            if (path / s["file"]).stat().st_size != s["tokens"] * itemsize:
                return None, f"{split} tokens truncated"
            if not (path / s["documents_file"]).is_file():
                return None, "incomplete"
        for name in m["tokenizer"]["files"]:
            if not (path / name).is_file():
                return None, "tokenizer missing"
    except (OSError, KeyError, TypeError):
        return None, "incomplete"
    return m, ""


def _build(
    path: Path,
    source: Source,
    spec: dict[str, Any],
    fixed: Tokenizer | None,
    key: dict[str, Any],
    content_hash: str | None,
) -> dict[str, Any]:
    root = path.parent
    root.mkdir(parents=True, exist_ok=True)
    for junk in root.glob(f".{path.name}.*"):  # ours, left by a killed build (we hold the lock)
        shutil.rmtree(junk, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=root))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        t0 = time.perf_counter()
        corpus = source.load(key["val_fraction"])
        tok = fixed or train_tokenizer(spec, [d.text for d in corpus.train])
        tok.save(tmp)
        dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
        splits = {}
        for split, docs in (("train", corpus.train), ("val", corpus.val)):
            n_tokens, offsets = _write_tokens(tmp / f"{split}.bin", docs, tok, dtype)
            np.save(tmp / f"{split}_docs.npy", offsets)
            splits[split] = {
                "file": f"{split}.bin",
                "tokens": n_tokens,
                "documents": len(docs),
                "documents_file": f"{split}_docs.npy",
            }
        manifest = {
            "format_version": FORMAT_VERSION,
            "key": key,
            "content_hash": content_hash,
            "source": {**source.identity(), **corpus.info},
            "tokenizer": {
                **spec,
                "vocab_size": tok.vocab_size,
                "pad_id": tok.pad_id,
                "eos_id": tok.eos_id,
                "files": list(tok.files),
            },
            "dtype": dtype.name,
            **splits,
            "build_seconds": round(time.perf_counter() - t0, 3),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
        }
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        _publish(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _publish(tmp: Path, path: Path) -> None:
    """Rename the finished directory into place; a stale one is moved aside, then deleted."""
    if path.exists():
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, path)


def _chunks(docs: Sequence[Document]) -> Iterator[Sequence[Document]]:
    start, chars = 0, 0
    for i, d in enumerate(docs):
        chars += len(d.text)
        if chars >= CHUNK_CHARS:
            yield docs[start : i + 1]
            start, chars = i + 1, 0
    if start < len(docs):
        yield docs[start:]


def _write_tokens(
    file: Path, docs: Sequence[Document], tok: Tokenizer, dtype: np.dtype
) -> tuple[int, np.ndarray]:
    """Tokenize into `file` as doc EOS doc EOS ...; returns (tokens, document offsets)."""
    eos = np.array([tok.eos_id], dtype=dtype)
    lengths = np.empty(len(docs), dtype=np.int64)
    i = n = 0
    with open(file, "wb") as f:
        for chunk in _chunks(docs):
            parts = []
            for ids in tok.encode_batch([d.text for d in chunk]):
                parts += [ids.astype(dtype, copy=False), eos]
                lengths[i] = len(ids) + 1
                i += 1
            buf = np.concatenate(parts)
            buf.tofile(f)
            n += len(buf)
        f.flush()
        os.fsync(f.fileno())
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return n, offsets


def _memmap(file: Path, dtype: np.dtype, n: int) -> np.ndarray:
    if n == 0:  # np.memmap refuses empty files
        return np.zeros(0, dtype=dtype)
    return np.memmap(file, dtype=dtype, mode="r", shape=(n,))


def _open(
    path: Path, m: dict[str, Any], spec: dict[str, Any], fixed: Tokenizer | None, built: bool
) -> TokenCache:
    dtype = np.dtype(m["dtype"])
    tok = fixed or load_tokenizer(spec, path)
    return TokenCache(
        path=path,
        manifest=m,
        tokenizer=tok,
        train=_memmap(path / m["train"]["file"], dtype, m["train"]["tokens"]),
        val=_memmap(path / m["val"]["file"], dtype, m["val"]["tokens"]),
        train_docs=np.load(path / m["train"]["documents_file"]),
        val_docs=np.load(path / m["val"]["documents_file"]),
        built=built,
    )
