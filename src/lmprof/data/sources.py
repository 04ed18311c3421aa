"""Where text comes from, and the train/validation/test split: the registry of sources.

One module per kind: `text_source.py` (text files and corpus folders, strict decoding),
`stdlib_source.py` (this Python's standard library), `hub_source.py` (Hugging Face datasets,
and the offline check), `wikitext.py` (WikiText's articles as documents); `corpus.py` holds
what they share (`Document`, `Corpus`, `Source`, `split_documents`). Synthetic data needs no
source (`datamodule.py` makes its tokens). Callers import from here.

Splits: named ones when the source has them (data.val_path / data.test_path, a folder of
train/valid/test files, a Hugging Face dataset's splits), otherwise validation is
data.val_fraction of the training documents (see split_documents) and there is no test split.

Documents (data.documents): a file, a JSONL line or a dataset row, except for WikiText, whose
articles (the `= Title =` headings) are the documents, so an article is one EOS-ended run of
tokens and perplexity is per token over whole articles.
"""

from __future__ import annotations

from typing import Any

from lmprof.data.corpus import MIN_PIECE_CHARS, Corpus, Document, Source, split_documents
from lmprof.data.hub_source import HFSource, HFSpec, parse_data_files
from lmprof.data.stdlib_source import StdlibSource
from lmprof.data.text_source import (
    FileSource,
    TextSource,
    check_encoding,
    comma_list,
    read_text,
)
from lmprof.data.wikitext import wikitext_articles
from lmprof.errors import UserError

__all__ = [
    "MIN_PIECE_CHARS",
    "STDLIB_MAX_FILES",
    "Corpus",
    "Document",
    "FileSource",
    "HFSource",
    "HFSpec",
    "Source",
    "StdlibSource",
    "TextSource",
    "check_encoding",
    "make_source",
    "parse_data_files",
    "read_text",
    "split_documents",
    "wikitext_articles",
]

# Tests may shrink the stdlib corpus to its first N files (sorted); 0 = all. Part of the identity.
STDLIB_MAX_FILES = 0


def make_source(data: Any) -> Source:
    """The source named by a DataConfig (not synthetic, which needs no source)."""
    if data.source == "stdlib":
        return StdlibSource(max_files=STDLIB_MAX_FILES)
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
                splits=tuple(comma_list(data.hf_split)),
                text_column=data.text_column or "text",
                streaming=data.streaming,
                max_tokens=data.max_tokens,
                documents=data.documents,
            )
        )
    raise UserError(f"data.source={data.source!r} has no text source")
