"""How long this process has run: the one clock of a run's end-to-end time.

The start is read once, when lmprof is first imported (`lmprof/__init__.py` imports this
module first, so any entry point reads it): on Linux, the process's own start time from
/proc/self/stat (field 22, in clock ticks since boot), so the interpreter's start and every
import before lmprof's count too; elsewhere, the moment of that first import. Measured on the
clock the kernel stamps the start with (CLOCK_BOOTTIME), so the two agree.
"""

from __future__ import annotations

import os
import time

_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


def _now() -> float:
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


def _process_start() -> tuple[float, str]:
    imported = _now()
    if _BOOTTIME is None:
        return imported, "lmprof's first import"
    try:
        with open("/proc/self/stat", "rb") as f:
            # The command name (field 2) may hold spaces and parentheses: split after its ")".
            fields = f.read().rsplit(b")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return imported, "lmprof's first import"
    # A start after now, or days before (a clock that is not the kernel's): not believable.
    if not 0 <= imported - started < 86_400:
        return imported, "lmprof's first import"
    return started, "/proc/self/stat"


STARTED, STARTED_FROM = _process_start()


def since_process_start() -> float:
    """Seconds since this process started (see the module docstring for where from)."""
    return _now() - STARTED
