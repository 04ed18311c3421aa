"""How lmprof talks to torch.distributed.checkpoint (DCP): a reader that unpickles nothing
outside an allow-list of DCP's own metadata classes and refuses non-tensor entries, DCP's
per-rank errors as one line, and its single-process warning silenced. See train/checkpoint.py
for why: loading never runs code from the files."""

from __future__ import annotations

import contextlib
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (another config, tampered, incomplete)."""


_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "MetadataIndex",
        "ChunkStorageMetadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "TensorProperties",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata dataclasses and nothing else: any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_CLASSES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise CheckpointError(f"checkpoint metadata refers to {module}.{name}: refused")


def safe_reader(path: Path) -> Any:
    """A DCP FileSystemReader that unpickles nothing outside the allow-list."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.planner import LoadItemType

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

            meta_path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(meta_path, "rb") as f:
                try:
                    metadata = _MetadataUnpickler(f).load()
                except CheckpointError:
                    raise
                except Exception as exc:
                    raise CheckpointError(f"unreadable checkpoint metadata: {exc}") from None
            if not isinstance(metadata, Metadata):
                raise CheckpointError("checkpoint metadata is not DCP metadata")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

        def read_data(self, plan, planner):
            # Non-tensor entries are torch.load(weights_only=False)'d by DCP's planner: we
            # never write any, so one here is foreign.
            if any(item.type == LoadItemType.BYTE_IO for item in plan.items):
                raise CheckpointError("checkpoint holds pickled (non-tensor) entries: refused")
            return super().read_data(plan, planner)

    return SafeFileSystemReader(path)


@contextlib.contextmanager
def plain_errors(what: str) -> Iterator[None]:
    """DCP wraps every rank's error in a CheckpointException (a BaseException whose first line
    names only ranks): re-raise the first rank's error as one line."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as exc:
        rank, (err, _) = sorted(exc.failures.items())[0]
        if isinstance(err, CheckpointError):
            raise CheckpointError(f"{what}: {err}") from None
        text = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"{what}: rank {rank}: {type(err).__name__}: {text}") from None


@contextlib.contextmanager
def single_process_quiet() -> Iterator[None]:
    """DCP warns on every single-process save/load that it assumes one process: we know."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed is .*single process")
        yield
