"""The row of an attempt whose child wrote none: its status told from how the child ended."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

from lmprof.columns import config_row, now
from lmprof.status import (
    DIVERGED,
    EXIT_CODES,
    FAILED,
    INTERRUPTED,
    OOM,
    TIMEOUT,
    USER_ERROR,
    status_of_exit_code,
    text_shows_oom,
)
from lmprof.sweep.plan import RunPlan


def read_log_tail(path: Path, start: int, size: int = 16384) -> str:
    """The last `size` bytes of the child's log, never before `start` (the sweep's header)."""
    with contextlib.suppress(OSError), open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        f.seek(max(start, end - size))
        return f.read().decode(errors="replace")
    return ""


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def classify(
    returncode: int, ended_by: str, log_tail: str, oom_killed: bool, timeout_s: float = 0
) -> tuple[str, str]:
    """(status, detail) of a child that wrote no row."""
    last = last_line(log_tail)
    if ended_by == "timeout":
        return TIMEOUT, f"no result within system.timeout_s={timeout_s:g}s"
    if ended_by == "interrupted":
        return INTERRUPTED, "stopped by the user (Ctrl-C)"
    if oom_killed and returncode != 0:
        return OOM, "killed by the kernel's out-of-memory killer"
    if returncode < 0:
        name = (
            signal.Signals(-returncode).name
            if -returncode in signal.valid_signals()
            else str(-returncode)
        )
        hint = " (the kernel's out-of-memory killer?)" if -returncode == signal.SIGKILL else ""
        return FAILED, f"killed by {name}{hint}" + (f"; log: {last}" if last else "")
    if returncode == 0:
        return FAILED, "exited 0 without writing its results row" + (
            f"; log: {last}" if last else ""
        )
    said = status_of_exit_code(returncode)
    # The log's end only: an OOM the run caught and survived earlier is not why it ended.
    if said == OOM or text_shows_oom("\n".join(log_tail.splitlines()[-40:])):
        return OOM, last or "out of memory"
    if said == DIVERGED:
        return DIVERGED, last
    if said == INTERRUPTED:
        return INTERRUPTED, last or "interrupted"
    if said == USER_ERROR:
        return FAILED, last or f"invalid input (exit code {EXIT_CODES[USER_ERROR]})"
    return FAILED, f"exit code {returncode}" + (f": {last}" if last else "")


def parent_row(
    plan: RunPlan, status: str, detail: str, elapsed: float | None, started_at: str
) -> dict[str, Any]:
    """The row for an attempt the child could not record: the config's columns and the status."""
    row = config_row(plan.cfg)
    row.update(
        {
            "run_name": plan.name,
            "tag": plan.tag,
            "config_hash": plan.config_hash,
            "status": status,
            "status_detail": detail,
            "started_at": started_at,
            "finished_at": now(),
        }
    )
    if elapsed is not None:
        row["training_time_sec"] = round(elapsed, 3)
    return row
