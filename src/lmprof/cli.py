"""The `lmprof` command: run, sweep, analyze, estimate, find-max.

Every user mistake ends as one line on stderr and exit status 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lmprof import __version__
from lmprof.errors import UserError

DESCRIPTION = """\
lmprof trains causal Transformer language models and measures what a training setup costs:
tokens/s and MFU, memory and why, and how well it learns.

  lmprof run [CONFIG.yaml] [key=value ...]     train one run, append its row to results.csv
  lmprof sweep SWEEP.yaml [--tags T ...]       run a sweep of runs, each in its own process
  lmprof analyze [--results results.csv]       plots, tables and report.html from the results
  lmprof estimate [CONFIG.yaml] [key=value]    predicted memory and FLOPs, without running
  lmprof find-max CONFIG --vary batch_size     the largest batch (or length) that fits

Config keys are dotted (model.d_model=512), a field's own name (d_model=512) or one of the
course assignment's flat names (fp16=true, nhead=8, learning_rate=3e-4). `lmprof run
--help-config` lists every key with its default.
"""

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


def _add_run_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="train one run",
        description=RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="a run config YAML (optional: defaults apply)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--help-config", action="store_true", help="list every config key and exit")
    p.set_defaults(func=_cmd_run)


def _split_config_and_overrides(args) -> tuple[str | None, list[str]]:
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)
        config = None
    return config, overrides


def _cmd_run(args) -> int:
    from lmprof.config import describe_keys, load_config

    if args.help_config:
        print(describe_keys())
        return 0
    config, overrides = _split_config_and_overrides(args)
    cfg = load_config(config, overrides)
    from lmprof.train import run

    return run(cfg)


def _optional_parsers(sub) -> None:
    """Subcommands whose modules are optional extras or may be absent in a partial install."""
    import importlib

    for module, func in (
        ("lmprof.sweep.cli", "add_sweep_parser"),
        ("lmprof.analysis.cli", "add_analyze_parser"),
        ("lmprof.profiling.cli", "add_estimate_parser"),
        ("lmprof.sweep.find_max", "add_find_max_parser"),
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("lmprof"):
                continue
            raise
        if hasattr(mod, func):
            getattr(mod, func)(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmprof", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"lmprof {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run_parser(sub)
    _optional_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"lmprof: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmprof: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
