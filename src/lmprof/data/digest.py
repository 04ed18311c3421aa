"""Content digests of files: the one rule for "has this file changed?".

Used for a corpus's content hash (an edited corpus rebuilds its cache), for local Hugging Face
datasets and data files, for tokenizer files (part of the cache key) and for the token cache's
own checksums (ids overwritten after the build are caught on load). Files up to FULL_BYTES are
hashed whole; a larger one is hashed from SAMPLES evenly spaced blocks plus its size, so a
check of a multi-GB file stays well under a second (a sampled digest misses an edit between
blocks: the cache adds an id-range check for those files).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

FULL_BYTES = 256 << 20
SAMPLES = 64
BLOCK = 1 << 20


def is_sampled(size: int) -> bool:
    return size > FULL_BYTES


def file_digest(path: str | Path) -> str:
    """blake2b of the file (whole, or sampled blocks when larger than FULL_BYTES)."""
    h = hashlib.blake2b(digest_size=16)
    size = os.path.getsize(path)
    h.update(size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        if not is_sampled(size):
            for block in iter(lambda: f.read(BLOCK), b""):
                h.update(block)
        else:
            step = (size - BLOCK) // (SAMPLES - 1)
            for i in range(SAMPLES):
                f.seek(i * step)
                h.update(f.read(BLOCK))
    return h.hexdigest()


def files_digest(files: Iterable[tuple[str, Path]]) -> str:
    """One digest of (stable key, path) pairs: names and contents, in the order given."""
    h = hashlib.sha256()
    for key, path in files:
        h.update(f"{key}\0{file_digest(path)}\0".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def tree_files(root: Path) -> list[tuple[str, Path]]:
    """Every file under `root` (hidden ones left out), keyed by relative path, sorted."""
    if root.is_file():
        return [(root.name, root)]
    return sorted(
        (p.relative_to(root).as_posix(), p)
        for p in root.rglob("*")
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts)
    )
