"""Resume policy: what a rerun of a sweep does with each run, from its earlier rows.

A run's history is its rows in results.csv that are the same run (lmprof.identity.run_key: the
config hash, seed and repeat), whatever their name:
  * an `ok` or `oom` row: done, skipped (`--force` reruns it);
  * last row `diverged` or `timeout`: kept as is (`--retry-failed` reruns it);
  * no row, or last row `failed`, `interrupted` or `skipped`: run (a `skipped` run is recorded
    skipped again, once, while this machine still cannot run it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from lmprof.identity import RunKey, run_key
from lmprof.paths import results_csv
from lmprof.results import read_rows
from lmprof.status import DONE, KEPT
from lmprof.sweep.plan import RunPlan

Action = Literal["run", "done", "kept", "skip"]


History = dict[RunKey | None, list[dict[str, str]]]


def load_history(plans: Sequence[RunPlan]) -> History:
    """Rows by run, from the results.csv of every output folder the plans use."""
    history: History = {}
    # As paths, so "out" and "./out" are one folder.
    for root in dict.fromkeys(Path(p.cfg.logging.output_dir) for p in plans):
        for row in read_rows(results_csv(root)):
            history.setdefault(run_key(row), []).append(row)
    return history


def decide(
    plan: RunPlan,
    rows: Sequence[Mapping[str, str]],
    force: bool = False,
    retry_failed: bool = False,
) -> tuple[Action, Mapping[str, str] | None]:
    """What to do with a run: ("run" | "done" | "kept" | "skip", the row that decided it)."""
    if not force:
        done = [r for r in rows if r.get("status") in DONE]
        if done:
            return "done", done[-1]
        if rows and rows[-1].get("status") in KEPT and not retry_failed:
            return "kept", rows[-1]
    if plan.unrunnable:
        return "skip", None
    return "run", None
