"""Where text comes from (stdlib, text files, Hugging Face) and the train/validation/test split.

A source has a cheap `identity` (what the cache directory is named after), a `content_hash`
(read from the files, so an edited corpus rebuilds its cache) and `load`, which returns the
documents already split. Documents keep the source's order (sorted paths), so the token stream
is the same on every machine that has the same files.

Splits: named ones when the source has them (data.val_path / data.test_path, a folder of
train/valid/test files, a Hugging Face dataset's splits), otherwise validation is
data.val_fraction of the training documents (see split_documents) and there is no test split.

Documents (data.documents): a file, a JSONL line or a dataset row, except for WikiText, whose
articles (the `= Title =` headings) are the documents, so an article is one EOS-ended run of
tokens and perplexity is per token over whole articles.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import os
import platform
import re
import socket
import sys
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lmprof.config import DOCUMENTS as DOCUMENT_MODES
from lmprof.data.digest import files_digest, tree_files
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
STDLIB_SUFFIXES = (".py", ".txt", ".rst")
# Test suites (tens of MB of generated data and odd encodings), byte-compiled files, installed
# packages and build-specific files (paths and flags of the machine Python was built on).
STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}
# Tests may shrink the stdlib corpus to its first N files (sorted); 0 = all. Part of the identity.
STDLIB_MAX_FILES = 0
# The smallest piece a long document is cut into for the split (see split_documents).
MIN_PIECE_CHARS = 1024
# WikiText's own file names (wiki.train.tokens, wiki.valid.raw, ...): data.documents=auto reads
# those as articles.
WIKITEXT_FILE = re.compile(r"^wiki\.(train|valid|test)\.(tokens|raw)$")
# An article's heading: `= Title =` at the start of a line (WikiText's files put a space before
# it; copies that joined lines put the article's first sentence after it). Section headings are
# `= = Section = =`, so the title must not start with `=`.
WIKITEXT_TITLE = re.compile(r"^[ \t]*= (?!=)[^=\n]+? =(?=[ \t]|$)")
# A run of `=` tokens (`= = =`): WikiText's heading marks.
EQUALS_RUN = re.compile(r"(?:(?<= )|^)=(?: =)*(?= |$)")
WIKITEXT_DEFAULT_CONFIG = "wikitext-103-raw-v1"
HUB_PROBE_TIMEOUT_S = 3.0


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
# Documents


def wikitext_articles(key: str, lines: Iterable[str]) -> Iterator[Document]:
    """WikiText lines (or dataset rows) grouped into articles, one per `= Title =` heading;
    text before the first heading is an article of its own. Lines keep their line ends."""
    buf: list[str] = []
    n = 0
    for joined in lines:
        for line in _unjoin_titles(joined):
            if WIKITEXT_TITLE.match(line) and any(s.strip() for s in buf):
                yield Document(f"{key}:{n}", "".join(buf))
                buf, n = [], n + 1
            buf.append(line)
    if any(s.strip() for s in buf):
        yield Document(f"{key}:{n}", "".join(buf))


def _unjoin_titles(line: str) -> list[str]:
    """The line, cut before every article title that follows a heading on it. Copies that
    joined lines write `= = Section = = = Title = text`: a run of `=` after a level-k heading's
    text closes it with k of them and opens the next heading with the rest, so a rest of one is
    a title (`= = A = = = = = B = = =` is a level-3 heading after a level-2 one, no title)."""
    stripped = line.lstrip(" \t")
    if not stripped.startswith("= ") or "= = " not in line:
        return [line]
    runs = list(EQUALS_RUN.finditer(line))
    if not runs or runs[0].start() != len(line) - len(stripped):
        return [line]
    level = runs[0].group().count("=")
    cuts = []
    for run in runs[1:]:
        rest = run.group().count("=") - level
        if rest <= 0:  # the heading closed and text follows: no more headings on this line
            break
        if rest == 1:
            cuts.append(run.end() - 1)  # the title's own `=`
        level = rest
    if not cuts:
        return [line]
    pieces, start = [], 0
    for c in cuts:
        pieces.append(line[start:c].rstrip(" ") + "\n")
        start = c
    pieces.append(line[start:])
    return pieces


def _is_wikitext_mode(mode: str, looks_like_wikitext: bool) -> bool:
    if mode not in DOCUMENT_MODES:
        raise UserError(f"data.documents={mode!r}: {', '.join(DOCUMENT_MODES)}")
    return mode == "wikitext" or (mode == "auto" and looks_like_wikitext)


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
            elif _is_wikitext_mode(self.documents_mode, bool(WIKITEXT_FILE.match(path.name))):
                yield from wikitext_articles(key, text.splitlines(keepends=True))
            elif text.strip():
                yield Document(key, text)

    def load(self, val_fraction: float) -> Corpus:
        docs = list(self.documents())
        if not docs:
            raise UserError(f"data.source={self.kind}: {self.describe()} holds no text")
        train, val = split_documents(docs, val_fraction)
        info = {"documents": len(docs), "files": len(self.files()), "chars": _chars(docs)}
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
        _is_wikitext_mode(documents, False)  # an unknown mode fails before any reading
        given = {"train": _paths(path), "val": _paths(val_path), "test": _paths(test_path)}
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
        info = {"documents": len(every), "files": len(self.files()), "chars": _chars(every)}
        return Corpus(train, val, info, test=docs.get("test"), splits=splits)

    def _where(self, split: str) -> str:
        if self.folder_splits and split in self.folder_splits:
            return ", ".join(str(p) for p in self.folder_splits[split])
        return self.describe(split)


def _paths(spec: str) -> list[str]:
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


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets (optional dependency)

BUILDERS = ("json", "parquet", "text", "csv", "arrow")


@dataclass(frozen=True)
class HFSpec:
    """What names a Hugging Face corpus, from the data.hf_* keys."""

    name: str  # a hub name, a builder (json/parquet/text/csv) or a local folder
    config: str | None = None
    revision: str | None = None
    data_files: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (split, files)
    splits: tuple[str, ...] = ()  # train[, validation[, test]]
    text_column: str = "text"
    streaming: bool = False
    max_tokens: int = 0
    documents: str = "auto"


def parse_data_files(spec: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`a.jsonl,b.jsonl` (training) or `train=a.jsonl,validation=b.jsonl,test=c.jsonl`."""
    out: dict[str, list[str]] = {}
    for item in _paths(spec):
        split, _, path = item.rpartition("=")
        out.setdefault(split.strip() or "train", []).append(path.strip())
    return tuple((s, tuple(ps)) for s, ps in out.items())


class HFSource(Source):
    """A Hugging Face dataset: a hub name (`datasets.load_dataset(name, config, revision=)`), a
    folder written by `save_to_disk` (a Dataset or a DatasetDict), or a builder (`json`,
    `parquet`, `text`) over data.data_files. Documents are the non-empty rows of
    data.text_column (WikiText: articles of rows).

    Its identity is the name, config, revision and files: a built cache is reused without
    `datasets` or the hub, so a cache made on a connected machine works on an offline one.
    Local folders and data files are also fingerprinted by content (an edit rebuilds).
    """

    kind = "hf"

    def __init__(self, spec: HFSpec):
        self.spec = spec
        name = spec.name
        self.config = spec.config or (WIKITEXT_DEFAULT_CONFIG if name == "wikitext" else None)
        self.local: Path | None = None
        if name not in BUILDERS and (name.startswith((".", "/", "~")) or Path(name).exists()):
            p = user_path(name, "data.hf_dataset")
            if not p.exists():
                raise UserError(f"data.hf_dataset '{name}' does not exist")
            self.local = p.resolve()
        if name in BUILDERS and not spec.data_files:
            raise UserError(f"data.hf_dataset={name} needs data.data_files (files to read)")
        self.files_resolved: list[tuple[str, Path]] = []
        for split, paths in spec.data_files:
            for p in paths:
                # Globs are datasets' too (data/*.jsonl): expanded here for the fingerprint.
                where = user_path(p, "data.data_files")
                found = sorted(glob.glob(str(where))) if glob.has_magic(p) else [str(where)]
                for q in found:
                    rp = Path(q)
                    if not rp.exists():
                        raise UserError(f"data.data_files: '{p}' does not exist")
                    self.files_resolved.append((f"{split}/{rp.name}", rp.resolve()))
                if not found:
                    raise UserError(f"data.data_files: '{p}' matches no file")
        self.explicit_val = False  # known once loaded; the key then holds val_fraction anyway

    def identity(self) -> dict[str, Any]:
        s = self.spec
        ident: dict[str, Any] = {"kind": "hf", "dataset": s.name, "config": self.config}
        if self.local is not None:
            ident["dataset"] = str(self.local)
        extra = {
            "revision": s.revision,
            "data_files": [
                [sp, [str(user_path(p, "data.data_files").resolve()) for p in ps]]
                for sp, ps in s.data_files
            ],
            "splits": list(s.splits),
            "text_column": s.text_column if s.text_column != "text" else None,
            # A stream is cut at max_tokens when written: the cache holds only that much.
            "streaming_max_tokens": s.max_tokens if s.streaming else None,
            "documents": s.documents if s.documents != "auto" else None,
        }
        ident.update({k: v for k, v in extra.items() if v})
        return ident

    def label(self) -> str:
        base = self.local.name if self.local is not None else self.spec.name
        tag = f"{base}-{self.config}" if self.config else base
        return "hf-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in tag)[:60]

    def content_hash(self) -> str | None:
        files = list(self.files_resolved)
        if self.local is not None:
            files += [(f"local/{k}", p) for k, p in tree_files(self.local)]
        # Nested folders of data files: every file under them.
        expanded = []
        for key, p in files:
            expanded += [(f"{key}/{k}", q) for k, q in tree_files(p)] if p.is_dir() else [(key, p)]
        return files_digest(expanded) if expanded else None

    # -- loading -------------------------------------------------------------------------------

    def _datasets(self) -> Any:
        try:
            import datasets
        except ImportError:
            raise UserError(
                "data.source=hf needs the 'datasets' package: pip install lmprof[hf]"
            ) from None
        return datasets

    def _open(self) -> Any:
        """The DatasetDict (or Dataset) to read, or one line saying why not."""
        datasets = self._datasets()
        s = self.spec
        what = f"Hugging Face dataset '{s.name}'" + (f" ({self.config})" if self.config else "")
        try:
            if self.local is not None and _saved_to_disk(self.local):
                ds = datasets.load_from_disk(str(self.local))
                if s.streaming:
                    ds = _to_iterable(ds)
                return ds
            kwargs: dict[str, Any] = {"streaming": True} if s.streaming else {}
            if s.revision:
                kwargs["revision"] = s.revision
            if s.data_files:
                kwargs["data_files"] = {sp: list(ps) for sp, ps in s.data_files}
            name = str(self.local) if self.local is not None else s.name
            if self.local is None and not s.data_files:
                _go_offline_if_unreachable(what)
            return datasets.load_dataset(name, self.config, **kwargs)
        except UserError:
            raise
        except Exception as exc:  # hub unreachable, unknown name, bad files: one line
            if self.local is not None or s.data_files:
                hint = ""  # local files: the error itself says what is wrong with them
            elif _offline():
                hint = (
                    " (offline: HF_HUB_OFFLINE is set or the hub is unreachable, and it is not "
                    "in the local cache)"
                )
            else:
                hint = " (offline or not on the hub?)"
            raise UserError(f"could not load {what}: {_first_line(exc)}{hint}") from None

    def load(self, val_fraction: float) -> Corpus:
        s = self.spec
        ds = self._open()
        if not hasattr(ds, "keys"):  # a single Dataset (save_to_disk of one split)
            ds = {"train": ds}
        available = list(ds.keys())
        names = list(s.splits)
        train_name = names[0] if names else "train"
        if train_name not in available:
            raise UserError(
                f"Hugging Face dataset '{s.name}' has no split '{train_name}' ({available}): "
                "name the splits with data.hf_split=train,validation[,test]"
            )
        if len(names) > 1:
            val_name: str | None = names[1]
        else:
            val_name = next(
                (x for x in ("validation", "valid", "val", "dev") if x in available), None
            )
        test_name = names[2] if len(names) > 2 else ("test" if "test" in available else None)
        for n in (val_name, test_name):
            if n is not None and n not in available:
                raise UserError(f"Hugging Face dataset '{s.name}' has no split '{n}' ({available})")
        if s.streaming and val_name is None:
            raise UserError(
                "data.streaming=true needs a validation split (a stream cannot be held out by "
                "data.val_fraction): name it with data.hf_split=train,<validation split>"
            )
        train: Iterable[Document] = self._documents(ds[train_name], train_name)
        if val_name is not None:
            val = list(self._documents(ds[val_name], val_name))
        else:
            train, val = split_documents(list(train), val_fraction)
        test = list(self._documents(ds[test_name], test_name)) if test_name else None
        if not s.streaming:
            train = list(train)
            if not train or not val:
                raise UserError(f"Hugging Face dataset '{s.name}' has no text in train/validation")
        elif not val:
            raise UserError(f"Hugging Face dataset '{s.name}' has no text in '{val_name}'")
        info: dict[str, Any] = {
            "validation_split": val_name or "from train",
            "test_split": test_name,
            "fingerprints": {n: getattr(ds[n], "_fingerprint", None) for n in available},
            "streaming": s.streaming,
        }
        if isinstance(train, list):
            every = train + val + (test or [])
            info |= {"documents": len(every), "chars": _chars(every)}
        splits = {"train": train_name, "val": val_name or f"val_fraction={val_fraction}"}
        if test_name:
            splits["test"] = test_name
        return Corpus(
            train,
            val,
            info,
            test=test,
            train_token_limit=s.max_tokens if s.streaming else 0,
            splits=splits,
        )

    def _documents(self, split: Any, name: str) -> Iterator[Document]:
        col = self.spec.text_column
        cols = list(getattr(split, "column_names", None) or [])
        if cols and col not in cols:
            raise UserError(
                f"Hugging Face dataset '{self.spec.name}' split '{name}' has no column '{col}' "
                f"({cols}): set data.text_column"
            )
        texts = _column(split, col)
        wikitext = "wikitext" in (self.local.name if self.local else self.spec.name).lower()
        if _is_wikitext_mode(self.spec.documents, wikitext):
            return wikitext_articles(name, (t if t.endswith("\n") else t + "\n" for t in texts))
        return (Document(f"{name}:{i}", t) for i, t in enumerate(texts) if t and t.strip())


def _column(split: Any, col: str) -> Iterator[str]:
    """The column's strings, row by row: a stream's rows one at a time, a Dataset's column."""
    ds_mod = sys.modules.get("datasets")
    iterable = getattr(ds_mod, "IterableDataset", None) if ds_mod else None
    if iterable is not None and isinstance(split, iterable):
        for i, row in enumerate(split):
            if i == 0 and col not in row:  # a stream may not know its columns before a row
                raise UserError(
                    f"the dataset's rows have no column '{col}' ({sorted(row)}): set "
                    "data.text_column"
                )
            yield _text_cell(row.get(col), col)
        return
    for v in split[col]:
        yield _text_cell(v, col)


def _text_cell(value: Any, col: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"data.text_column '{col}' holds {type(value).__name__}, not text")
    return value


def _to_iterable(ds: Any) -> Any:
    if hasattr(ds, "keys"):
        return {k: v.to_iterable_dataset() for k, v in ds.items()}
    return ds.to_iterable_dataset()


def _saved_to_disk(path: Path) -> bool:
    """A folder written by Dataset.save_to_disk (state.json) or DatasetDict's (dataset_dict.json)."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _offline() -> bool:
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(
        os.environ.get("HF_DATASETS_OFFLINE")
    )


def _go_offline_if_unreachable(what: str) -> None:
    """One quick connection to the hub before `datasets` tries (it retries for ~30 s). When it
    fails, offline mode is switched on for this process, so a dataset in the local cache still
    loads and one that is not fails at once."""
    if _offline():
        _switch_offline()  # the modules may have been imported before the variable was set
        return
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # only the proxy can tell; let datasets try
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        _switch_offline()


def _switch_offline() -> None:
    """Offline mode in the Hugging Face modules already imported (they read the variables once,
    at import)."""
    for mod, attr in (
        ("huggingface_hub.constants", "HF_HUB_OFFLINE"),
        ("datasets.config", "HF_HUB_OFFLINE"),
        ("datasets.config", "HF_DATASETS_OFFLINE"),
    ):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, attr):
            setattr(m, attr, True)


def _first_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return (msg[0] if msg else type(exc).__name__)[:200]


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
        return TextSource(
            data.path,
            val_path=data.val_path,
            test_path=data.test_path,
            encoding=data.encoding,
            documents=data.documents,
        )
    if data.source == "hf":
        return HFSource(
            HFSpec(
                name=data.hf_dataset,
                config=data.hf_config or None,
                revision=data.hf_revision or None,
                data_files=parse_data_files(data.data_files),
                splits=tuple(_paths(data.hf_split)),
                text_column=data.text_column or "text",
                streaming=data.streaming,
                max_tokens=data.max_tokens,
                documents=data.documents,
            )
        )
    raise UserError(f"data.source={data.source!r} has no text source")
