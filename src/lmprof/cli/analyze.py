"""`lmprof analyze` and `python analysis.py`: the same parser and the same code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from lmprof.errors import UserError


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--results", default="results.csv", help="the results table (default: results.csv)"
    )
    p.add_argument(
        "--out",
        default="results",
        help="where plots, tables/ and report.html go (default: results/)",
    )
    p.add_argument(
        "--details",
        default=None,
        help="the per-run details CSVs (default: results/details beside --results, "
        "else <out>/details)",
    )
    p.add_argument(
        "--target-loss",
        default=None,
        metavar="LOSS",
        help="the evaluation loss (nats/token) at which runs are compared for tokens, seconds, "
        "joules and USD to reach it (default: per tag, the worst final evaluation loss)",
    )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "analyze",
        help="plots, per-tag tables and report.html from results.csv",
        description="Write every plot that applies to the runs in results.csv, a table per tag "
        "(CSV and Markdown) and one self-contained report.html.",
    )
    _add_arguments(p)
    p.set_defaults(func=cmd_analyze)
    return p


def cmd_analyze(args: argparse.Namespace) -> int:
    """Run the analysis; a UserError (bad input) propagates for one-line printing. Without
    matplotlib the tables and report are still written, and the skipped plots named."""
    from lmprof.analysis import analyze

    done = analyze(
        args.results,
        args.out,
        getattr(args, "details", None),
        target_loss=getattr(args, "target_loss", None),
    )
    for plot in done.plots:
        print(f"wrote {plot.path}")
    if done.no_plots:
        print(f"no plots: {done.no_plots}; skipped {', '.join(f for f, _ in done.skipped)}")
    else:
        for file, why in done.skipped:
            print(f"skipped {file}: {why}")
    for note in done.notes:
        print(note)
    n_tables = len(done.tables) // 2
    print(f"wrote {n_tables} table(s) in {done.tables[0].parent}" if done.tables else "no tables")
    print(f"report: {done.report}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of analysis.py."""
    p = argparse.ArgumentParser(
        prog="analysis.py", description="lmprof analyze: plots, tables, report.html"
    )
    _add_arguments(p)
    args = p.parse_args(argv)
    try:
        return cmd_analyze(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
