"""The one results writer: a row per run in results.csv, appended atomically.

Every append takes a lock, reads the table, adds the row and replaces the file by rename, so
two processes appending at once never interleave, a kill never leaves a torn row, and a row with
new columns widens the table without corrupting earlier rows (their new cells stay empty).
"""

from __future__ import annotations

import csv
import functools
import importlib
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmprof.errors import UserError
from lmprof.io import atomic_write_text, file_lock


@dataclass(frozen=True)
class ColumnGroup:
    """Columns one module produces, declared in that module: the CSV schema is the union of the
    groups listed in PRODUCERS, and a test checks that every cell a run writes is declared."""

    name: str
    meaning: str
    columns: tuple[str, ...]
    # Families named at run time (one column per phase, per kernel group): regexes.
    patterns: tuple[str, ...] = ()

    def declares(self, column: str) -> bool:
        return column in self.columns or any(re.fullmatch(p, column) for p in self.patterns)

    __contains__ = declares


# The modules whose `*_COLUMNS` groups make up the table, in the order their columns appear
# after the seed's. Imported lazily: most of them need torch, the analysis does not.
PRODUCERS = (
    "lmprof.columns",
    "lmprof.train.run",
    "lmprof.train.timing",
    "lmprof.profiling.flops",
    "lmprof.profiling.memory_model",
    "lmprof.train.instruments",
    "lmprof.profiling.energy",
    "lmprof.environment",
)

# The seed's columns, in the seed's order, first: tools written for the seed's results.csv read
# ours. They are produced by the groups like any other column.
SEED_COLUMNS = (
    "run_name",
    "total_params_m",
    "sequence_length",
    "batch_size",
    "fp16",
    "grad_checkpoint",
    "flash_attention",
    "ddp_gpus",
    "training_time_sec",
    "throughput",
    "peak_gpu_mem_gb",
    "avg_perplexity",
    "avg_accuracy",
    "eval_loss",
    "eval_perplexity",
    "eval_accuracy",
)


@functools.cache
def groups() -> tuple[ColumnGroup, ...]:
    """Every declared column group, in table order."""
    found: list[ColumnGroup] = []
    for module in PRODUCERS:
        mod = importlib.import_module(module)
        found += [
            v for k, v in vars(mod).items() if k.endswith("_COLUMNS") and isinstance(v, ColumnGroup)
        ]
    return tuple(found)


def columns() -> tuple[str, ...]:
    """The table's declared columns in order: the seed's, then each group's."""
    cols = list(SEED_COLUMNS)
    for g in groups():
        cols += [c for c in g.columns if c not in cols]
    return tuple(cols)


def producer_of(column: str) -> ColumnGroup | None:
    return next((g for g in groups() if g.declares(column)), None)


def cell(value: Any) -> str:
    """A value as results.csv writes it (the name check compares a config with a row by it)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return (
            f"{value:.6g}"
            if abs(value) < 1e-3 or abs(value) >= 1e7
            else f"{value:.6f}".rstrip("0").rstrip(".")
        )
    return str(value)


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """All rows of a results table; an absent file is an empty table."""
    p = Path(path)
    if not p.exists():
        return []
    # A damaged table (a NUL byte, another encoding, a folder) is the user's to fix: one line,
    # and it is never rewritten (append_row reads it first, so it stops there too). A torn
    # last line or foreign columns read fine: their cells are kept as they are.
    try:
        with open(p, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"'{p}' is not a readable CSV table ({exc}); move it away") from None
    except OSError as exc:
        raise UserError(f"'{p}' cannot be read: {exc.strerror or exc}") from None


def _ordered(existing: Sequence[str], new: Sequence[str]) -> list[str]:
    # The seed's columns are always there (empty where a run has no value, e.g. GPU memory on
    # a CPU), so tools written for the seed's results.csv read ours.
    cols = [c for c in columns() if c in SEED_COLUMNS or c in existing or c in new]
    cols += [c for c in existing if c not in cols]
    cols += [c for c in new if c not in cols]
    return cols


def append_row(path: str | Path, row: Mapping[str, Any]) -> None:
    """Append one row to the table at `path`, atomically and under a lock."""
    path = Path(path)
    with file_lock(path):
        rows = read_rows(path)
        header = list(rows[0].keys()) if rows else []
        if not header and path.exists() and path.stat().st_size:
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
        cols = _ordered(header, list(row.keys()))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (v if v is not None else "") for k, v in r.items() if k in cols})
        writer.writerow({k: cell(v) for k, v in row.items()})
        atomic_write_text(path, buf.getvalue())
