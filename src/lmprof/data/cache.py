"""The token cache: each (source, tokenizer, split) tokenized once into flat memmapped arrays.

Layout of `<cache_dir>/<source>-<tokenizer>-<key digest>/`:

    manifest.json     what was built from what (written last: a directory without it is junk)
    train.bin         flat token stream: doc EOS doc EOS ... (uint16 when the vocabulary fits)
    val.bin
    test.bin          when the source has a test split
    train_docs.npy    int64 offsets: document i is [d[i], d[i+1]) of the stream, its EOS included
    val_docs.npy (test_docs.npy)
    tokenizer.json / chars.json   the trained tokenizer (bpe / char), or a copy of a file one

The directory name is keyed on the source's identity, the tokenizer's settings and
val_fraction (unless validation is a named split), never on sequence length, so a
sequence-length sweep reuses one cache. The manifest's content hash catches an edited corpus,
which rebuilds in place. Each split's checksums (bytes, dtype, id range, a digest of the tokens
and of the offsets) are checked on every open, so a token file overwritten after the build
rebuilds instead of training on whatever it now holds. A build writes into a temporary
directory and renames it into place, all under a lock, so concurrent builders neither corrupt
each other nor build twice. Opening a built cache never loads the tokenizer (LazyTokenizer).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmprof.data.digest import file_digest, is_sampled
from lmprof.data.sources import Document, Source
from lmprof.data.tokenizers import (
    LazyTokenizer,
    Tokenizer,
    fixed_tokenizer,
    load_tokenizer,
    train_tokenizer,
)
from lmprof.errors import UserError
from lmprof.io import atomic_write_text, file_lock, replace_dir

# 2: checksums per split, an optional test split, val_fraction out of the key for named splits.
FORMAT_VERSION = 2
SPLITS = ("train", "val", "test")
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
    test: np.ndarray | None = None
    test_docs: np.ndarray | None = None


def cache_key(source: Source, spec: dict[str, Any], val_fraction: float) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "source": source.identity(),
        "tokenizer": spec,
        # A named validation split does not depend on val_fraction: one cache for any value.
        "val_fraction": None if source.explicit_val else val_fraction,
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
    tokenizer_path: str = "",
) -> TokenCache:
    """The cache for this source and tokenizer, built first if missing or stale."""
    key = cache_key(source, spec, val_fraction)
    path = cache_path(cache_dir, source, spec, val_fraction)
    content_hash = source.content_hash()  # outside the lock: reading files needs no exclusion
    t0 = time.perf_counter()
    with file_lock(path):
        manifest, why = _check(path, key, content_hash)
        built = manifest is None
        if manifest is None:
            # Only a build needs the tokenizer: gpt2 unavailable fails before reading the corpus.
            fixed = fixed_tokenizer(spec, tokenizer_path)
            manifest = _build(path, source, spec, fixed, key, content_hash)
        # Opened under the lock: a rebuild by another process after this point replaces the
        # directory, and these open mappings keep the files they were opened on.
        cache = _open(path, manifest, spec, built, tokenizer_path)
    secs = time.perf_counter() - t0
    m = manifest
    test = f" + {m['test']['tokens']:,} test" if "test" in m else ""
    what = (
        f"{m['train']['tokens']:,} train + {m['val']['tokens']:,} val{test} tokens, "
        f"{sum(m[s]['documents'] for s in SPLITS if s in m):,} documents, "
        f"tokenizer {cache.tokenizer.name} ({cache.tokenizer.vocab_size} ids), {m['dtype']}"
    )
    if built:
        log(f"data: built token cache {path} in {secs:.1f}s ({why}): {what}")
    else:
        log(f"data: reused token cache {path}: {what}")
    return cache


def _checksums(path: Path, split: dict[str, Any], dtype: np.dtype) -> dict[str, Any]:
    """What a split's files must still be: their size, digests, and the id range (read whole
    only where the digest is sampled, see lmprof.data.digest)."""
    file, docs = path / split["file"], path / split["documents_file"]
    size = file.stat().st_size
    out: dict[str, Any] = {
        "bytes": size,
        "digest": file_digest(file),
        "docs_digest": file_digest(docs),
    }
    tokens = _memmap(file, dtype, size // dtype.itemsize)
    out["min_id"] = int(tokens.min()) if len(tokens) else None
    out["max_id"] = int(tokens.max()) if len(tokens) else None
    return out


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
        dtype = np.dtype(m["dtype"])
        for split in (s for s in SPLITS if s in m):
            s = m[split]
            if (path / s["file"]).stat().st_size != s["tokens"] * dtype.itemsize:
                return None, f"{split} tokens truncated"
            if not (path / s["documents_file"]).is_file():
                return None, "incomplete"
            why = _disagrees(path, s, dtype, m["tokenizer"]["vocab_size"])
            if why:
                return None, f"{split} {why}"
        for name in m["tokenizer"]["files"]:
            if not (path / name).is_file():
                return None, "tokenizer missing"
    except (OSError, KeyError, TypeError, ValueError):
        return None, "incomplete"
    return m, ""


def _disagrees(path: Path, s: dict[str, Any], dtype: np.dtype, vocab_size: int) -> str:
    """Why a split's files no longer match the checksums in the manifest ("" when they do)."""
    want = s["checksums"]
    file = path / s["file"]
    if file_digest(file) != want["digest"]:
        return "tokens changed since the build (checksum)"
    if file_digest(path / s["documents_file"]) != want["docs_digest"]:
        return "document offsets changed since the build (checksum)"
    if is_sampled(want["bytes"]) and s["tokens"]:  # the digest saw only some blocks
        tokens = _memmap(file, dtype, s["tokens"])
        lo, hi = int(tokens.min()), int(tokens.max())
        if (lo, hi) != (want["min_id"], want["max_id"]) or hi >= vocab_size:
            return "token ids out of their range (checksum)"
    return ""


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
        corpus = source.load(key["val_fraction"] if key["val_fraction"] is not None else 0.0)
        if fixed is None and not isinstance(corpus.train, list):
            raise UserError("a streamed corpus cannot train a tokenizer: use byte, gpt2 or file")
        tok = fixed or train_tokenizer(spec, [d.text for d in corpus.train])  # type: ignore[union-attr]
        tok.save(tmp)
        dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
        splits = {}
        parts: list[tuple[str, Iterable[Document], int]] = [
            ("train", corpus.train, corpus.train_token_limit),
            ("val", corpus.val, 0),
        ]
        if corpus.test is not None:
            parts.append(("test", corpus.test, 0))
        for split, docs, limit in parts:
            n_tokens, offsets = _write_tokens(tmp / f"{split}.bin", docs, tok, dtype, limit)
            np.save(tmp / f"{split}_docs.npy", offsets)
            splits[split] = {
                "file": f"{split}.bin",
                "tokens": n_tokens,
                "documents": len(offsets) - 1,
                "documents_file": f"{split}_docs.npy",
                "from": corpus.splits.get(split, ""),
            }
            splits[split]["checksums"] = _checksums(tmp, splits[split], dtype)
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
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _chunks(docs: Iterable[Document]) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    chars = 0
    for d in docs:
        chunk.append(d)
        chars += len(d.text)
        if chars >= CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _write_tokens(
    file: Path, docs: Iterable[Document], tok: Tokenizer, dtype: np.dtype, limit: int = 0
) -> tuple[int, np.ndarray]:
    """Tokenize into `file` as doc EOS doc EOS ...; returns (tokens, document offsets).
    limit > 0 stops after the document that reaches `limit` tokens (a stream is read no
    further)."""
    eos = np.array([tok.eos_id], dtype=dtype)
    lengths: list[int] = []
    n = 0
    # Streamed, not through lmprof.io: `file` lies in the build's own fresh temporary folder,
    # which is renamed into place whole once the manifest is written.
    with open(file, "wb") as f:
        for chunk in _chunks(docs):
            parts = []
            for ids in tok.encode_batch([d.text for d in chunk]):
                parts += [ids.astype(dtype, copy=False), eos]
                lengths.append(len(ids) + 1)
                n += len(ids) + 1
                if limit and n >= limit:
                    break
            np.concatenate(parts).tofile(f)
            if limit and n >= limit:
                break
        f.flush()
        os.fsync(f.fileno())
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=offsets[1:])
    return n, offsets


def _memmap(file: Path, dtype: np.dtype, n: int) -> np.ndarray:
    if n == 0:  # np.memmap refuses empty files
        return np.zeros(0, dtype=dtype)
    return np.memmap(file, dtype=dtype, mode="r", shape=(n,))


def _open(
    path: Path, m: dict[str, Any], spec: dict[str, Any], built: bool, tokenizer_path: str = ""
) -> TokenCache:
    dtype = np.dtype(m["dtype"])
    t = m["tokenizer"]
    tok = LazyTokenizer(
        spec["name"],
        t["vocab_size"],
        t["pad_id"],
        t["eos_id"],
        lambda: load_tokenizer(spec, path, tokenizer_path),
    )

    def stream(split: str) -> np.ndarray:
        return _memmap(path / m[split]["file"], dtype, m[split]["tokens"])

    has_test = "test" in m
    return TokenCache(
        path=path,
        manifest=m,
        tokenizer=tok,
        train=stream("train"),
        val=stream("val"),
        train_docs=np.load(path / m["train"]["documents_file"]),
        val_docs=np.load(path / m["val"]["documents_file"]),
        built=built,
        test=stream("test") if has_test else None,
        test_docs=np.load(path / m["test"]["documents_file"]) if has_test else None,
    )
