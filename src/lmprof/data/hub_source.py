"""Hugging Face datasets as a corpus (`data.source=hf`, optional dependency): a hub name, a
`save_to_disk` folder or a builder over data files, streaming or not. When the hub cannot be
reached, offline mode is switched on at once, so a dataset not in the local cache fails in one
line instead of after `datasets`' retries."""

from __future__ import annotations

import glob
import os
import socket
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lmprof.data.corpus import Corpus, Document, Source, chars, split_documents
from lmprof.data.digest import files_digest, tree_files
from lmprof.data.text_source import comma_list
from lmprof.data.wikitext import is_wikitext_mode, wikitext_articles
from lmprof.errors import UserError
from lmprof.paths import user_path

WIKITEXT_DEFAULT_CONFIG = "wikitext-103-raw-v1"
HUB_PROBE_TIMEOUT_S = 3.0

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
    for item in comma_list(spec):
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
            info |= {"documents": len(every), "chars": chars(every)}
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
        if is_wikitext_mode(self.spec.documents, wikitext):
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
