"""`build_data(cfg) -> DataModule`: the trainer's one entry point to data.

Training batches (data.batching):
  shifted  windows of T+1 tokens of the training stream (documents joined by EOS) on a grid
           every T tokens, shifted each epoch by a seeded offset (the default); input = w[:-1],
           targets = w[1:]; no padding, attention_mask None. Each target position once an
           epoch (lmprof/data/batching.py says how the stream's end is read).
  random   windows at uniform random starts (nanoGPT's sampler), seeded and resumable.
  packed   the fixed grid, windows at 0, T, 2T, ... every epoch (lmprof's sampler before
           `shifted`: with learned positions, many epochs of the same windows are memorised).
  padded   one document per row (the seed's behaviour, to measure PAD waste): its tokens and
           its EOS, truncated to T+1, then PAD; targets IGNORE_INDEX where the target is PAD.
Validation (and the test split, when the source has one) is always packed (so eval loss
compares across batching modes): windows starting
every T tokens of the validation stream, in order; the last partial window is dropped, as are
the n_windows % world_size windows that would leave ranks with unequal shares (none on one
rank). A rank's last batch is filled up to batch_size rows with rows whose targets are all
IGNORE_INDEX (counted in n_tokens, not n_real_tokens), so every evaluation batch has one shape
and a compiled model compiles one evaluation graph, not a second for the short batch.

data.max_tokens > 0 keeps the first max_tokens tokens of the training stream (applied here, not
in the cache, so changing it never re-tokenizes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from lmprof.config import BATCHINGS, PACKED_BATCHINGS
from lmprof.data.batching import (
    Batch,
    SyntheticTokens,
    filled_batch,
    hashed_ints,
    item_batches,
    n_windows,
    packed_batch,
    padded_batch,
    padded_rows,
    window_starts,
    windows,
)
from lmprof.data.cache import open_cache
from lmprof.data.sources import make_source
from lmprof.data.tokenizers import SyntheticTokenizer, Tokenizer, tokenizer_spec
from lmprof.errors import UserError

SYNTHETIC_TOKENS = 1 << 26  # the nominal training stream of source=synthetic
SYNTHETIC_VAL_WINDOWS = 64
_SYNTH_TRAIN_KEY, _SYNTH_VAL_KEY, _SYNTH_DOC_KEY = 0x7EA1, 0x5A1D, 0xD0C5


class DataModule:
    """Token streams plus the batching rules; iterators are cheap to create, and each is
    independent (resume by creating a new one with start_step)."""

    def __init__(
        self,
        *,
        tokenizer: Tokenizer,
        train: Any,  # 1-D token array (memmap or SyntheticTokens)
        val: Any,
        sequence_length: int,
        batching: str = "shifted",
        doc_start: np.ndarray | None = None,  # padded: training documents (start, length)
        doc_len: np.ndarray | None = None,
        info: dict[str, Any] | None = None,
        test: Any = None,  # 1-D token array of the test split, or None
    ):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.pad_id = tokenizer.pad_id
        self.eos_id = tokenizer.eos_id
        self.train, self.val = train, val
        self.sequence_length = t = sequence_length
        self.batching = batching
        self.n_train_tokens = len(train)
        self.n_val_tokens = len(val)
        self.test = test
        self.n_test_tokens = len(test) if test is not None else 0
        self.info = dict(info or {})
        if self.n_val_tokens < t + 1:
            raise UserError(
                f"the validation split has {self.n_val_tokens} tokens, fewer than one window of "
                f"data.sequence_length+1={t + 1}: use more text, a larger data.val_fraction or a "
                "smaller data.sequence_length"
            )
        if test is not None and self.n_test_tokens < t + 1:
            raise UserError(
                f"the test split has {self.n_test_tokens} tokens, fewer than one window of "
                f"data.sequence_length+1={t + 1}: use more test text or a smaller "
                "data.sequence_length"
            )
        if batching in PACKED_BATCHINGS:
            if self.n_train_tokens < t + 1:
                raise UserError(
                    f"the training split has {self.n_train_tokens} tokens, fewer than one window "
                    f"of data.sequence_length+1={t + 1}: use more text (or a larger "
                    "data.max_tokens) or a smaller data.sequence_length"
                )
        elif batching == "padded":
            if doc_start is None or doc_len is None:
                raise ValueError("padded batching needs the training documents")
            keep = doc_len >= 2  # a row needs an input and a target
            self.doc_start, self.doc_len = doc_start[keep], doc_len[keep]
            if not len(self.doc_start):
                raise UserError("the training split has no document of two or more tokens")
        else:
            raise UserError(f"data.batching={batching!r}: allowed: {', '.join(BATCHINGS)}")

    @property
    def packed(self) -> bool:
        return self.batching in PACKED_BATCHINGS

    @property
    def n_train_windows(self) -> int:
        """Packed windows an epoch (for `padded`, those of the fixed grid)."""
        kind = self.batching if self.packed else "packed"
        return n_windows(kind, self.n_train_tokens, self.sequence_length)

    @property
    def n_val_windows(self) -> int:
        return (self.n_val_tokens - 1) // self.sequence_length

    @property
    def has_test(self) -> bool:
        return self.test is not None

    def n_train_items(self) -> int:
        """Rows per epoch: windows (packed) or documents (padded)."""
        return self.n_train_windows if self.packed else len(self.doc_start)

    def steps_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        return max(self.n_train_items() // world_size // batch_size, 1)

    def train_batches(
        self,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        start_step: int = 0,
    ) -> Iterator[Batch]:
        """Endless, deterministic given (seed, rank, world_size); ranks read disjoint rows;
        start_step=k starts at exactly the k-th batch of a fresh iterator, without reading
        the batches before it."""
        t, n_items = self.sequence_length, self.n_train_items()
        order = item_batches(
            n_items,
            batch_size,
            seed=seed,
            rank=rank,
            world_size=world_size,
            start_step=start_step,
            what="training windows" if self.packed else "training documents",
        )
        if self.packed:
            kind, n = self.batching, self.n_train_tokens
            wrap = kind == "shifted"
            return (
                packed_batch(
                    windows(self.train, window_starts(kind, ids, n, t, seed), t + 1, wrap=wrap)
                )
                for ids in order
            )
        return (
            padded_batch(
                *padded_rows(self.train, self.doc_start[idx], self.doc_len[idx], t + 1, self.pad_id)
            )
            for idx in (ids % n_items for ids in order)
        )

    def val_batches(
        self, batch_size: int, *, rank: int = 0, world_size: int = 1, max_batches: int = 0
    ) -> Iterator[Batch]:
        """One pass, in order, over this rank's windows of the validation split (0: all)."""
        return self.eval_batches(
            "val", batch_size, rank=rank, world_size=world_size, max_batches=max_batches
        )

    def eval_batches(
        self,
        split: str,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        max_batches: int = 0,
    ) -> Iterator[Batch]:
        """One pass, in order, over this rank's windows of `split` ('val' or 'test')."""
        if not 0 <= rank < world_size or batch_size < 1:
            raise ValueError(f"bad rank {rank}/{world_size} or batch_size {batch_size}")
        stream = self.val if split == "val" else self.test
        if stream is None:
            raise ValueError(f"this data has no {split} split")
        t = self.sequence_length
        n_windows = (len(stream) - 1) // t
        per_rank = n_windows // world_size
        if per_rank < 1:
            more = "a larger data.val_fraction" if split == "val" else "more test text"
            raise UserError(
                f"{n_windows} {split} windows cannot be shared by {world_size} ranks: use {more}"
            )
        mine = np.arange(rank, per_rank * world_size, world_size, dtype=np.int64)
        starts = range(0, per_rank, batch_size)
        if max_batches:
            starts = starts[:max_batches]
        return (
            filled_batch(windows(stream, mine[i : i + batch_size] * t, t + 1), batch_size)
            for i in starts
        )

    def __repr__(self) -> str:
        return (
            f"DataModule({self.info.get('source', '?')}, {self.tokenizer.name}, "
            f"train={self.n_train_tokens}, val={self.n_val_tokens}, "
            f"T={self.sequence_length}, {self.batching})"
        )


def build_data(cfg: Any, *, log: Callable[[str], Any] = print) -> DataModule:
    """The DataModule for cfg.data (a RunConfig): tokenized once into the cache, then memmapped."""
    d = cfg.data
    if d.source == "synthetic":
        return _synthetic(d, log)
    source = make_source(d)
    spec = tokenizer_spec(d.tokenizer, d.vocab_size, d.tokenizer_path)
    cache = open_cache(source, spec, d.val_fraction, d.cache_dir, log, d.tokenizer_path)
    train = cache.train
    if d.max_tokens and d.max_tokens < len(train):
        train = train[: d.max_tokens]
    offsets = cache.train_docs
    # Documents cut by max_tokens keep what is left of them.
    doc_start = offsets[:-1]
    doc_len = np.minimum(offsets[1:], len(train)) - doc_start
    info = {
        "source": d.source,
        "tokenizer": cache.tokenizer.name,
        "cache": str(cache.path),
        "cache_built": cache.built,
        "content_hash": cache.manifest.get("content_hash"),
        "dtype": cache.manifest["dtype"],
    }
    return DataModule(
        tokenizer=cache.tokenizer,
        train=train,
        val=cache.val,
        sequence_length=d.sequence_length,
        batching=d.batching,
        doc_start=doc_start,
        doc_len=doc_len,
        info=info,
        test=cache.test,
    )


def _synthetic(d: Any, log: Callable[[str], Any]) -> DataModule:
    """Random tokens for pure throughput: nothing read or written; tokens are a hash of their
    position (see SyntheticTokens), so every run and every rank sees the same stream."""
    if d.vocab_size < 2:
        raise UserError("data.source=synthetic needs data.vocab_size >= 2 (one id is PAD)")
    tok = SyntheticTokenizer(d.vocab_size)
    t = d.sequence_length
    n = d.max_tokens or SYNTHETIC_TOKENS
    train = SyntheticTokens(n, d.vocab_size - 1, _SYNTH_TRAIN_KEY)
    val = SyntheticTokens(SYNTHETIC_VAL_WINDOWS * t + 1, d.vocab_size - 1, _SYNTH_VAL_KEY)
    # padded: document i sits at i*(T+1) and is 2..T+1 tokens long.
    n_docs = max(n // (t + 1), 1)
    idx = np.arange(n_docs, dtype=np.int64)
    doc_start = idx * (t + 1)
    doc_len = np.minimum(2 + hashed_ints(idx, _SYNTH_DOC_KEY, t), n - doc_start)
    log(
        f"data: synthetic tokens from {d.vocab_size - 1} ids (+PAD), "
        f"{n:,} train + {len(val):,} val tokens, no cache"
    )
    info = {"source": "synthetic", "tokenizer": tok.name, "cache": None, "cache_built": False}
    return DataModule(
        tokenizer=tok,
        train=train,
        val=val,
        sequence_length=t,
        batching=d.batching,
        doc_start=doc_start,
        doc_len=doc_len,
        info=info,
    )
