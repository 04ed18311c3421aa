"""Reading results.csv and the per-run details CSVs into typed runs and curves.

Cells are strings and may be empty; everything numeric goes through `num`, which turns empty,
non-numeric and non-finite cells into None so a plot never draws a NaN as a value.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmprof.columns import CONFIG_COLUMNS, EVAL_COLUMNS
from lmprof.errors import UserError
from lmprof.identity import REPLICATE_SUFFIX, run_key
from lmprof.paths import attempt_of, eval_csv, metrics_csv, stem
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
    # Every row of this run (lmprof.identity.run_key), in file order: reruns, resumes, sweeps.
    rows: list[Run] = field(default_factory=list)
    label: str = ""  # the name shown, where one name holds several configurations
    owns_files: bool = True  # False: the details under its name are another row's

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
        return self.label or self.get("run_name")

    @property
    def stem(self) -> str | None:
        """The file stem of the details this row wrote (lmprof.paths), None for none."""
        attempt = attempt_of(self.row)
        if not attempt or not self.owns_files:
            return None
        return stem(self.get("run_name"), attempt)

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
    def key(self) -> tuple[str, ...]:
        """The run this row is of: lmprof.identity.run_key, or its tag, name and settings for
        the seed's rows, which have no hash."""
        found = run_key(self.row)
        if found is not None:
            return found
        return ("", self.tag, self.get("run_name"), *(self.get(c) for c in LEGACY_SETTINGS))

    @property
    def config_key(self) -> tuple[str, ...]:
        """Replicates (repeats, seeds) of one configuration share it: the tag and config hash;
        for rows written before runs had a seed column, the name without its _rep<k>/_seed<s>
        and the settings the row shows (one name may hold two configurations)."""
        if run_key(self.row) is not None and self.get("seed"):
            return ("config", self.tag, self.get("config_hash"))
        base = REPLICATE_SUFFIX.sub("", self.get("run_name"))
        return ("legacy", self.tag, base, *(self.get(c) for c in LEGACY_SETTINGS))

    @property
    def replicates(self) -> list[Run]:
        return self.members or [self]

    @property
    def noisy(self) -> bool:
        return _flag(self.get("noisy"))

    @property
    def sweep(self) -> str:
        return self.get("sweep_id")


# What tells two configurations of one name apart in a row written before runs had a seed.
LEGACY_SETTINGS = tuple(
    c
    for c in CONFIG_COLUMNS.columns
    if c not in ("run_name", "tag", "config_hash", "seed", "repeat", "attempt")
)
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
    name = first.get("run_name")
    row["run_name"] = REPLICATE_SUFFIX.sub("", name) or name
    return Run(row, first.line, list(group), owns_files=False)


@dataclass
class Merged:
    """Rows the analysis reads as one run (a rerun, a resumed run, another sweep, another
    name); `used` is the line it reads."""

    run: Run
    lines: list[int]
    statuses: list[str]
    names: list[str]
    used: int


@dataclass
class Table:
    runs: list[Run]  # one per configuration (replicates merged), in first-seen order
    n_rows: int
    columns: list[str]
    merged: list[Merged] = field(default_factory=list)  # runs with more than one row
    all_runs: list[Run] = field(default_factory=list)  # every replicate, its row in use
    shared_names: list[str] = field(default_factory=list)  # names holding two configurations

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


def _used(rows: list[Run]) -> Run:
    """The row a run is read from: its latest ok one, else its latest measured one, else its
    latest (rows are appended in time order): a later skipped or failed attempt never hides
    an earlier measurement of the same run."""
    for wanted in (("ok",), MEASURED):
        found = [r for r in rows if r.status in wanted]
        if found:
            return found[-1]
    return rows[-1]


def load_table(path: str | Path) -> Table:
    """The runs of a results table, one per configuration. Rows are one run when
    lmprof.identity.run_key says so (whatever their names); replicates of a configuration are
    merged into their medians; configurations are never merged, even under one name."""
    path = Path(path)
    rows = _read(path)
    by_run: dict[tuple[str, ...], list[Run]] = {}
    for i, row in enumerate(rows, start=2):
        run = Run({k: v or "" for k, v in row.items()}, i)
        by_run.setdefault(run.key, []).append(run)
    _own_legacy_files([r for g in by_run.values() for r in g])
    current, merged = [], []
    for group in by_run.values():
        used = _used(group)
        used.rows = group
        current.append(used)
        if len(group) > 1:
            names = list(dict.fromkeys(r.get("run_name") for r in group))
            statuses = [r.status for r in group]
            merged.append(Merged(used, [r.line for r in group], statuses, names, used.line))
    by_config: dict[tuple[str, ...], list[Run]] = {}
    for r in current:
        by_config.setdefault(r.config_key, []).append(r)
    configs = [_representative(g) for g in by_config.values()]
    shared = _label_shared_names(configs)
    return Table(configs, len(rows), list(rows[0].keys()), merged, current, shared)


def _own_legacy_files(runs: list[Run]) -> None:
    """A row without an `attempt` cell wrote its name's only files, which the next run of the
    name wrote over: they are the latest such row's alone (a skipped row wrote none)."""
    last: dict[str, Run] = {}
    for r in sorted(runs, key=lambda r: r.line):
        if not r.get("attempt") and attempt_of(r.row):
            last[r.get("run_name")] = r
    for r in runs:
        if not r.get("attempt"):
            r.owns_files = last.get(r.get("run_name")) is r


def _label_shared_names(configs: list[Run]) -> list[str]:
    """Configurations of one tag that share a name get their hash (or line) beside it."""
    count: dict[tuple[str, str], int] = {}
    for r in configs:
        count[(r.tag, r.name)] = count.get((r.tag, r.name), 0) + 1
    shared = []
    for r in configs:
        if count[(r.tag, r.name)] > 1:
            shared.append(r.name)
            h = r.get("config_hash")
            label = f"{r.name} [{h[:6]}]" if h else f"{r.name} [line {r.line}]"
            r.label = label
            for m in r.replicates:
                m.label = m.label or label
    return list(dict.fromkeys(shared))


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


def read_curve(details_dir: Path, run_stem: str) -> Curve | None:
    """The run's details CSVs (lmprof.paths.stem names them), or None when it logged no step."""
    train = _read_numeric_csv(metrics_csv(details_dir, run_stem))
    evals = _read_numeric_csv(eval_csv(details_dir, run_stem))
    # The seed logged loss but older rows may lack perplexity; it is exp(loss) either way.
    for data, loss, ppl in ((train, "loss", "perplexity"), (evals, "eval_loss", "eval_perplexity")):
        if loss in data and ppl not in data:
            with np.errstate(over="ignore"):
                data[ppl] = np.exp(data[loss])
    if "step" not in train or not np.isfinite(train["step"]).any():
        return None
    return Curve(train, evals)
