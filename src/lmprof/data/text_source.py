"""Text files as a corpus (`data.source=text`): data.path, data.val_path and data.test_path, or
one folder of train/valid/test files; strict decoding (a file that is not text in the expected
encoding is refused, not read as U+FFFD). Documents: a file, a JSONL line, or (data.documents)
a WikiText article. `FileSource` is the base of every source read from files (`stdlib` too)."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lmprof.data.corpus import Corpus, Document, Source, chars, split_documents
from lmprof.data.digest import files_digest, tree_files
from lmprof.data.wikitext import WIKITEXT_FILE, is_wikitext_mode, wikitext_articles
from lmprof.errors import UserError
from lmprof.paths import user_path

TEXT_SUFFIXES = (".txt", ".md", ".jsonl")
# What a split file of a corpus folder may end with: WikiText's wiki.train.tokens / .raw too.
SPLIT_SUFFIXES = (*TEXT_SUFFIXES, ".tokens", ".raw")
SPLIT_WORDS = {
    "train": ("train",),
    "val": ("valid", "validation", "val", "dev"),
    "test": ("test",),
}


# ---------------------------------------------------------------------------------------------
# Decoding: a file that is not text in the expected encoding is refused, not read as U+FFFD.


def check_encoding(encoding: str) -> str:
    """The codec's name, or one line for an unknown data.encoding."""
    if not encoding:
        return ""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise UserError(
            f"data.encoding={encoding!r} is not a known text encoding (utf-8, latin-1, cp1252, ...)"
        ) from None


def read_text(path: Path, encoding: str = "") -> str:
    """The file's text: UTF-8 unless data.encoding names another; a binary or mis-encoded file
    is a one-line error naming the file and the byte offset."""
    data = path.read_bytes()
    if not encoding:
        nul = data.find(b"\0")
        if nul >= 0:  # no text file holds NUL; UTF-16 text does, and needs data.encoding
            raise UserError(
                f"{path} looks binary (a NUL byte at byte offset {nul}): remove it from the "
                "corpus, or set data.encoding if it is text (e.g. utf-16)"
            )
        try:
            return data.decode("utf-8-sig")  # a BOM is not text
        except UnicodeDecodeError as exc:
            raise UserError(
                f"{path} is not UTF-8 text (byte offset {exc.start}: "
                f"{data[exc.start : exc.start + 4]!r}): set data.encoding (e.g. latin-1, cp1252) "
                "if it is text in another encoding"
            ) from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} is not {encoding} text (byte offset {exc.start}): fix data.encoding"
        ) from None


# ---------------------------------------------------------------------------------------------
# File sources


class FileSource(Source):
    """Documents are files (jsonl: one per line; WikiText: one per article), in sorted order."""

    encoding = ""
    documents_mode = "file"

    def files(self) -> list[tuple[str, Path]]:
        """(key, path) pairs in a machine-independent order, every split's."""
        raise NotImplementedError

    def content_hash(self) -> str:
        return files_digest(self.files())

    def documents(self, files: Sequence[tuple[str, Path]] | None = None) -> Iterator[Document]:
        for key, path in self.files() if files is None else files:
            text = read_text(path, self.encoding)
            if path.suffix == ".jsonl":
                yield from _jsonl_documents(key, path, text)
            elif is_wikitext_mode(self.documents_mode, bool(WIKITEXT_FILE.match(path.name))):
                yield from wikitext_articles(key, text.splitlines(keepends=True))
            elif text.strip():
                yield Document(key, text)

    def load(self, val_fraction: float) -> Corpus:
        docs = list(self.documents())
        if not docs:
            raise UserError(f"data.source={self.kind}: {self.describe()} holds no text")
        train, val = split_documents(docs, val_fraction)
        info = {"documents": len(docs), "files": len(self.files()), "chars": chars(docs)}
        return Corpus(train, val, info, splits={"val": f"val_fraction={val_fraction}"})

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


def _split_of(name: str) -> str | None:
    """'train', 'val' or 'test' for a corpus folder's split file (train.txt, wiki.valid.tokens,
    validation.jsonl, ...), else None."""
    if not name.lower().endswith(SPLIT_SUFFIXES):
        return None
    parts = set(name.lower().split(".")[:-1])
    found = [split for split, words in SPLIT_WORDS.items() if parts & set(words)]
    return found[0] if len(found) == 1 else None


class TextSource(FileSource):
    """data.path (training), data.val_path and data.test_path: comma-separated files or folders
    of .txt/.md/.jsonl. A single folder of train/valid/test files (train.txt, wiki.train.tokens,
    ...) gives the splits by itself. Without a named validation split, validation is
    data.val_fraction of the training documents."""

    kind = "text"

    def __init__(
        self,
        path: str,
        val_path: str = "",
        test_path: str = "",
        encoding: str = "",
        documents: str = "auto",
    ):
        self.encoding = check_encoding(encoding)
        self.documents_mode = documents
        is_wikitext_mode(documents, False)  # an unknown mode fails before any reading
        given = {
            "train": comma_list(path),
            "val": comma_list(val_path),
            "test": comma_list(test_path),
        }
        if not given["train"]:
            raise UserError("data.source=text needs data.path (comma-separated files or folders)")
        self.resolved = {s: [_resolve(p, s) for p in ps] for s, ps in given.items()}
        self.given = given
        # A folder holding train/valid/test files: those are the splits (val_path and test_path,
        # when given, replace the folder's), and its other files are not training text.
        self.folder_splits: dict[str, list[Path]] = {}
        roots = self.resolved["train"]
        if len(roots) == 1 and roots[0].is_dir():
            found: dict[str, list[Path]] = {}
            for p in sorted(roots[0].iterdir()):
                split = _split_of(p.name) if p.is_file() else None
                if split:
                    found.setdefault(split, []).append(p)
            if "train" in found:
                self.folder_splits = {
                    k: v for k, v in found.items() if k == "train" or not given[k]
                }
        self.explicit_val = bool(given["val"] or "val" in self.folder_splits)
        self._files: dict[str, list[tuple[str, Path]]] | None = None

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {"kind": "text", "paths": [str(p) for p in self.resolved["train"]]}
        for split in ("val", "test"):
            if self.resolved[split]:
                ident[f"{split}_paths"] = [str(p) for p in self.resolved[split]]
        if self.folder_splits:
            ident["folder_splits"] = sorted(self.folder_splits)
        if self.encoding:
            ident["encoding"] = self.encoding
        if self.documents_mode != "auto":
            ident["documents"] = self.documents_mode
        return ident

    def label(self) -> str:
        first = self.resolved["train"][0]
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in first.stem)
        return f"text-{stem[:40]}"

    def describe(self, split: str = "train") -> str:
        key = {"train": "data.path", "val": "data.val_path", "test": "data.test_path"}[split]
        return f"{key} '{','.join(self.given[split])}'"

    def split_files(self) -> dict[str, list[tuple[str, Path]]]:
        """Each split's (key, path) pairs; the keys say the split, so the hash does too."""
        if self._files is None:
            out: dict[str, list[tuple[str, Path]]] = {}
            if self.folder_splits:
                for split, paths in self.folder_splits.items():
                    out[split] = [(f"{split}/{p.name}", p) for p in paths]
            else:
                out["train"] = _list_files(self.given["train"], self.resolved["train"], "train")
            for split in ("val", "test"):
                if self.resolved[split]:
                    out[split] = _list_files(self.given[split], self.resolved[split], split)
            self._files = out
        return self._files

    def files(self) -> list[tuple[str, Path]]:
        return [f for split in ("train", "val", "test") for f in self.split_files().get(split, [])]

    def load(self, val_fraction: float) -> Corpus:
        files = self.split_files()
        docs = {s: list(self.documents(fs)) for s, fs in files.items()}
        for split, d in docs.items():
            if not d:
                raise UserError(f"data.source=text: {self._where(split)} holds no text")
        splits = {s: self._where(s) for s in docs}
        if "val" in docs:
            train, val = docs["train"], docs["val"]
        else:
            train, val = split_documents(docs["train"], val_fraction)
            splits["val"] = f"val_fraction={val_fraction} of the training documents"
        every = [d for ds in docs.values() for d in ds]
        info = {"documents": len(every), "files": len(self.files()), "chars": chars(every)}
        return Corpus(train, val, info, test=docs.get("test"), splits=splits)

    def _where(self, split: str) -> str:
        if self.folder_splits and split in self.folder_splits:
            return ", ".join(str(p) for p in self.folder_splits[split])
        return self.describe(split)


def comma_list(spec: str) -> list[str]:
    return [p.strip() for p in spec.split(",") if p.strip()]


def _resolve(given: str, split: str) -> Path:
    key = {"train": "data.path", "val": "data.val_path", "test": "data.test_path"}[split]
    p = user_path(given, key)
    if not p.exists():
        raise UserError(f"{key} '{given}' does not exist")
    return p.resolve()


def _list_files(given: list[str], roots: list[Path], split: str) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    prefix = "" if split == "train" else f"{split}:"  # train keys as before: caches stay valid
    for i, (name, root) in enumerate(zip(given, roots, strict=True)):
        if root.is_file():
            found.append((f"{prefix}{i}/{root.name}", root))
            continue
        if root.exists() and not root.is_dir():
            # A FIFO, a device or a socket would block or fail mid-read, after the work began.
            key = {"train": "data.path", "val": "data.val_path", "test": "data.test_path"}[split]
            raise UserError(f"{key} '{name}' is not a regular file or a folder")
        inside = [(rel, p) for rel, p in tree_files(root) if p.suffix.lower() in TEXT_SUFFIXES]
        if not inside:
            key = {"train": "data.path", "val": "data.val_path", "test": "data.test_path"}[split]
            raise UserError(f"{key} '{name}' holds no .txt, .md or .jsonl files")
        found.extend((f"{prefix}{i}/{rel}", p) for rel, p in inside)
    return found
