"""The one place lmprof writes files: whole files atomically (a temp file beside the target,
then rename), streams (logs, per-step CSVs) opened without following a symbolic link, files a
library writes itself given a path (`atomic_output`), and folders built whole, then renamed
into place (`replace_dir`: the token cache, checkpoints).

Every failure to write (read-only folder, full disk, a file where a folder belongs, a planted
link) is an `OutputError`: one line naming the path, never a traceback, and never a half-written
file (the temp file is removed). A rename replaces a link planted at the target instead of
writing through it; a stream refuses one (O_NOFOLLOW).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from lmprof.errors import OutputError
from lmprof.paths import lock_path


def output_error(path: str | Path, exc: OSError) -> OutputError:
    """The one line for a failed write of `path`."""
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOTDIR: "a file stands where a folder belongs",
        errno.EISDIR: "it is a directory",
        errno.ELOOP: "it is a symbolic link (lmprof does not write through links)",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return OutputError(f"cannot write '{path}': {reason}")


def existing_mode(path: str | Path) -> int | None:
    """The permission bits of the file at `path` that a write would replace (None: no file, or a
    link, which is replaced and not followed). One its owner made read-only (no owner write
    bit) is refused: lmprof keeps the owner's choice, even as root, who could write it anyway."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    mode = stat.S_IMODE(st.st_mode)
    if not mode & stat.S_IWUSR:
        raise OutputError(
            f"cannot write '{path}': it is read-only (mode {mode:o}); lmprof does not replace a "
            "file its owner made read-only (chmod u+w it, or choose another output folder)"
        )
    return mode


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte to `fd` (one seam, so tests can make the disk full)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` in one rename: readers see the old file or the new one."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        # The owner's mode where the file exists (a private 600 results.csv stays private);
        # else what the umask allows (mkstemp makes 0600; results are for everyone to read).
        mode = existing_mode(path)
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
        os.replace(tmp, path)  # replaces a link planted at `path`; never writes through it
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            raise output_error(path, exc) from None
        raise


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temp path beside `path` for a library that writes a file itself, given a path
    (torch.profiler's Chrome trace, torch's memory snapshot): renamed to `path` when the block
    ends, removed when it fails, so a crash or kill mid-write leaves the old file or none."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise output_error(path, exc) from None
    tmp = Path(name)
    try:
        yield tmp
        mode = existing_mode(path)
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise output_error(path, exc) from None
        raise


def replace_dir(tmp: str | Path, path: str | Path) -> None:
    """Publish a folder built whole in `tmp` (the token cache, a checkpoint: files written
    inside it by numpy or torch.distributed.checkpoint) as `path` by renames: readers see the
    old folder or the new one, never a part. An old one is moved aside first, then deleted."""
    tmp, path = Path(tmp), Path(path)
    if path.exists():
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: str | Path) -> None:
    """Make a rename in `path` durable (best effort: not every file system can)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _NoFollowFile:
    """A text stream on an fd opened with O_NOFOLLOW; write errors become OutputError."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._f: IO[str] = os.fdopen(fd, "w", newline="", encoding="utf-8")

    def write(self, text: str) -> int:
        try:
            n = self._f.write(text)
            self._f.flush()
            return n
        except OSError as exc:
            raise output_error(self.path, exc) from None

    def fileno(self) -> int:
        return self._f.fileno()

    def tell(self) -> int:
        return self._f.tell()

    def flush(self) -> None:
        self.write("")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._f.close()

    def __enter__(self) -> _NoFollowFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_stream(path: str | Path, append: bool = False) -> _NoFollowFile:
    """A file written as it goes (a log, a per-step CSV): truncated or appended, never through a
    symbolic link planted at `path`, each write flushed."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    flags |= os.O_APPEND if append else os.O_TRUNC
    existing_mode(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        raise output_error(path, exc) from None
    return _NoFollowFile(path, fd)


def append_text(path: str | Path, text: str) -> None:
    """Append `text` to a stream file (one flushed write: a kill cuts at most its last line)."""
    with open_stream(path, append=True) as f:
        f.write(text)


def probe_writable(folder: str | Path) -> None:
    """Create and remove a file in `folder`: the one test that a folder takes writes (the mode
    bits do not say it for root, a read-only mount or a full disk)."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".lmprof-probe.", suffix=".tmp", dir=folder)
        try:
            _write_all(fd, b"lmprof")
        finally:
            os.close(fd)
    except OSError as exc:
        raise output_error(folder, exc) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _lock_file(path: str | Path) -> Path:
    """The lock file of `path`, its hidden folder made, and told to git to ignore itself (so
    `git status` of the user's project stays clean)."""
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    ignore = lock.parent / ".gitignore"
    if not ignore.exists():
        with contextlib.suppress(OSError):
            ignore.write_text("*\n")
    return lock


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock on `path` (its file: paths.lock_path), one process or thread at a time.

    `filelock` rather than fcntl: it works on every platform and every file system that
    supports any locking (it falls back to lock files where flock is absent).
    """
    from filelock import FileLock

    lock = _lock_file(path)
    # thread_local=False and a fresh object per call: two threads of one process exclude each
    # other exactly as two processes do.
    with FileLock(str(lock), thread_local=False):
        yield


@contextlib.contextmanager
def claim(path: str | Path) -> Iterator[int | None]:
    """Claim `path` (its lock file: paths.lock_path) if no one else does: yields the locked
    file descriptor, held until the block ends, or None at once when another process holds it.

    The claim is an flock(2) on an open file, which belongs to that open file and not to this
    process: a child given the descriptor (`subprocess.Popen(pass_fds=...)`) keeps the claim for
    as long as it lives, so a sweep killed by SIGKILL leaves its running child holding it, and
    a rerun does not start the same run beside it. The OS drops it when the last holder exits,
    so no claim goes stale. The block's end closes this process's descriptor only: unlocking
    would release a child's claim too. (flock: the sweep's process handling is POSIX already.)
    """
    import fcntl

    lock = _lock_file(path)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise output_error(lock, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
        else:
            yield fd
    finally:
        os.close(fd)
