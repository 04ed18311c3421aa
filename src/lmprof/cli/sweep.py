"""`lmprof sweep SWEEP.yaml [--tags T ...] [--dry-run] [--force] [--retry-failed] [key=value ...]`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lmprof.cli.words import split_words
from lmprof.errors import UserError

SWEEP_HELP = """\
Run every run of a sweep file, each in its own process (torchrun for num_gpus > 1; gloo
processes on a machine without a GPU), one after another.

The file is the course assignment's format: base_config plus experiments, each a group with a
name, a tag and either params (every combination of the lists) over fixed_params, or a list of
named runs. key=value overrides apply to every run (e.g. training.max_steps=50). Every run is
validated before the first starts. Beyond the seed's format: a tag may be a list, keys may be
dotted (model.d_model), and a group or run may set num_gpus, repeat: N or seeds: [..];
repeats run interleaved (a b a b, not a a b b), so a slow spell hits every configuration.

A run is its configuration (config hash), seed and repeat, not its name: a name that
results.csv already holds for another run is refused before anything starts, unless
--fresh-name (logging.fresh_name=true) gives the run a new name (<name>-2) and says so. A rerun
of a name writes its files as <name>@2, @3, ... and never over an earlier attempt's.

Per run: logs/<run>.log (its output), one row in results.csv with its status: ok, oom,
diverged, failed, timeout (system.timeout_s), interrupted (Ctrl-C) or skipped (this machine
cannot run it, e.g. fp16 without a GPU). system.memory_limit_gb caps each process's address
space (RLIMIT_AS; meant for CPU runs: CUDA reserves far more address space than it uses).
"""

RESUME_HELP = """\
Rerunning a sweep resumes it. A run whose config hash already has an ok or oom row in
results.csv is done and skipped (--force reruns it). A run whose last row is diverged or
timeout is kept as it is (--retry-failed reruns it). Runs with no row, or whose last row is
failed, interrupted or skipped, run (a skipped run again only if this machine can now run it).

Ctrl-C stops the current run (it records itself as interrupted), ends the sweep and exits
with 130; Ctrl-C again kills the run at once. Exit status: 0 when every run ended ok, oom or
skipped; 1 otherwise; 2 for an invalid sweep file (nothing runs).
"""


def add_sweep_arguments(parser: argparse.ArgumentParser, sweep_file: bool = True) -> None:
    """The sweep's flags; `sweep_file=False` leaves the file to the caller (run_experiments.py)."""
    if sweep_file:
        parser.add_argument("sweep_file", metavar="SWEEP.yaml", help="the sweep file")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides applied to every run"
    )
    parser.add_argument(
        "--tags",
        nargs="+",
        metavar="T",
        help="run only the groups with one of these tags (or group names)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (runs, settings, GPUs, what would be skipped and "
        "why) and start nothing",
    )
    parser.add_argument(
        "--force", action="store_true", help="rerun runs that are already done (ok or oom)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        metavar="N",
        help="run every configuration N times (names end in _rep<k>) unless its group or run "
        "sets repeat, interleaved (round k runs every configuration's k-th repeat: a b a b); "
        "the analysis reports the median and a 95%% interval across repeats",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="also rerun runs whose last attempt diverged or timed out (failed runs are "
        "rerun anyway)",
    )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sweep",
        help="run a sweep of runs, each in its own process",
        description=SWEEP_HELP,
        epilog=RESUME_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sweep_arguments(p)
    p.set_defaults(func=cmd_sweep)
    return p


def cmd_sweep(args: argparse.Namespace) -> int:
    from lmprof.sweep.plan import plan_sweep
    from lmprof.sweep.runner import format_plan, run_sweep, settle_plans

    # The sweep file is a required slot: only the overrides and --tags need the splitter.
    words = split_words(None, args.overrides, args.tags)
    overrides = words.overrides
    try:
        plans = plan_sweep(
            args.sweep_file,
            tags=words.tags or None,
            overrides=overrides,
            repeat=getattr(args, "repeat", None),
        )
        # Names checked against results.csv here too, so --dry-run shows what a run would do.
        settle_plans(plans, lambda line: print(line, file=sys.stderr, flush=True))
    except UserError as exc:
        print(f"lmprof sweep: error: {exc}", file=sys.stderr)
        return 2
    from lmprof.sweep.console import format_rounds, format_warnings

    warning = format_warnings(plans)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    if args.dry_run:
        applied = f"; overrides for every run: {' '.join(overrides)}" if overrides else ""
        print(f"{args.sweep_file}: plan (nothing is started){applied}")
        print(format_plan(plans, force=args.force, retry_failed=args.retry_failed))
        return 0
    rounds = format_rounds(plans)
    if rounds:
        print(rounds, flush=True)
    report = run_sweep(plans, force=args.force, retry_failed=args.retry_failed)
    return report.exit_code
