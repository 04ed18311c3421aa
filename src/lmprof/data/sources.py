"""Where text comes from (stdlib, text files, Hugging Face) and the train/validation split.

A source has a cheap `identity` (what the cache directory is named after), a `content_hash`
(read from the files, so an edited corpus rebuilds its cache) and `load`, which returns the
documents already split. Documents keep the source's order (sorted paths), so the token stream
is the same on every machine that has the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmprof.errors import UserError

TEXT_SUFFIXES = (".txt", ".md", ".jsonl")
STDLIB_SUFFIXES = (".py", ".txt", ".rst")
# Test suites (tens of MB of generated data and odd encodings), byte-compiled files, installed
# packages and build-specific files (paths and flags of the machine Python was built on).
STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}
# Tests may shrink the stdlib corpus to its first N files (sorted); 0 = all. Part of the identity.
STDLIB_MAX_FILES = 0
# The smallest piece a long document is cut into for the split (see split_documents).
MIN_PIECE_CHARS = 1024


@dataclass(frozen=True)
class Document:
    key: str  # stable name used by the split: a relative path, "path:line", "split:index"
    text: str


@dataclass
class Corpus:
    train: list[Document]
    val: list[Document]
    info: dict[str, Any]  # recorded in the cache manifest


class Source:
    kind = ""

    def identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def label(self) -> str:
        """A short readable prefix for the cache directory name."""
        return self.kind

    def content_hash(self) -> str | None:
        """Hash of the content, or None when only the identity can be checked (hf)."""
        raise NotImplementedError

    def load(self, val_fraction: float) -> Corpus:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# File sources


class FileSource(Source):
    """Documents are files (jsonl: one per line), read in sorted order."""

    def files(self) -> list[tuple[str, Path]]:
        """(key, path) pairs in a machine-independent order."""
        raise NotImplementedError

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for key, path in self.files():
            data = path.read_bytes()
            h.update(f"{key}\0{len(data)}\0".encode("utf-8", "surrogatepass"))
            h.update(data)
        return h.hexdigest()

    def documents(self) -> Iterator[Document]:
        for key, path in self.files():
            text = path.read_bytes().decode("utf-8", "replace")
            if path.suffix == ".jsonl":
                yield from _jsonl_documents(key, path, text)
            elif text.strip():
                yield Document(key, text)

    def load(self, val_fraction: float) -> Corpus:
        docs = list(self.documents())
        if not docs:
            raise UserError(f"data.source={self.kind}: {self.describe()} holds no text")
        train, val = split_documents(docs, val_fraction)
        info = {"documents": len(docs), "files": len(self.files()), "chars": _chars(docs)}
        return Corpus(train, val, info)

    def describe(self) -> str:
        return self.kind


def _jsonl_documents(key: str, path: Path, text: str) -> Iterator[Document]:
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{lineno} is not valid JSON") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise UserError(f'{path}:{lineno} has no string field "text"')
        if obj["text"].strip():
            yield Document(f"{key}:{lineno}", obj["text"])


def _chars(docs: Sequence[Document]) -> int:
    return sum(len(d.text) for d in docs)


class StdlibSource(FileSource):
    """The .py modules and the text documents that ship with this Python's standard library."""

    kind = "stdlib"

    def __init__(self, root: str | Path | None = None, max_files: int | None = None):
        self.root = Path(root or sysconfig.get_paths()["stdlib"])
        self.max_files = STDLIB_MAX_FILES if max_files is None else max_files
        self._files: list[tuple[str, Path]] | None = None

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {"kind": "stdlib", "python": _python_tag()}
        if self.max_files:
            ident["max_files"] = self.max_files
        return ident

    def label(self) -> str:
        return f"stdlib-{_python_tag()}"

    def describe(self) -> str:
        return f"the standard library at {self.root}"

    def files(self) -> list[tuple[str, Path]]:
        if self._files is None:
            if not self.root.is_dir():
                raise UserError(f"data.source=stdlib: the standard library {self.root} is missing")
            found = []
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = [d for d in dirnames if not _skip_stdlib_dir(d)]
                for name in filenames:
                    if name.endswith(STDLIB_SUFFIXES) and not name.startswith("_sysconfigdata"):
                        path = Path(dirpath, name)
                        found.append((path.relative_to(self.root).as_posix(), path))
            found.sort()  # os.walk's order is the file system's; sorting makes it portable
            if self.max_files:
                found = found[: self.max_files]
            self._files = found
        return self._files


def _skip_stdlib_dir(name: str) -> bool:
    return name in STDLIB_SKIP_DIRS or name.startswith((".", "config-"))


def _python_tag() -> str:
    impl = platform.python_implementation().lower()
    return f"{impl}{sys.version_info.major}.{sys.version_info.minor}"


class TextSource(FileSource):
    """data.path: comma-separated files or folders of .txt/.md/.jsonl."""

    kind = "text"

    def __init__(self, path: str):
        self.paths = [p.strip() for p in path.split(",") if p.strip()]
        if not self.paths:
            raise UserError("data.source=text needs data.path (comma-separated files or folders)")
        self.resolved = []
        for p in self.paths:
            rp = Path(p).expanduser()
            if not rp.exists():
                raise UserError(f"data.path '{p}' does not exist")
            self.resolved.append(rp.resolve())
        self._files: list[tuple[str, Path]] | None = None

    def identity(self) -> dict[str, Any]:
        return {"kind": "text", "paths": [str(p) for p in self.resolved]}

    def label(self) -> str:
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.resolved[0].stem)
        return f"text-{stem[:40]}"

    def describe(self) -> str:
        return f"data.path '{','.join(self.paths)}'"

    def files(self) -> list[tuple[str, Path]]:
        if self._files is None:
            found: list[tuple[str, Path]] = []
            for i, (given, root) in enumerate(zip(self.paths, self.resolved, strict=True)):
                if root.is_file():
                    found.append((f"{i}/{root.name}", root))
                    continue
                inside = sorted(
                    (p.relative_to(root).as_posix(), p)
                    for p in root.rglob("*")
                    if p.is_file()
                    and p.suffix.lower() in TEXT_SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(root).parts)
                )
                if not inside:
                    raise UserError(f"data.path '{given}' holds no .txt, .md or .jsonl files")
                found.extend((f"{i}/{rel}", p) for rel, p in inside)
            self._files = found
        return self._files


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets (optional dependency)


class HFSource(Source):
    """`datasets.load_dataset(name, config)`; documents are non-empty rows (wikitext: lines).

    Its identity is the dataset name and config: a built cache is reused without `datasets` or
    the hub, so a cache made on a connected machine works on an offline one.
    """

    kind = "hf"

    def __init__(self, name: str, config: str):
        self.name, self.config = name, config or None

    def identity(self) -> dict[str, Any]:
        return {"kind": "hf", "dataset": self.name, "config": self.config}

    def label(self) -> str:
        tag = f"{self.name}-{self.config}" if self.config else self.name
        return "hf-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in tag)[:60]

    def content_hash(self) -> str | None:
        return None

    def load(self, val_fraction: float) -> Corpus:
        try:
            import datasets
        except ImportError:
            raise UserError(
                "data.source=hf needs the 'datasets' package: pip install lmprof[hf]"
            ) from None
        try:
            ds = datasets.load_dataset(self.name, self.config)
        except Exception as exc:  # hub unreachable, unknown name, ... : one line for the user
            msg = str(exc).strip().splitlines()
            first = (msg[0] if msg else type(exc).__name__)[:200]
            raise UserError(
                f"could not load Hugging Face dataset '{self.name}' ({self.config}): {first} "
                "(offline or not on the hub?)"
            ) from None
        splits = list(ds.keys())
        if "train" not in splits:
            raise UserError(f"Hugging Face dataset '{self.name}' has no 'train' split ({splits})")
        train = self._documents(ds["train"], "train")
        val_split = next((s for s in ("validation", "valid", "val") if s in splits), None)
        if val_split is not None:
            val = self._documents(ds[val_split], val_split)
        else:
            train, val = split_documents(train, val_fraction)
        if not train or not val:
            raise UserError(f"Hugging Face dataset '{self.name}' has no text in train/validation")
        fingerprints = {s: getattr(ds[s], "_fingerprint", None) for s in splits}
        info = {
            "documents": len(train) + len(val),
            "validation_split": val_split or "from train",
            "fingerprints": fingerprints,
            "chars": _chars(train) + _chars(val),
        }
        return Corpus(train, val, info)

    def _documents(self, split: Any, name: str) -> list[Document]:
        cols = list(split.column_names)
        col = "text" if "text" in cols else None
        if col is None:
            raise UserError(f"Hugging Face dataset '{self.name}' has no 'text' column ({cols})")
        return [Document(f"{name}:{i}", t) for i, t in enumerate(split[col]) if t and t.strip()]


# ---------------------------------------------------------------------------------------------
# The split


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
    total = _chars(docs)
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


def make_source(data: Any) -> Source:
    """The source named by a DataConfig (not synthetic, which needs no source)."""
    if data.source == "stdlib":
        return StdlibSource()
    if data.source == "text":
        return TextSource(data.path)
    if data.source == "hf":
        return HFSource(data.hf_dataset, data.hf_config)
    raise UserError(f"data.source={data.source!r} has no text source")
