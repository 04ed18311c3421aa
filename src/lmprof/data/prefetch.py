"""Training batches cut and pinned ahead, off the training thread.

A thread takes batches from the loader in order, pins their tensors (page-locked host memory,
so the host-to-device copy is asynchronous) and puts them in a queue of `depth` batches; the
training thread only takes the next one and starts its copy. torch.utils.data's pin_memory
thread does this only behind worker processes, which the loader does not need: its batches are
slices of a memmap. One producer and a FIFO queue keep the loader's order exactly. PyTorch's
caching host allocator keeps a pinned block until the copy reading it has run, so reusing
blocks is safe.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator

import torch

from lmprof.data.batching import Batch

_END = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def pin_batch(batch: Batch) -> Batch:
    """The batch with its tensors in pinned host memory."""

    def pin(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None or t.is_pinned() else t.pin_memory()

    return dataclasses.replace(
        batch,
        input_ids=pin(batch.input_ids),
        targets=pin(batch.targets),
        attention_mask=pin(batch.attention_mask),
    )


class PinnedAhead:
    """Iterate `batches` through a thread that prepares up to `depth` of them ahead; an error
    in the loader is raised here, at the batch where it happened. `close()` stops the thread."""

    def __init__(
        self,
        batches: Iterator[Batch],
        depth: int = 2,
        prepare: Callable[[Batch], Batch] = pin_batch,
    ):
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=self._fill, args=(batches, prepare), name="lmprof-batches", daemon=True
        )
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, batches: Iterator[Batch], prepare: Callable[[Batch], Batch]) -> None:
        try:
            for batch in batches:
                if not self._put(prepare(batch)):
                    return
        except BaseException as exc:  # noqa: BLE001 -- handed to the training thread
            self._put(_Failed(exc))
            return
        self._put(_END)

    def __iter__(self) -> PinnedAhead:
        return self

    def __next__(self) -> Batch:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END or isinstance(item, _Failed):
            self._done = True
            if item is _END:
                raise StopIteration
            raise item.exc
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
