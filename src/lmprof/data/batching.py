"""Batches from a flat token stream: packed windows, padded documents, and their order.

Order: every epoch is a seeded permutation of all slots (windows or documents), the same on
every rank; rank r takes the permutation's positions r, r+W, r+2W, ... (W = world size), the
same number on every rank, so ranks read disjoint slots and stay in step. A rank's stream is
its epochs one after another, and batch k is slots [k*B, (k+1)*B) of that stream (a batch may
span two epochs), so resuming at step k is arithmetic, not replay. A slot is named by its
global id, epoch * n_slots + index, so whatever a slot's content depends on (the epoch's grid
offset, a random start) is a function of that id and the seed: no state to save.

Where a packed window starts (data.batching; N tokens, windows of T+1, targets w[1:]):
  shifted  the grid of windows every T tokens, shifted each epoch by a seeded offset in [0, T)
           and read around the stream as a circle: N // T windows an epoch, each target
           position once; the N % T positions left over (a gap under T tokens) move with the
           offset. The window across the end joins the last document's EOS to the first
           document, a boundary like every other. The default.
  random   a uniform random start in [0, N - T) per slot, a hash of (seed, slot id): nanoGPT's
           sampler, seeded and resumable; an "epoch" is (N - 1) // T rows.
  packed   the fixed grid, windows at 0, T, 2T, ... every epoch: (N - 1) // T windows, the same
           contexts at the same positions each epoch (lmprof before `shifted`; for reproducing
           old results).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmprof.config import PACKED_BATCHINGS
from lmprof.errors import UserError
from lmprof.ops import IGNORE_INDEX

_U64 = (1 << 64) - 1


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) int64; PAD positions hold pad_id
    targets: torch.Tensor  # (B, T) int64; next token, IGNORE_INDEX where the target is PAD
    attention_mask: torch.Tensor | None  # (B, T) bool, True = real token; None: no padding
    n_real_tokens: int  # targets != IGNORE_INDEX, counted here so the trainer needs no sync
    n_tokens: int  # B*T, PAD included

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """Copies on `device`. To CUDA the host tensors are pinned first, so the copy is
        asynchronous and overlaps the running step."""
        device = torch.device(device)
        if device.type == "cpu":
            return self
        pin = device.type == "cuda" and torch.cuda.is_available()

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            if pin and not t.is_pinned():
                t = t.pin_memory()
            return t.to(device, non_blocking=non_blocking and pin)

        return Batch(
            move(self.input_ids),
            move(self.targets),  # type: ignore[arg-type]
            move(self.attention_mask),
            self.n_real_tokens,
            self.n_tokens,
        )


# ---------------------------------------------------------------------------------------------
# Order


def epoch_permutation(n_items: int, seed: int, epoch: int) -> np.ndarray:
    """The same on every rank and machine: numpy's PCG64 from (seed, epoch)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed & _U64, epoch, 0x1A7B]))
    return rng.permutation(n_items)


def item_batches(
    n_items: int,
    batch_size: int,
    *,
    seed: int,
    rank: int,
    world_size: int,
    start_step: int = 0,
    what: str = "training windows",
) -> Iterator[np.ndarray]:
    """Endless batches of global slot ids for one rank, epoch * n_items + index (see the
    module docstring): `index = ids % n_items`, `epoch = ids // n_items`."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    if batch_size < 1 or start_step < 0:
        raise ValueError("batch_size must be positive and start_step non-negative")
    per_rank = n_items // world_size
    if per_rank < 1:
        raise UserError(
            f"{n_items} {what} cannot be shared by {world_size} ranks: "
            "use a larger corpus or a smaller data.sequence_length"
        )
    # Checked above, before the first next(): errors surface where the iterator is made.
    return _item_batches(n_items, per_rank, batch_size, seed, rank, world_size, start_step)


def _item_batches(
    n_items: int,
    per_rank: int,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    start_step: int,
) -> Iterator[np.ndarray]:
    def share(epoch: int) -> np.ndarray:
        mine = epoch_permutation(n_items, seed, epoch)[rank : per_rank * world_size : world_size]
        return mine.astype(np.int64) + epoch * n_items

    epoch, off = divmod(start_step * batch_size, per_rank)
    items = share(epoch)
    while True:
        parts, need = [], batch_size
        while need:
            if off == per_rank:
                epoch, off = epoch + 1, 0
                items = share(epoch)
            take = min(need, per_rank - off)
            parts.append(items[off : off + take])
            off, need = off + take, need - take
        yield parts[0] if len(parts) == 1 else np.concatenate(parts)


# ---------------------------------------------------------------------------------------------
# Token arrays: a memmap, or a virtual stream of random tokens for source=synthetic


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hashed_ints(index: np.ndarray, key: int, modulus: int) -> np.ndarray:
    """A deterministic pseudo-random int in [0, modulus) per index: random access, no state."""
    x = np.asarray(index).astype(np.uint64) ^ np.uint64(key & _U64)
    return (_splitmix64(_splitmix64(x)) % np.uint64(modulus)).astype(np.int64)


class SyntheticTokens:
    """A virtual token stream of `length` tokens drawn from [0, n_symbols), indexable by arrays
    of positions like a memmap; token i is a hash of (key, i), so any window costs O(window)."""

    dtype = np.dtype(np.int64)

    def __init__(self, length: int, n_symbols: int, key: int):
        self.length, self.n_symbols, self.key = length, n_symbols, key

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, slice):
            index = np.arange(*index.indices(self.length))
        index = np.asarray(index)
        if index.size and (index.min() < 0 or index.max() >= self.length):
            raise IndexError("synthetic token index out of range")
        return hashed_ints(index, self.key, self.n_symbols)


def windows(tokens: Any, starts: np.ndarray, width: int, *, wrap: bool = False) -> np.ndarray:
    """Rows tokens[s : s + width] for each start, as int64 (B, width); wrap: read the stream
    as a circle, so a row may run past the end into the start."""
    offsets = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(width, dtype=np.int64)
    if wrap:
        offsets %= len(tokens)
    return np.asarray(tokens[offsets], dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Where packed windows start (the module docstring's table)

_SHIFT_SALT, _RANDOM_SALT = 0x5E1F7, 0x2A4D0


@functools.cache
def _key(seed: int, salt: int) -> int:
    """A 64-bit key per (seed, salt), hashed so that nearby seeds give unrelated streams."""
    x = np.array([(seed & _U64) ^ salt], dtype=np.uint64)
    return int(_splitmix64(_splitmix64(x))[0])


def n_windows(batching: str, n_tokens: int, width: int) -> int:
    """Packed windows (slots) an epoch for `batching` over n_tokens, T = width."""
    if batching == "shifted":
        return n_tokens // width
    return (n_tokens - 1) // width


def grid_offset(seed: int, epoch: np.ndarray | int, width: int) -> np.ndarray:
    """The shifted grid's offset in [0, T) of each epoch: the same on every rank."""
    return hashed_ints(np.asarray(epoch, dtype=np.int64), _key(seed, _SHIFT_SALT), width)


def window_starts(
    batching: str, slots: np.ndarray, n_tokens: int, width: int, seed: int
) -> np.ndarray:
    """The first token of each slot's window (slots: global ids from item_batches). Starts of
    `shifted` may pass the end: read them with windows(..., wrap=True)."""
    n = n_windows(batching, n_tokens, width)
    if batching == "packed":
        return (slots % n) * width
    if batching == "shifted":
        return grid_offset(seed, slots // n, width) + (slots % n) * width
    if batching == "random":
        return hashed_ints(slots, _key(seed, _RANDOM_SALT), n_tokens - width)
    raise ValueError(f"{batching!r} is not packed batching ({', '.join(PACKED_BATCHINGS)})")


# ---------------------------------------------------------------------------------------------
# Batches


def packed_batch(rows: np.ndarray) -> Batch:
    """(B, T+1) windows: inputs w[:, :-1], targets w[:, 1:]; nothing is padding."""
    b, t = rows.shape[0], rows.shape[1] - 1
    x = torch.from_numpy(np.ascontiguousarray(rows[:, :-1]))
    y = torch.from_numpy(np.ascontiguousarray(rows[:, 1:]))
    return Batch(x, y, None, b * t, b * t)


def filled_batch(rows: np.ndarray, batch_size: int) -> Batch:
    """packed_batch of (b, T+1) windows, b <= batch_size, filled up to batch_size rows that
    repeat the first one with every target IGNORE_INDEX: a fixed shape, the same loss."""
    b = rows.shape[0]
    if b == batch_size:
        return packed_batch(rows)
    t = rows.shape[1] - 1
    full = np.concatenate([rows, np.repeat(rows[:1], batch_size - b, axis=0)])
    x = torch.from_numpy(np.ascontiguousarray(full[:, :-1]))
    y = torch.from_numpy(np.ascontiguousarray(full[:, 1:]))
    y[b:] = IGNORE_INDEX
    return Batch(x, y, None, b * t, batch_size * t)


def padded_rows(
    tokens: Any, doc_start: np.ndarray, doc_len: np.ndarray, width: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """One document per row, truncated to `width`, then PAD: (rows int64 (B, width), lengths)."""
    lengths = np.minimum(doc_len, width)
    cols = np.arange(width, dtype=np.int64)
    real = cols[None, :] < lengths[:, None]
    offsets = np.where(real, doc_start[:, None] + cols[None, :], doc_start[:, None])
    rows = np.asarray(tokens[offsets], dtype=np.int64)
    rows[~real] = pad_id
    return rows, lengths


def padded_batch(rows: np.ndarray, lengths: np.ndarray) -> Batch:
    """Rows of (T+1) with `lengths` real tokens each. The input at column j is real when
    j < length; its target (column j+1) is real when j+1 < length, else IGNORE_INDEX."""
    b, t = rows.shape[0], rows.shape[1] - 1
    cols = np.arange(t)
    real_in = cols[None, :] < lengths[:, None]
    real_tgt = cols[None, :] < (lengths - 1)[:, None]
    x = torch.from_numpy(np.ascontiguousarray(rows[:, :-1]))
    y = torch.from_numpy(np.where(real_tgt, rows[:, 1:], IGNORE_INDEX).astype(np.int64))
    mask = None if real_in.all() else torch.from_numpy(real_in)
    return Batch(x, y, mask, int(real_tgt.sum()), b * t)
