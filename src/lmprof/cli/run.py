"""`lmprof run [CONFIG.yaml] [key=value ...]`: train one run."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from lmprof.cli.words import add_config_arguments, split_args

if TYPE_CHECKING:
    from lmprof.config import RunConfig

RUN_HELP = """\
Train one model and append a row to <output_dir>/results.csv.

Outputs (under logging.output_dir, default the current folder):
  results.csv                          one row per run: the seed's columns, then lmprof's
  results/details/<run>_metrics.csv    step,loss,perplexity,accuracy,lr,tokens_seen,...
  results/details/<run>_eval.csv       evaluation points over the whole validation split
  results/details/<run>_config.yaml    the resolved config
  logs/<run>.log                       the run's log

Exit status: 0 ok, 1 failed, 2 invalid input (nothing written), 3 out of memory, 4 diverged,
130 interrupted. With system.num_gpus=N > 1 lmprof starts the N ranks itself through torchrun
(as a sweep does; gloo processes on a machine without a GPU); under torchrun
(`torchrun --nproc_per_node N -m lmprof run ...`) each rank trains on its own shard with DDP.
Rank 0 writes the outputs.
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
    if cfg.system.num_gpus > 1 and "WORLD_SIZE" not in os.environ:
        return launch_ranks(cfg)
    from lmprof.train.run import run

    return run(cfg)


def launch_ranks(cfg: RunConfig) -> int:
    """`lmprof run num_gpus=N` outside torchrun: start the N ranks as a sweep does (the same
    launcher, lmprof.sweep.processes), each running this config, and wait for them. Training
    on one process instead would record a DDP run that never was."""
    from lmprof.config import save_config
    from lmprof.environment import check_environment
    from lmprof.errors import EnvironmentMismatch
    from lmprof.identity import settle
    from lmprof.paths import RunPaths
    from lmprof.sweep.processes import default_child_argv

    reason = check_environment(cfg)  # before any process starts: 1000 ranks are refused here
    if reason:
        raise EnvironmentMismatch(reason)
    settle(cfg)  # the ranks then read one name and one attempt
    # The resolved config, where the run itself saves it: every rank reads the same one.
    path = RunPaths.of(cfg).config_yaml
    save_config(cfg, path)
    argv = default_child_argv(path, cfg.system.num_gpus)
    print(f"lmprof: starting {cfg.system.num_gpus} ranks: {shlex.join(argv)}", file=sys.stderr)
    proc = subprocess.Popen(argv)
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:
            continue  # the ranks got the same Ctrl-C from the terminal: they record themselves
    return code if code >= 0 else 128 - code
