"""The one results writer: a row per run in results.csv, appended atomically.

Every append takes a lock, reads the table, adds the row and replaces the file by rename, so
two processes appending at once never interleave, a kill never leaves a torn row, and a row with
new columns widens the table without corrupting earlier rows (their new cells stay empty).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmprof.errors import UserError
from lmprof.io import atomic_write_text, file_lock
from lmprof.profiling.energy import ENERGY_COLUMNS

# The seed's columns, in the seed's order, then lmprof's. Unknown keys are appended after these.
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
LMPROF_COLUMNS = (
    "status",
    "status_detail",
    "tag",
    "precision",
    "attention",
    "compile",
    "compile_mode",
    "checkpointing",
    "parallelism",
    "grad_accum_steps",
    "max_steps",
    "steps_done",
    "tokens_seen",
    "steady_tokens_per_sec",
    "steady_tokens_per_sec_per_gpu",
    "processed_tokens_per_sec",
    "step_time_p50_ms",
    "step_time_p90_ms",
    # The steady window's noise (lmprof.stats.noise, produced in train/timing.py).
    "step_time_p10_ms",
    "step_time_cv",
    "step_time_p50_ci_low_ms",
    "step_time_p50_ci_high_ms",
    "noisy",
    "noisy_reason",
    "compile_time_sec",
    "final_train_loss",
    "peak_gpu_reserved_gb",
    "peak_host_mem_gb",
    "mfu",
    "hfu",
    "achieved_tflops",
    "model_flops_per_token",
    "predicted_peak_mem_gb",
    "n_layers",
    "d_model",
    "n_heads",
    "d_ff",
    "vocab_size",
    "norm",
    "pos_encoding",
    "data_source",
    "tokenizer",
    "batching",
    "device",
    "device_name",
    "gpu_count",
    "torch_version",
    "cuda_version",
    "nccl_version",
    "driver_version",
    "lmprof_version",
    "git_commit",
    "config_hash",
    "started_at",
    "finished_at",
)
COLUMNS = SEED_COLUMNS + LMPROF_COLUMNS + ENERGY_COLUMNS  # groups: declared by their producer


def _cell(value: Any) -> str:
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
    cols = [c for c in COLUMNS if c in SEED_COLUMNS or c in existing or c in new]
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
        writer.writerow({k: _cell(v) for k, v in row.items()})
        atomic_write_text(path, buf.getvalue())
