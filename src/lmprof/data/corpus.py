"""What every source returns: documents, the corpus of train/validation/test documents, the
`Source` interface, and the split by document hash used when a source names no validation split.

A source has a cheap `identity` (what the cache directory is named after), a `content_hash`
(read from the files, so an edited corpus rebuilds its cache) and `load`, which returns the
documents already split. Documents keep the source's order (sorted paths), so the token stream
is the same on every machine that has the same files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmprof.errors import UserError

# The smallest piece a long document is cut into for the split (see split_documents).
MIN_PIECE_CHARS = 1024


@dataclass(frozen=True)
class Document:
    key: str  # stable name used by the split: a relative path, "path:line", "split:index"
    text: str


@dataclass
class Corpus:
    train: Iterable[Document]  # a list, or an iterator when streaming
    val: list[Document]
    info: dict[str, Any]  # recorded in the cache manifest
    test: list[Document] | None = None
    # Streaming: stop writing training tokens once this many are written (0: the whole stream).
    train_token_limit: int = 0
    splits: dict[str, str] = field(default_factory=dict)  # where each split came from


class Source:
    kind = ""
    # True when validation is a named split (val_fraction then plays no part in the cache key).
    explicit_val = False

    def identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def label(self) -> str:
        """A short readable prefix for the cache directory name."""
        return self.kind

    def content_hash(self) -> str | None:
        """Hash of the content, or None when only the identity can be checked (the hub)."""
        raise NotImplementedError

    def load(self, val_fraction: float) -> Corpus:
        raise NotImplementedError


def chars(docs: Sequence[Document]) -> int:
    return sum(len(d.text) for d in docs)


def _unit_hash(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:8], "big")


def _cut(doc: Document, limit: int) -> list[Document]:
    """A document longer than `limit` characters, cut at line ends into numbered pieces."""
    text = doc.text
    if len(text) <= limit:
        return [doc]
    pieces, start, k = [], 0, 0
    while start < len(text):
        end = min(start + limit, len(text))
        if end < len(text):
            nl = text.rfind("\n", start, end)
            if nl > start:
                end = nl + 1
        pieces.append(Document(f"{doc.key}#{k}", text[start:end]))
        start, k = end, k + 1
    return pieces


def split_documents(
    docs: Sequence[Document], val_fraction: float
) -> tuple[list[Document], list[Document]]:
    """Split by document: documents taken in the order of a hash of their key go to validation
    until it holds val_fraction of the characters (a proxy for tokens, known before the
    tokenizer is trained). Documents longer than half that target are first cut at line ends,
    so one big file (or a corpus of a single file) still splits close to val_fraction.
    """
    total = chars(docs)
    target = val_fraction * total
    limit = max(int(target // 2), MIN_PIECE_CHARS)
    pieces = [p for d in docs for p in _cut(d, limit)]
    order = sorted(range(len(pieces)), key=lambda i: _unit_hash(pieces[i].key))
    in_val = [False] * len(pieces)
    taken = 0
    for i in order:
        if taken >= target and taken > 0:
            break
        in_val[i] = True
        taken += len(pieces[i].text)
    train = [p for p, v in zip(pieces, in_val, strict=True) if not v]
    val = [p for p, v in zip(pieces, in_val, strict=True) if v]
    if not train:
        raise UserError(
            f"the corpus ({total} characters) is too small to split into training and "
            f"validation with data.val_fraction={val_fraction}"
        )
    return train, val
