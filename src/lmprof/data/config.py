"""The run config's `data` section and the data's own rules: which source reads which key
(`Spec.read_by`), what a source and a tokenizer need of each other. Torch-free, imported by
`lmprof.config` before anything of the data pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from lmprof.config_fields import NON_NEGATIVE, POSITIVE, option, spec_of
from lmprof.errors import ConfigError

SOURCES = ("stdlib", "text", "hf", "synthetic")
TOKENIZERS = ("byte", "char", "bpe", "gpt2", "file")
DOCUMENTS = ("auto", "file", "wikitext")  # see lmprof/data/sources.py
PACKED_BATCHINGS = ("shifted", "random", "packed")  # where windows start: data/batching.py
BATCHINGS = (*PACKED_BATCHINGS, "padded")

TEXT_ONLY = {"read_by": ("text",)}
HF_ONLY = {"read_by": ("hf",)}


@dataclass
class DataConfig:
    source: str = option("stdlib", "where the text comes from", choices=SOURCES)
    path: str = option(
        "",
        "source=text: training files or folders (a folder of train/valid/test files: all)",
        **TEXT_ONLY,
    )
    val_path: str = option(
        "", "source=text: validation files; empty: data.val_fraction of path", **TEXT_ONLY
    )
    test_path: str = option("", "source=text: test files, evaluated once at the end", **TEXT_ONLY)
    encoding: str = option(
        "", "text files' encoding; empty: UTF-8, and other bytes are refused", **TEXT_ONLY
    )
    documents: str = option(
        "auto",
        "what a document is: file (a JSONL line, a row); wikitext: an article; auto: wikitext "
        "for WikiText's files and dataset",
        choices=DOCUMENTS,
        read_by=("text", "hf"),
    )
    hf_dataset: str = option(
        "wikitext",
        "source=hf: a hub name, a save_to_disk folder, or json/parquet/text/csv",
        **HF_ONLY,
    )
    hf_config: str = option(
        "", "the dataset's config name; empty: none (wikitext-103-raw-v1)", **HF_ONLY
    )
    hf_revision: str = option(
        "", "the dataset's revision on the hub (a tag, branch or commit)", **HF_ONLY
    )
    hf_split: str = option(
        "", "split names train[,validation[,test]]; empty: the usual names", **HF_ONLY
    )
    data_files: str = option(
        "",
        "files for json/parquet/text/csv: a,b (training) or train=a,validation=b,test=c",
        **HF_ONLY,
    )
    text_column: str = option("text", "the dataset column that holds the text", **HF_ONLY)
    streaming: bool = option(
        False,
        "source=hf: stream the dataset into the cache, stopping at data.max_tokens",
        **HF_ONLY,
    )
    tokenizer: str = option("byte", "how text becomes token ids", choices=TOKENIZERS)
    tokenizer_path: str = option(
        "", "tokenizer=file (or gpt2): a tokenizer.json, or a folder of vocab.json + merges.txt"
    )
    vocab_size: int = option(
        4096, "bpe: the size to train; synthetic: the ids drawn from", above=0, at_most=2**31 - 1
    )
    sequence_length: int = option(256, "tokens per training sequence", **POSITIVE)
    batching: str = option(
        "shifted",
        "documents concatenated into windows on a grid shifted each epoch (shifted), at "
        "random starts (random) or on a fixed grid (packed: lmprof before shifted); or "
        "padded: one document per row, PAD-masked",
        choices=BATCHINGS,
    )
    val_fraction: float = option(
        0.05, "share of the text held out for evaluation", above=0, below=1
    )
    max_tokens: int = option(0, "cap on the training tokens; 0: the whole corpus", **NON_NEGATIVE)
    cache_dir: str = option("processed_datasets", "where tokenised corpora are cached")


def drop_unread_keys(d: DataConfig, set_at: Mapping[str, int]) -> None:
    """A data key that data.source does not read (Spec.read_by) is refused, one line, when it
    was given with or after the source's choice: the user meant it and it would be ignored. A
    source chosen by a later layer (an override switching the seed's WikiText config to
    `data.source=synthetic`) replaces the earlier source's keys: they return to their defaults,
    so the saved config and the hash record only what the run reads. `set_at` maps a dotted key
    to the layer (1, 2, ...) that set it last."""
    source, chosen_at = d.source, set_at.get("data.source", 0)
    defaults = DataConfig()
    for f in fields(DataConfig):
        dotted = f"data.{f.name}"
        read_by = spec_of(f).read_by
        value, default = getattr(d, f.name), getattr(defaults, f.name)
        if read_by is None or source in read_by or value == default:
            continue
        if set_at.get(dotted, 0) < chosen_at:
            setattr(d, f.name, default)
            continue
        sources = " or ".join(f"data.source={r}" for r in read_by)
        raise ConfigError(
            dotted,
            value,
            f"is read by {sources} only, and data.source is {source}: set data.source "
            f"or remove {dotted}",
        )


def validate_data(d: DataConfig) -> None:
    """What a source and a tokenizer need: files for text, a path for tokenizer=file, a
    tokenizer a stream can use, a vocabulary bpe can train."""
    if d.source == "text" and not d.path:
        raise ConfigError("data.path", "", "data.source=text needs data.path (files or folders)")
    if d.tokenizer == "file" and not d.tokenizer_path:
        raise ConfigError(
            "data.tokenizer_path", "", "tokenizer=file needs a tokenizer.json or a vocab folder"
        )
    if d.tokenizer_path and d.tokenizer not in ("file", "gpt2"):
        raise ConfigError(
            "data.tokenizer_path",
            d.tokenizer_path,
            f"is read by tokenizer=file or gpt2, not {d.tokenizer}",
        )
    if d.streaming and d.tokenizer in ("char", "bpe"):
        raise ConfigError(
            "data.streaming",
            True,
            f"a stream cannot train tokenizer={d.tokenizer}: use byte, gpt2 or file",
        )
    if d.tokenizer == "bpe" and d.vocab_size < 257:
        raise ConfigError("data.vocab_size", d.vocab_size, "bpe needs at least 257")
