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
    logger.addHandler(console)
    if is_main and not os.environ.get(LOG_CAPTURED_ENV):
        path = RunPaths.of(cfg).log
        # A resumed run continues its log; a fresh one starts it anew.
        fh = _LogFile(path, append=cfg.checkpoint.resume == "auto")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
