"""What makes two rows the same run: its configuration, not its name.

A run is its config hash (`RunConfig.hash`: everything it computes, not its name), its seed and
its repeat: `run_key` of a results row, `RunConfig.identity()` of a config. The name only files
the run (lmprof.paths), so one name must mean one run in a results table:

* `settle_names`, before any work: a run whose name a row of results.csv already holds for a
  different run is refused in one line naming the keys that differ (or both hashes), unless
  `logging.fresh_name` is on: then the run takes the first free `<name>-<k>` (or the one this
  same run took before, so a rerun resumes it) and the line says so;
* `settle_attempt`: which files of the name are this attempt's (lmprof.paths.choose_attempt).

Replicates (repeats, seeds) of one configuration share the hash; `REPLICATE_SUFFIX` is the part
of their names the sweep adds, which a fresh name keeps last so they still read as replicates.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lmprof.config import IDENTITY_EXCLUDED, RunConfig, from_dict
from lmprof.errors import UserError
from lmprof.paths import RunPaths, attempt_of, choose_attempt, results_csv
from lmprof.results import cell, read_rows

REPLICATE_SUFFIX = re.compile(r"(_seed-?\d+|_rep\d+)+$")
RunKey = tuple[str, str, str]
_Table = dict[str, list[tuple[int, Mapping[str, str]]]]  # name -> (line, row), file order
# Config columns that say nothing about what the run computes (or that the hash sums up).
_NOT_SETTINGS = ("run_name", "config_hash", "attempt", "sweep_id", "ddp_gpus")


def run_key(row: Mapping[str, str]) -> RunKey | None:
    """The run a results row belongs to: (config hash, seed, repeat); None without a hash (the
    seed's rows, which the analysis tells apart by name)."""
    h = (row.get("config_hash") or "").strip()
    if not h:
        return None
    return (h, (row.get("seed") or "").strip(), (row.get("repeat") or "").strip())


def _flat(d: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    skip = set(IDENTITY_EXCLUDED) - {("training", "seed"), ("logging", "repeat")}
    return {f"{s}.{k}": v for s, sec in d.items() for k, v in sec.items() if (s, k) not in skip}


def _saved_config(cfg: RunConfig, row: Mapping[str, str]) -> RunConfig | None:
    """The resolved config the row's run saved beside its files, if it is still readable."""
    from lmprof.yamlio import load_mapping

    paths = RunPaths(cfg.logging.output_dir, row.get("run_name", ""), attempt=attempt_of(row))
    if not paths.config_yaml.is_file():
        return None
    try:
        return from_dict(load_mapping(paths.config_yaml, "saved config"))
    except (UserError, TypeError, ValueError, KeyError):
        return None  # written by another version of lmprof, or edited: the hashes must do


def _shown_differences(cfg: RunConfig, row: Mapping[str, str]) -> list[str]:
    """The config columns of the row that this config would write differently."""
    from lmprof.columns import CONFIG_COLUMNS, config_row

    mine = config_row(cfg)
    return [
        f"{c} {row[c]} -> {cell(mine[c])}"
        for c in CONFIG_COLUMNS.columns
        if c not in _NOT_SETTINGS and c in row and c in mine and row[c] != cell(mine[c])
    ]


def _judge(cfg: RunConfig, row: Mapping[str, str]) -> str | None:
    """None when the row is this run; else what differs, in words for the refusal."""
    key, mine = run_key(row), cfg.identity()
    if key == mine:
        return None
    shown = _shown_differences(cfg, row)
    if key is None or not (row.get("seed") or "").strip():
        # Written before runs had an identity: only its settings columns can tell (its saved
        # config may be a later run's of the same name).
        return ", ".join(shown[:4]) or None
    saved = _saved_config(cfg, row)
    if saved is not None:
        if saved.identity() == mine:
            return None  # the same run, hashed by a version of lmprof with other config keys
        a, b = _flat(saved.to_dict()), _flat(cfg.to_dict())
        keys = [k for k in b if a.get(k) != b[k]]
        if keys:
            text = ", ".join(f"{k} {a.get(k)!r} -> {b[k]!r}" for k in keys[:4])
            return text + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
    text = (
        f"hash {key[0]} seed {key[1]} repeat {key[2]} -> {mine[0]} seed {mine[1]} repeat {mine[2]}"
    )
    return text + (f"; {', '.join(shown[:4])}" if shown else "")


def _clash(cfg: RunConfig, name: str, table: _Table) -> tuple[int, str] | None:
    """(line in results.csv, what differs) for the first row that holds `name` for another run."""
    for line, row in table.get(name, ()):
        if (why := _judge(cfg, row)) is not None:
            return line, why
    return None


def _mine(cfg: RunConfig, name: str, table: _Table) -> bool:
    return any(_judge(cfg, row) is None for _, row in table.get(name, ()))


def _by_name(rows: Sequence[Mapping[str, str]]) -> _Table:
    table: _Table = {}
    for line, row in enumerate(rows, start=2):
        table.setdefault(row.get("run_name") or "", []).append((line, row))
    return table


def fresh_candidates(name: str) -> Callable[[int], str]:
    """`<name>-<k>`, with a replicate's `_rep<k>`/`_seed<s>` kept at the end."""
    m = REPLICATE_SUFFIX.search(name)
    base, suffix = (name[: m.start()], m.group(0)) if m and m.start() else (name, "")
    return lambda k: f"{base}-{k}{suffix}"


def settle_names(
    cfgs: Sequence[RunConfig], say: Callable[[str], None], what: str = "run"
) -> list[str]:
    """Refuse, or with logging.fresh_name rename, every run whose name results.csv holds for
    another run; before any work, so a sweep never half-runs. Returns the renames said."""
    tables: dict[Path, _Table] = {}
    taken = {c.logging.run_name for c in cfgs}
    clashes: list[str] = []
    said: list[str] = []
    for cfg in cfgs:
        out = Path(cfg.logging.output_dir)
        if out not in tables:
            tables[out] = _by_name(read_rows(results_csv(out)))
        rows = tables[out]
        name = cfg.logging.run_name
        found = _clash(cfg, name, rows)
        if found is None:
            continue
        line, why = found
        if not cfg.logging.fresh_name:
            clashes.append(
                f"{what} name '{name}' is already used in {results_csv(out)} (line {line}) by a "
                f"different configuration ({why})"
            )
            continue
        candidate = fresh_candidates(name)
        k = 2
        while True:
            new = candidate(k)
            if _mine(cfg, new, rows) or (new not in taken and _clash(cfg, new, rows) is None):
                break
            k += 1
        taken.add(new)
        cfg.logging.run_name = new
        said.append(f"{name} -> {new}")
        say(
            f"lmprof: '{name}' is used in {results_csv(out)} (line {line}) by a different "
            f"configuration; this {what} is named '{new}' (logging.fresh_name)"
        )
    if clashes:
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise UserError(
            f"{clashes[0]}{more}: give it another name, another logging.output_dir, or "
            "--fresh-name to name it anew"
        )
    return said


def settle_attempt(cfg: RunConfig) -> None:
    """Choose, once, which attempt of its name this run is (the sweep does it for its runs)."""
    if cfg.logging.attempt:
        return
    rows = read_rows(results_csv(cfg.logging.output_dir))
    cfg.logging.attempt = choose_attempt(
        RunPaths.of(cfg).with_attempt(1), rows, cfg.checkpoint.resume == "auto"
    )


def settle(cfg: RunConfig) -> None:
    """`lmprof run`: the run's name and attempt, unless the sweep or the rank launcher settled
    them (then `logging.attempt` is set and every rank reads the same)."""
    if cfg.logging.attempt:
        return
    main = int(os.environ.get("RANK", "0")) == 0
    settle_names([cfg], say=lambda line: print(line, file=sys.stderr) if main else None)
    settle_attempt(cfg)
