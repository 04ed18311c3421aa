"""The one rule for a command's words: a word naming a config key is a config override,
wherever it stands: `key=value` (the seed's), `--key=value` (nanoGPT's) and `--key value`
(torchtitan's), dotted or not. argparse alone would hand a `key=value` word to whatever came
before it (the config slot, `lmprof run d_model=128`, or a list flag, `--tags seq_len
batch_size=4`) and reject `--max_steps=10`, so every command's words go through `split_argv`
before argparse sees them."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from lmprof.errors import UserError

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


def is_config_key(key: str) -> bool:
    """Whether `key` names a config field: dotted, a unique leaf, or a seed alias."""
    from lmprof.config import DOTTED_KEYS, LEAF_KEYS, SEED_ALIASES

    prefix = "model_config."
    return (
        key in DOTTED_KEYS
        or key in LEAF_KEYS
        or key in SEED_ALIASES
        or (key.startswith(prefix) and key[len(prefix) :] in SEED_ALIASES)
    )


def _config_key(flag: str) -> str | None:
    """The config key a `--flag` names (`--max-steps` as well as `--max_steps`), or None."""
    if not flag.startswith("--"):
        return None
    for key in (flag[2:], flag[2:].replace("-", "_")):
        if key and is_config_key(key):
            return key
    return None


def _takes_one_value(action: argparse.Action) -> bool:
    """The next word is the option's value (a list option's words are read one by one)."""
    return action.nargs is None and not isinstance(
        action, argparse._StoreConstAction | argparse._HelpAction | argparse._VersionAction
    )


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    """The parser's option for `flag`, exactly or as argparse's unique abbreviation."""
    actions = parser._option_string_actions
    if flag in actions:
        return actions[flag]
    if flag.startswith("--") and parser.allow_abbrev:
        matches = {actions[o] for o in actions if o.startswith(flag)}
        if len(matches) == 1:
            return matches.pop()
    return None


def _is_flag(word: str) -> bool:
    if not word.startswith("-") or word == "-":
        return False
    try:
        float(word)  # a negative number is a value
    except ValueError:
        return True
    return False


def split_argv(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the words for `parser`, the config overrides as `key=value`, in the order given).

    The parser's own options win over config keys (`--vocab-size` is estimate's option); a
    `--word` that is neither is one line naming the closest of both.
    """
    keep: list[str] = []
    overrides: list[str] = []
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            keep += words[i - 1 :]
            break
        if not _is_flag(word):
            if is_override(word):
                overrides.append(word)
            else:
                keep.append(word)
            continue
        flag, eq, value = word.partition("=")
        action = _option(parser, flag)
        key = _config_key(flag)
        # The command's own options first, abbreviations included (`--tag` is --tags in a sweep,
        # as argparse reads it), so a config key never shadows an option.
        if action is not None:
            keep.append(word)
            if _takes_one_value(action) and not eq and i < len(words):
                keep.append(words[i])  # an option's value stays its own, '=' or not
                i += 1
            continue
        if key is None:
            raise UserError(_unknown(parser, flag))
        if eq:
            overrides.append(f"{key}={value}")
        elif i < len(words) and not _is_flag(words[i]) and not words[i].endswith(CONFIG_SUFFIXES):
            overrides.append(f"{key}={words[i]}")
            i += 1
        else:  # `--compile` alone: a switch
            overrides.append(f"{key}=true")
    return keep, overrides


def _unknown(parser: argparse.ArgumentParser, flag: str) -> str:
    from lmprof.config import ALL_KEYS

    options = [o for o in parser._option_string_actions if o.startswith("--")]
    candidates = options + [f"--{k}" for k in ALL_KEYS]
    match = difflib.get_close_matches(flag, candidates, n=1, cutoff=0.6)
    hint = f"; did you mean '{match[0]}'?" if match else ""
    return (
        f"unknown option or config key '{flag}'{hint} (options: {', '.join(sorted(options))}; "
        "config keys: `lmprof run --help-config`)"
    )
