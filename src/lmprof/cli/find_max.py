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
    from lmprof.config import load_config
    from lmprof.sweep.find_max import find_max

    words = split_args(args)
    cfg = load_config(words.config, words.overrides)
    if args.limit < 1 or args.steps < 1 or args.max_probes < 2:
        raise UserError("--limit and --steps must be positive, --max-probes at least 2")
    find_max(
        cfg, sorted(set(args.vary)), limit=args.limit, steps=args.steps, max_probes=args.max_probes
    )
    return 0
