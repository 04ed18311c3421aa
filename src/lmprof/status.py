"""How a run ended: its status, the exit code that carries it from the child to the sweep, and
which statuses are final. One home, so the run, the sweep and find-max cannot drift apart.

Deliberately free of torch: the sweep's parent process and `lmprof estimate` import it.
"""

from __future__ import annotations

import re
import sys

OK = "ok"
OOM = "oom"
DIVERGED = "diverged"
FAILED = "failed"
TIMEOUT = "timeout"  # only the sweep writes it: the child was killed at system.timeout_s
SKIPPED = "skipped"  # only the sweep writes it: this machine cannot run the config
INTERRUPTED = "interrupted"
# Never a row: a user's mistake found before any work; the run exits 2 and writes nothing.
USER_ERROR = "user_error"

STATUSES = (OK, OOM, DIVERGED, FAILED, TIMEOUT, SKIPPED, INTERRUPTED)

# The run's exit status for each way it can end (`lmprof run --help` documents them).
EXIT_CODES = {OK: 0, FAILED: 1, USER_ERROR: 2, OOM: 3, DIVERGED: 4, INTERRUPTED: 130}

# Resume policy. A row with a DONE status is the run's answer: a rerun skips it (--force reruns).
DONE = (OK, OOM)
# A last row with one of these is kept as it is: rerunning would most likely end the same way
# (the same loss blow-up, the same hour until the timeout); only --retry-failed reruns it. A
# `failed` run is retried on every rerun: a crash is what a fix (or a transient fault) changes.
KEPT = (DIVERGED, TIMEOUT)
# The sweep exits 0 when every run ends in one of these.
SUCCESS = (OK, OOM, SKIPPED)


def status_of_exit_code(code: int) -> str | None:
    """The status a child's exit code stands for (None: an exit code the run never uses)."""
    for status, c in EXIT_CODES.items():
        if c == code:
            return status
    return None


# What running out of memory looks like in an exception's message or in a log: PyTorch's
# allocator, the C library, C++'s allocator, Python's MemoryError, and the loader when
# RLIMIT_AS leaves no room to map a shared library.
_OOM_TEXT = re.compile(
    r"MemoryError|out of memory|can't allocate memory|Cannot allocate memory|std::bad_alloc|"
    r"OutOfMemoryError|failed to map segment"
)


def text_shows_oom(text: str) -> bool:
    """Whether a message or a log excerpt reports running out of memory."""
    return bool(_OOM_TEXT.search(text))


def is_oom(exc: BaseException) -> bool:
    """Whether an exception is an out-of-memory error (CUDA's, the host's, or one wrapped in a
    RuntimeError by a kernel or a library)."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # never imported here: a run that raised one has it
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and text_shows_oom(str(exc))
