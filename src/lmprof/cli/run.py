"""`lmprof run [CONFIG.yaml] [key=value ...]`: train one run."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lmprof.cli.words import add_config_arguments, split_args

RUN_HELP = """\
Train one model and append a row to <output_dir>/results.csv.

Outputs (under logging.output_dir, default the current folder):
  results.csv                          one row per run: the seed's columns, then lmprof's
  results/details/<run>_metrics.csv    step,loss,perplexity,accuracy,lr,tokens_seen,...
  results/details/<run>_eval.csv       evaluation points over the whole validation split
  results/details/<run>_config.yaml    the resolved config
  logs/<run>.log                       the run's log

Exit status: 0 ok, 1 failed, 2 invalid input (nothing written), 3 out of memory, 4 diverged,
130 interrupted. Under torchrun (`torchrun --nproc_per_node N -m lmprof run ...`) each rank
trains on its own shard with DDP and rank 0 writes the outputs.
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "run",
        help="train one run",
        description=RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p)
    p.add_argument("--help-config", action="store_true", help="list every config key and exit")
    p.set_defaults(func=cmd_run)
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from lmprof.config import describe_keys, load_config, warmup_warning

    if args.help_config:
        print(describe_keys())
        return 0
    words = split_args(args)
    cfg = load_config(words.config, words.overrides)
    warning = warmup_warning(cfg)
    if warning:
        print(f"lmprof: warning: {warning}", file=sys.stderr)
    from lmprof.train import run

    return run(cfg)
