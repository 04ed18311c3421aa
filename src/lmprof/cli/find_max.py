"""`lmprof find-max CONFIG --vary batch_size|sequence_length`: the largest that fits."""

from __future__ import annotations

import argparse
from typing import Any

from lmprof.cli.words import add_config_arguments, split_args
from lmprof.errors import UserError


def find_max_doc() -> str:
    """The search's own description: lmprof.sweep.find_max's docstring, read from its source
    (importing it would import the whole sweep package into every command, `lmprof run`
    included, for one help text)."""
    import ast
    from pathlib import Path

    # Not importlib.util.find_spec: finding a submodule imports its package.
    source = Path(__file__).resolve().parents[1] / "sweep" / "find_max.py"
    return ast.get_docstring(ast.parse(source.read_text(encoding="utf-8"))) or ""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "find-max",
        help="largest batch size / sequence length that fits in memory",
        description=find_max_doc(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p)
    p.add_argument(
        "--vary",
        nargs="+",
        required=True,
        choices=("batch_size", "sequence_length"),
        help="what to search; both: the boundary over batch x sequence length",
    )
    p.add_argument("--limit", type=int, default=4096, help="largest value to try (default 4096)")
    p.add_argument("--steps", type=int, default=3, help="training steps per probe (default 3)")
    p.add_argument("--max-probes", type=int, default=12, help="probes per search (default 12)")
    p.set_defaults(func=cmd_find_max)
    return p


def cmd_find_max(args: argparse.Namespace) -> int:
    from lmprof.config import INT_CEILING, load_config
    from lmprof.sweep.find_max import find_max

    words = split_args(args)
    cfg = load_config(words.config, words.overrides)
    # A search doubles up to --limit and then bisects: 2 * 62 probes reach any value a config
    # allows (INT_CEILING, 2**62); more are a typo that would start probes nobody asked for.
    if not (
        1 <= args.limit <= INT_CEILING
        and 1 <= args.steps <= INT_CEILING
        and 2 <= args.max_probes <= 2 * 62
    ):
        raise UserError(
            f"--limit and --steps must be from 1 to {INT_CEILING} (2**62), --max-probes from 2 "
            f"to {2 * 62} (got --limit {args.limit}, --steps {args.steps}, --max-probes "
            f"{args.max_probes})"
        )
    find_max(
        cfg, sorted(set(args.vary)), limit=args.limit, steps=args.steps, max_probes=args.max_probes
    )
    return 0
