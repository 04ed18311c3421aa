"""The results columns the config and the outcome decide, and the details CSVs' columns.
Torch-free, so a sweep writes them for a child that never started and the analysis reads them,
with the same names the run uses."""

from __future__ import annotations

import datetime
import os
from typing import Any

from lmprof import attention_kernels
from lmprof.config import RunConfig
from lmprof.paths import SWEEP_ID_ENV
from lmprof.results import ColumnGroup
from lmprof.train.config import effective_residual_stream

OUTCOME_COLUMNS = ColumnGroup(
    "outcome",
    "the status and when it was reached: train/run.py, or sweep/classify.py for a child that "
    "could not write its row",
    ("status", "status_detail", "started_at", "finished_at", "sweep_id"),
)

CONFIG_COLUMNS = ColumnGroup(
    "config",
    "the run's identity and settings, from the config alone: columns.config_row",
    (
        "run_name",
        "tag",
        "sequence_length",
        "batch_size",
        "fp16",
        "grad_checkpoint",
        "flash_attention",
        "ddp_gpus",
        "precision",
        "residual_stream",
        "attention",
        "compile",
        "compile_mode",
        "compile_scope",
        "checkpointing",
        "parallelism",
        "grad_accum_steps",
        "max_steps",
        "n_layers",
        "d_model",
        "n_heads",
        "n_kv_heads",
        "d_ff",
        "norm",
        "norm_type",
        "pos_encoding",
        "activation",
        "data_source",
        "tokenizer",
        "batching",
        "config_hash",
        # With the hash, the run's identity (lmprof.identity.run_key); the attempt names its
        # files (lmprof.paths.RunPaths.stem; 0: it wrote none).
        "seed",
        "repeat",
        "attempt",
    ),
)


# The details CSVs' columns (train/outputs.py writes them, the analysis reads them).
METRICS_COLUMNS = (
    "step",
    "loss",
    "perplexity",
    "accuracy",
    "lr",
    "tokens_seen",
    "step_time_ms",
    "tokens_per_sec",
    "elapsed_sec",
)
EVAL_COLUMNS = (
    "step",
    "tokens_seen",
    "elapsed_sec",
    "eval_loss",
    "eval_perplexity",
    "eval_accuracy",
    "eval_tokens",
)


def now() -> str:
    """A timestamp for the outcome columns (UTC, seconds)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def config_row(cfg: RunConfig) -> dict[str, Any]:
    """The columns that come from the config alone (so a failed run still has them)."""
    m, s = cfg.model, cfg.system
    return {
        "run_name": cfg.logging.run_name,
        "tag": cfg.logging.tag,
        "sequence_length": cfg.seq_len,
        "batch_size": cfg.training.batch_size,
        "fp16": s.precision == "fp16",
        "grad_checkpoint": s.gradient_checkpointing != "none",
        "checkpointing": s.gradient_checkpointing,
        "flash_attention": attention_kernels.kernel(m.attention).seed_flash,
        "ddp_gpus": s.num_gpus,
        "precision": s.precision,
        "residual_stream": effective_residual_stream(s),
        "attention": m.attention,
        "compile": s.compile,
        "compile_mode": s.compile_mode if s.compile else "",
        "compile_scope": s.compile_scope if s.compile else "",
        "parallelism": s.parallelism,
        "grad_accum_steps": cfg.training.grad_accum_steps,
        "max_steps": cfg.training.max_steps,
        "n_layers": m.n_layers,
        "d_model": m.d_model,
        "n_heads": m.n_heads,
        "n_kv_heads": m.n_kv_heads or m.n_heads,
        "d_ff": m.d_ff,
        "norm": m.norm,
        "norm_type": m.norm_type,
        "pos_encoding": m.pos_encoding,
        "activation": m.activation,
        "data_source": cfg.data.source,
        "tokenizer": cfg.data.tokenizer,
        "batching": cfg.data.batching,
        "config_hash": cfg.hash(),
        "seed": cfg.training.seed,
        "repeat": cfg.logging.repeat,
        "attempt": cfg.logging.attempt,
        "sweep_id": os.environ.get(SWEEP_ID_ENV, ""),
    }
