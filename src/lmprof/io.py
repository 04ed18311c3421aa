"""Writes that never leave a half-written file: a temp file beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lmprof.paths import lock_path


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock on `path` (its file: paths.lock_path), one process or thread at a time.

    `filelock` rather than fcntl: it works on every platform and every file system that
    supports any locking (it falls back to lock files where flock is absent).
    """
    from filelock import FileLock

    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    ignore = lock.parent / ".gitignore"
    if not ignore.exists():  # `git status` of the user's project stays clean
        with contextlib.suppress(OSError):
            ignore.write_text("*\n")
    # thread_local=False and a fresh object per call: two threads of one process exclude each
    # other exactly as two processes do.
    with FileLock(str(lock), thread_local=False):
        yield
