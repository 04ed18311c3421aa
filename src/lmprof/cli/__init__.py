"""The `lmprof` command: run, sweep, analyze, estimate, find-max, one module each.

Every user mistake ends as one line on stderr and exit status 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from lmprof import __version__
from lmprof.cli import analyze, estimate, find_max, run, sweep
from lmprof.cli.words import split_argv
from lmprof.errors import UserError
from lmprof.status import EXIT_CODES, INTERRUPTED, USER_ERROR

DESCRIPTION = """\
lmprof trains causal Transformer language models and measures what a training setup costs:
tokens/s and MFU, memory and why, and how well it learns.

  lmprof run [CONFIG.yaml] [key=value ...]     train one run, append its row to results.csv
  lmprof sweep SWEEP.yaml [--tags T ...]       run a sweep of runs, each in its own process
  lmprof analyze [--results results.csv]       plots, tables and report.html from the results
  lmprof estimate [CONFIG.yaml] [key=value]    predicted memory and FLOPs, without running
  lmprof find-max CONFIG --vary batch_size     the largest batch (or length) that fits

Config keys are dotted (model.d_model=512), a field's own name (d_model=512) or one of the
course assignment's flat names (fp16=true, nhead=8, learning_rate=3e-4); every command that
takes a config also reads them as --key=value or --key value (--max_steps=10,
--training.max_steps 10). `lmprof run --help-config` lists every key with its default.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmprof", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"lmprof {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Each module imports its command's work only when it runs: `lmprof estimate` stays free
    # of torch, and `--help` is instant.
    for command in (run, sweep, analyze, estimate, find_max):
        command.add_parser(sub)
    return parser


def _command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, its config words (`key=value`, `--key=value`, `--key value`) moved
    into `overrides` by the one rule of lmprof.cli.words, whatever the command."""
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    at = next((i for i, w in enumerate(words) if not w.startswith("-")), None)
    command = _command_parser(parser, words[at]) if at is not None else None
    takes_config = command is not None and any(a.dest == "overrides" for a in command._actions)
    if not takes_config:  # no command, an unknown one (argparse says so), or analyze
        return parser.parse_args(words)
    keep, overrides = split_argv(command, words[at + 1 :])
    args = parser.parse_args([*words[: at + 1], *keep])
    args.overrides = [*overrides, *(getattr(args, "overrides", None) or [])]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse(argv)
    except UserError as exc:
        print(f"lmprof: error: {exc}", file=sys.stderr)
        return EXIT_CODES[USER_ERROR]
    if not getattr(args, "func", None):
        build_parser().print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"lmprof: error: {exc}", file=sys.stderr)
        return EXIT_CODES[USER_ERROR]
    except KeyboardInterrupt:
        print("lmprof: interrupted", file=sys.stderr)
        return EXIT_CODES[INTERRUPTED]


def exit_now(code: int) -> NoReturn:
    """End the process with `code`, skipping the interpreter's teardown of its modules.

    torch with torch._dynamo and sympy (which every run imports) takes seconds to tear down
    after the row is written (benchmarks/NOTES.md, issue 24: 6 s of a 30 s process on a busy
    CPU, 0.2 s this way). What a normal exit does that matters still happens, in its order:
    threads that are not daemons are joined, the atexit handlers run (logging's flush, torch's
    compile workers, trackers, coverage), the standard streams are flushed. Files lmprof writes
    are closed, or flushed line by line, before this.
    """
    main_thread = threading.main_thread()
    for t in threading.enumerate():
        if t is not main_thread and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe or stream: nothing left to save.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def entry() -> NoReturn:
    """The `lmprof` command and `python -m lmprof`: main(), then exit_now."""
    exit_now(main())
