"""Reading results.csv and the per-run details CSVs into typed runs and curves.

Cells are strings and may be empty; everything numeric goes through `num`, which turns empty,
non-numeric and non-finite cells into None so a plot never draws a NaN as a value.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmprof.columns import EVAL_COLUMNS
from lmprof.errors import UserError
from lmprof.paths import eval_csv, metrics_csv
from lmprof.profiling.energy import ENERGY_COLUMNS
from lmprof.results import ColumnGroup, read_table


def _declared(name: str, columns: ColumnGroup | tuple[str, ...]) -> str:
    """A column the analysis reads by name, checked against its producer's declaration so a
    rename there fails here at import, not as a silently empty plot."""
    if name not in columns:
        raise AssertionError(f"{name!r} is not a declared column")
    return name


JOULES_PER_TOKEN = _declared("joules_per_token", ENERGY_COLUMNS)
TOKENS_PER_KWH = _declared("tokens_per_kwh", ENERGY_COLUMNS)
GPU_HOUR_USD = _declared("gpu_hour_usd", ENERGY_COLUMNS)
USD_PER_MILLION_TOKENS = _declared("usd_per_million_tokens", ENERGY_COLUMNS)
# The evaluation CSV's columns, as lmprof.columns declares them.
EVAL_LOSS = _declared("eval_loss", EVAL_COLUMNS)
TOKENS_SEEN = _declared("tokens_seen", EVAL_COLUMNS)
ELAPSED_SEC = _declared("elapsed_sec", EVAL_COLUMNS)

# Without these a row cannot be placed on any plot or table.
REQUIRED_COLUMNS = ("run_name", "sequence_length", "batch_size")
# Statuses whose measurements are real (a diverged run still ran every step at full speed).
MEASURED = ("ok", "diverged")
FAILED = ("oom", "failed", "timeout", "interrupted")
_FALSE = ("", "false", "none", "no", "off", "0")


def num(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _flag(text: str | None) -> bool:
    return (text or "").strip().lower() not in _FALSE


@dataclass
class Run:
    """One row of results.csv with the fields the analysis reads, parsed."""

    row: dict[str, str]
    line: int  # the row's line in results.csv (header is line 1), for the report
    # The replicate runs (repeats, seeds) this one stands for; the row holds their medians.
    members: list[Run] = field(default_factory=list)

    def get(self, column: str) -> str:
        return (self.row.get(column) or "").strip()

    def num(self, column: str) -> float | None:
        return num(self.get(column))

    def pos(self, column: str) -> float | None:
        """A measurement or sweep value: zero or negative means not recorded (a CPU run's GPU
        memory, a killed run's throughput) and must not be drawn or divided by."""
        value = self.num(column)
        return value if value is not None and value > 0 else None

    @property
    def name(self) -> str:
        return self.get("run_name")

    @property
    def tag(self) -> str:
        return self.get("tag")

    @property
    def status(self) -> str:
        # The seed's writer only ever wrote finished runs, and had no status column.
        return self.get("status").lower() or "ok"

    @property
    def measured(self) -> bool:
        return self.status in MEASURED

    @property
    def precision(self) -> str:
        return self.get("precision").lower() or ("fp16" if _flag(self.get("fp16")) else "fp32")

    @property
    def attention(self) -> str:
        value = self.get("attention").lower()
        if value:
            return value
        # The seed's rows: its non-flash model ran nn.MultiheadAttention, an explicit mask.
        return "flash" if _flag(self.get("flash_attention")) else "sdpa_mask"

    @property
    def checkpointing(self) -> str:
        value = (self.get("checkpointing") or self.get("grad_checkpoint")).lower()
        if value in _FALSE:
            return "none"
        return "full" if value in ("true", "yes", "on", "1") else value

    @property
    def compiled(self) -> bool:
        return _flag(self.get("compile"))

    @property
    def gpus(self) -> int:
        n = self.pos("ddp_gpus") or self.pos("gpu_count")
        return int(n) if n else 1

    @property
    def tokens_per_sec(self) -> float | None:
        # Steady state leaves out warm-up and compile steps; the seed's whole-run average is the
        # fallback for rows that lack it.
        return self.pos("steady_tokens_per_sec") or self.pos("throughput")

    @property
    def mem_gb(self) -> float | None:
        # A CPU run has no GPU allocator: its peak resident memory stands in (labelled as such).
        return self.pos("peak_gpu_mem_gb") or self.pos("peak_host_mem_gb")

    @property
    def mfu(self) -> float | None:
        return self.pos("mfu")

    @property
    def identity(self) -> tuple[str, str]:
        return (self.tag, self.get("config_hash") or self.name)

    @property
    def group_key(self) -> tuple[str, str]:
        """Replicates share it: the tag and the name without its _rep<k>/_seed<s> suffixes."""
        return (self.tag, _REPLICATE_SUFFIX.sub("", self.name))

    @property
    def replicates(self) -> list[Run]:
        return self.members or [self]

    @property
    def noisy(self) -> bool:
        return _flag(self.get("noisy"))


_REPLICATE_SUFFIX = re.compile(r"(_seed-?\d+|_rep\d+)+$")
# Columns whose replicate median the representative row holds.
MEDIAN_COLUMNS = (
    "steady_tokens_per_sec",
    "steady_tokens_per_sec_per_gpu",
    "throughput",
    "peak_gpu_mem_gb",
    "peak_host_mem_gb",
    "mfu",
    "eval_loss",
    "eval_perplexity",
    "training_time_sec",
    JOULES_PER_TOKEN,
    TOKENS_PER_KWH,
    USD_PER_MILLION_TOKENS,
)


def _representative(group: list[Run]) -> Run:
    """One run standing for replicates: the first one's row with the measured runs' medians."""
    from lmprof.stats import median

    first = group[0]
    if len(group) == 1:
        return first
    row = dict(first.row)
    done = [r for r in group if r.measured]
    for col in MEDIAN_COLUMNS:
        values = [v for r in done if (v := r.num(col)) is not None]
        if values:
            row[col] = repr(median(values))
    if done:
        row["status"] = "ok" if any(r.status == "ok" for r in done) else done[0].status
    row["run_name"] = _REPLICATE_SUFFIX.sub("", first.name) or first.name
    return Run(row, first.line, list(group))


@dataclass
class Repeat:
    """A configuration that has several rows; `used` is the one the analysis reads."""

    name: str
    tag: str
    lines: list[int]
    statuses: list[str]
    used: int


@dataclass
class Table:
    runs: list[Run]  # one per configuration (replicates merged), in first-seen order
    n_rows: int
    columns: list[str]
    repeats: list[Repeat] = field(default_factory=list)
    all_runs: list[Run] = field(default_factory=list)  # every replicate, latest row each
    superseded: list[Run] = field(default_factory=list)  # a run name's older configuration

    def tagged(self, *prefixes: str) -> list[Run]:
        return [r for r in self.runs if any(r.tag.startswith(p) for p in prefixes)]

    @property
    def tags(self) -> list[str]:
        return list(dict.fromkeys(r.tag for r in self.runs))


def _read(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise UserError(f"no results table at {path}: run `lmprof sweep` first, or pass --results")
    if path.is_dir():
        raise UserError(f"{path} is a directory; --results takes the results.csv file")
    header, rows = read_table(path)  # its one line for a damaged table (extra cells, encoding)
    if not header:
        raise UserError(f"{path} is empty: no header and no runs")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise UserError(
            f"{path} is not an lmprof results table: missing column(s) {', '.join(missing)}"
        )
    if not rows:
        raise UserError(f"{path} has a header but no runs")
    return rows


def load_table(path: str | Path) -> Table:
    """The runs of a results table, one per configuration: the latest ok row of each."""
    path = Path(path)
    rows = _read(path)
    groups: dict[tuple[str, str], list[Run]] = {}
    for i, row in enumerate(rows, start=2):
        run = Run({k: v or "" for k, v in row.items()}, i)
        groups.setdefault(run.identity, []).append(run)
    runs, repeats = [], []
    for group in groups.values():
        ok = [r for r in group if r.status == "ok"]
        # Rows are appended in time order, so the last one is the latest.
        used = (ok or group)[-1]
        runs.append(used)
        if len(group) > 1:
            repeats.append(
                Repeat(
                    used.name,
                    used.tag,
                    [r.line for r in group],
                    [r.status for r in group],
                    used.line,
                )
            )
    # A run name whose configuration changed since: only its latest configuration is current
    # (an earlier attempt's failure must not be drawn on today's plots).
    latest: dict[tuple[str, str], int] = {}
    for r in runs:
        latest[(r.tag, r.name)] = max(latest.get((r.tag, r.name), 0), max_line(groups[r.identity]))
    current = [r for r in runs if max_line(groups[r.identity]) == latest[(r.tag, r.name)]]
    kept = {id(r) for r in current}  # by identity: `in` on the list compared whole rows
    superseded = [r for r in runs if id(r) not in kept]
    by_key: dict[tuple[str, str], list[Run]] = {}
    for r in current:
        by_key.setdefault(r.group_key, []).append(r)
    merged = [_representative(g) for g in by_key.values()]
    return Table(merged, len(rows), list(rows[0].keys()), repeats, current, superseded)


def max_line(group: list[Run]) -> int:
    return max(r.line for r in group)


@dataclass
class Curve:
    """Per-step training metrics and evaluation points of one run (NaN where not logged)."""

    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]

    def col(self, which: str, column: str) -> np.ndarray | None:
        data = self.train if which == "train" else self.eval
        values = data.get(column)
        if values is None or not np.isfinite(values).any():
            return None
        return values


def _read_numeric_csv(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error):
        return {}
    if not rows:
        return {}
    cols: dict[str, np.ndarray] = {}
    for key in rows[0]:
        if key is None:
            continue
        values = [num(r.get(key)) for r in rows]
        cols[key] = np.array([np.nan if v is None else v for v in values], dtype=float)
    return cols


def read_curve(details_dir: Path, run_name: str) -> Curve | None:
    """The run's details CSVs, or None when it logged no step."""
    train = _read_numeric_csv(metrics_csv(details_dir, run_name))
    evals = _read_numeric_csv(eval_csv(details_dir, run_name))
    # The seed logged loss but older rows may lack perplexity; it is exp(loss) either way.
    for data, loss, ppl in ((train, "loss", "perplexity"), (evals, "eval_loss", "eval_perplexity")):
        if loss in data and ppl not in data:
            with np.errstate(over="ignore"):
                data[ppl] = np.exp(data[loss])
    if "step" not in train or not np.isfinite(train["step"]).any():
        return None
    return Curve(train, evals)
