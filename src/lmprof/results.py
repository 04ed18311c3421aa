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


def _cells(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows as lists of cells): the one reader of a table's text; an absent file is an
    empty table.

    A damaged table (a NUL byte, another encoding, a folder, a row with more cells than the
    header has names) is the user's to fix: one line, and it is never rewritten (append_rows
    reads it first, so it stops there too). A torn last line or foreign columns read fine: their
    cells are kept as they are. A UTF-8 byte order mark (Excel's "CSV UTF-8") is read.
    """
    if not path.exists():
        return [], []
    if path.is_dir():
        raise UserError(f"'{path}' is a folder where lmprof writes a file: move it away")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            rows = []
            width = len(header)
            for cells in reader:
                if not cells:
                    continue  # a blank line, as csv.DictReader skips it
                if len(cells) > width:
                    # A cell without a column name cannot be placed; rewritten under a nameless
                    # column it would be read as a column called "" by every tool after us.
                    raise UserError(
                        f"'{path}' line {reader.line_num} has {len(cells)} cells but the header "
                        f"names {width} columns; remove the extra cells or move the file away"
                    )
                rows.append(cells)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"'{path}' is not a readable CSV table ({exc}); move it away") from None
    except OSError as exc:
        raise UserError(f"'{path}' cannot be read: {exc.strerror or exc}") from None
    return header, rows


def read_table(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a results table (`_cells`' rules); a short row (a torn last line)
    reads as csv.DictReader reads it: its missing cells are None."""
    header, rows = _cells(Path(path))
    return header, [
        dict(zip(header, r, strict=False)) | dict.fromkeys(header[len(r) :]) for r in rows
    ]


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """All rows of a results table (read_table's rules)."""
    return read_table(path)[1]


def _ordered(existing: Sequence[str], new: Sequence[str]) -> list[str]:
    # The seed's columns are always there (empty where a run has no value, e.g. GPU memory on
    # a CPU), so tools written for the seed's results.csv read ours. Sets: a table has hundreds
    # of columns, and list membership made this quadratic in them.
    have, seed = set(existing) | set(new), set(SEED_COLUMNS)
    cols = [c for c in columns() if c in seed or c in have]
    placed = set(cols)
    for c in (*existing, *new):
        if c not in placed:
            cols.append(c)
            placed.add(c)
    return cols


def append_row(path: str | Path, row: Mapping[str, Any]) -> None:
    """Append one row to the table at `path`, atomically and under a lock."""
    append_rows(path, [row])


def append_rows(path: str | Path, new_rows: Sequence[Mapping[str, Any]]) -> None:
    """Append rows to the table at `path` in one atomic rewrite, under a lock. Linear in the
    table's cells: the rows are copied as lists, remapped only when the header widens."""
    path = Path(path)
    with file_lock(path):
        header, rows = _cells(path)
        cols = _ordered(header, list(dict.fromkeys(k for row in new_rows for k in row)))
        width = len(header)
        if cols != header:
            # A widened table: each kept cell moves to its column's new place, new ones empty.
            at = {c: i for i, c in enumerate(header)}
            where = [at.get(c) for c in cols]
            rows = [[r[i] if i is not None and i < len(r) else "" for i in where] for r in rows]
        else:
            # A torn last line keeps its cells, padded; a row with foreign extra cells loses them.
            rows = [r if len(r) == width else (r + [""] * width)[:width] for r in rows]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(cols)
        writer.writerows(rows)
        writer.writerows([cell(row.get(c)) if c in row else "" for c in cols] for row in new_rows)
        atomic_write_text(path, buf.getvalue())
