"""What a run writes as it goes: the log, the per-step and evaluation CSVs, the resolved config.

The layout is lmprof.paths.RunPaths'. Only rank 0 writes.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
from pathlib import Path

from lmprof.columns import EVAL_COLUMNS, METRICS_COLUMNS
from lmprof.config import RunConfig, save_config
from lmprof.io import append_text, atomic_write_text, open_stream
from lmprof.paths import LOG_CAPTURED_ENV, RunPaths
from lmprof.train.tracking import Tracking

# A log record with `extra={CONSOLE: False}` goes to the log file only (the progress bar shows
# the same on the console).
CONSOLE = "lmprof_console"


def _console_filter(record: logging.LogRecord) -> bool:
    return getattr(record, CONSOLE, True)


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


class _CsvLog:
    """A per-run CSV appended one flushed line at a time (a kill can cut only its last line)."""

    def __init__(self, path: Path, columns: tuple[str, ...], fresh: bool):
        self.path, self.columns = path, columns
        if fresh or not path.exists():
            atomic_write_text(path, ",".join(columns) + "\n")

    def append(self, row: dict) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([_fmt(row.get(c, "")) for c in self.columns])
        append_text(self.path, buf.getvalue())  # never through a planted link (lmprof.io)


class RunOutputs:
    def __init__(self, cfg: RunConfig, is_main: bool, resuming: bool = False):
        self.cfg, self.is_main = cfg, is_main
        self.paths = RunPaths.of(cfg)
        self.results_csv = self.paths.results_csv
        self.details_dir = self.paths.details_dir
        self.log_path = self.paths.log
        self.resuming = resuming
        self.metrics = self.evals = None
        # Built now, so a missing tracker package is one line before any data is read.
        self.tracking = Tracking.from_config(cfg, self.paths, is_main)

    def open(self) -> None:
        """Create the run's files; called once setup has succeeded, so a run stopped by a user's
        mistake (a missing data path, ...) leaves nothing behind."""
        if not self.is_main:
            return
        fresh = not self.resuming
        self.metrics = _CsvLog(self.paths.metrics_csv, METRICS_COLUMNS, fresh)
        self.evals = _CsvLog(self.paths.eval_csv, EVAL_COLUMNS, fresh)
        save_config(self.cfg, self.paths.config_yaml)
        self.tracking.start()

    def log_metrics(self, point: dict) -> None:
        if self.metrics:
            self.metrics.append(point)
        self.tracking.log("train", point["step"], point)

    def log_eval(self, point: dict) -> None:
        if self.evals:
            self.evals.append(point)
        self.tracking.log("eval", point["step"], point)

    def log_test(self, step: int, values: dict) -> None:
        self.tracking.log("test", step, values)

    def finish(self, row: dict) -> None:
        """The run's summary row to the trackers (after it is in results.csv)."""
        self.tracking.finish(row)

    def progress_bar(self, total: int, initial: int = 0):
        """A tqdm bar on an interactive terminal; log lines otherwise (files, sweeps)."""
        if not (self.is_main and self.cfg.logging.progress and sys.stderr.isatty()):
            return None
        from tqdm import tqdm

        return tqdm(
            total=total,
            initial=initial,
            desc=self.cfg.logging.run_name,
            unit="step",
            dynamic_ncols=True,
        )


def discard_log(cfg: RunConfig) -> None:
    """Close and delete the log file a run opened (it stopped on a user's mistake)."""
    logger = logging.getLogger("lmprof")
    for handler in list(logger.handlers):
        if isinstance(handler, _LogFile):
            handler.close()
            logger.removeHandler(handler)
            if cfg.checkpoint.resume != "auto":
                handler.path.unlink(missing_ok=True)


class _LogFile(logging.StreamHandler):
    """logs/<run>.log through lmprof.io (no link followed). A failed write (a full disk) is
    dropped: logging would print a traceback for every line, and the run's other writes
    report the same failure as one line."""

    def __init__(self, path: Path, append: bool) -> None:
        self.path = path
        super().__init__(open_stream(path, append=append))

    def handleError(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            super().close()


def setup_logging(cfg: RunConfig, is_main: bool) -> None:
    """Console logging, plus logs/<run>.log unless a sweep already captures our output."""
    logger = logging.getLogger("lmprof")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    console.addFilter(_console_filter)
    logger.addHandler(console)
    if is_main and not os.environ.get(LOG_CAPTURED_ENV):
        path = RunPaths.of(cfg).log
        # A resumed run continues its log; a fresh one starts it anew.
        fh = _LogFile(path, append=cfg.checkpoint.resume == "auto")
        fh.setFormatter(fmt)
        logger.addHandler(fh)


def _num(row: dict, key: str) -> float | None:
    v = row.get(key)
    return float(v) if isinstance(v, int | float) and v == v else None


def _rate(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.0f}"


def _time_line(row: dict) -> str:
    """The whole run's time beside the steady one, and where the difference went."""
    wall, steady = _num(row, "wall_time_sec"), _num(row, "steady_time_sec")
    if wall is None:
        return "  time: n/a"
    line = f"  time: {wall:.1f} s end to end (process start to this row)"
    if steady is not None:
        line += f", {steady:.1f} s of steps at the steady step time"
    parts = [
        (name, _num(row, key))
        for name, key in (
            ("startup", "startup_sec"),
            ("compile", "compile_time_sec"),
            ("training", "training_time_sec"),
            ("evaluation", "eval_time_sec"),
        )
    ]
    # compile 0: not compiled (or nothing to say).
    known = [(name, v) for name, v in parts if v is not None and (name != "compile" or v > 0)]
    if known:
        # compile_time_sec lies inside training_time_sec (the first step's extra time).
        rest = wall - sum(v for name, v in known if name != "compile")
        shown = ", ".join(f"{name} {v:.1f}" for name, v in known)
        line += f"; {shown}, the rest {rest:.1f} s"
    return line


def format_run_summary(row: dict, paths: RunPaths) -> str:
    """The few lines a run ends with, on the console and in its log: how it ended, how fast,
    how much memory, how well it learned, and where its files are."""
    status, detail = row.get("status", ""), row.get("status_detail", "")
    steps = f"{row.get('steps_done', 0)}/{row.get('max_steps', '?')} steps"
    lines = [f"run {paths.run_name} ended: {status}" + (f" ({detail})" if detail else "")]
    lines.append(
        f"  tokens/s: {_rate(_num(row, 'steady_tokens_per_sec'))} steady, "
        f"{_rate(_num(row, 'throughput'))} over the training loop ({steps})"
    )
    lines.append(_time_line(row))
    mfu = _num(row, "mfu")
    lines.append(
        "  MFU: " + (f"{mfu:.1%}" if mfu is not None else "n/a (no GPU peak for this device)")
    )
    gpu, host = _num(row, "peak_gpu_mem_gb"), _num(row, "peak_host_mem_gb")
    mem = [f"{gpu:.2f} GB GPU allocated" if gpu is not None else ""]
    mem.append(f"{host:.2f} GB host resident" if host is not None else "")
    lines.append("  peak memory: " + (", ".join(m for m in mem if m) or "n/a"))
    loss, ppl = _num(row, "eval_loss"), _num(row, "eval_perplexity")
    lines.append(
        f"  eval: loss {loss:.4f}, ppl {ppl:.2f}"
        if loss is not None and ppl is not None
        else "  eval: none"
    )
    lines.append(
        f"  files: {paths.results_csv} (its row), {paths.log}, {paths.metrics_csv}, "
        f"{paths.eval_csv}, {paths.config_yaml}"
    )
    return "\n".join(lines)
