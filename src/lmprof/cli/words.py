"""The one rule for a command's words: a `key=value` word is a config override, wherever it
stands. argparse alone would hand it to whatever came before it: the config slot
(`lmprof run d_model=128`) or a list flag (`--tags seq_len batch_size=4`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

CONFIG_SUFFIXES = (".yaml", ".yml")


def add_config_arguments(p: argparse.ArgumentParser, what: str = "a run config YAML") -> None:
    """The positional words every command takes: a config file, then `key=value` overrides (the
    splitter below also finds overrides written before the file or among other options)."""
    p.add_argument("config", nargs="?", help=f"{what} (optional: defaults apply)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def is_override(word: str) -> bool:
    """`key=value`, and not a config file whose name happens to contain '='."""
    return "=" in word and not word.endswith(CONFIG_SUFFIXES)


@dataclass(frozen=True)
class Words:
    config: str | None  # the config or sweep file, None for the defaults
    overrides: list[str]  # key=value, in the order given: a later one wins
    tags: list[str] | None  # --tags without its overrides; None when none is left


def split_words(
    config: str | None, overrides: Sequence[str] = (), tags: Sequence[str] | None = None
) -> Words:
    """Move every key=value word out of the config slot and the tags into the overrides."""
    moved_first = [config] if config and is_override(config) else []
    tags = list(tags or [])
    return Words(
        config=None if moved_first else config,
        overrides=[*moved_first, *overrides, *(t for t in tags if is_override(t))],
        tags=[t for t in tags if not is_override(t)] or None,
    )


def split_args(args: argparse.Namespace, config_attr: str = "config") -> Words:
    """`split_words` over a parsed command line (its config slot, overrides and --tags)."""
    return split_words(
        getattr(args, config_attr, None),
        getattr(args, "overrides", None) or [],
        getattr(args, "tags", None),
    )
