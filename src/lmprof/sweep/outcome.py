"""What a sweep produced: one Outcome per run, and the report over all of them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lmprof.status import EXIT_CODES, INTERRUPTED, SUCCESS
from lmprof.sweep.plan import RunPlan


@dataclass
class Outcome:
    """How one run of the sweep ended (in this sweep, or earlier when it was skipped as done)."""

    plan: RunPlan
    status: str
    detail: str = ""
    row: Mapping[str, str] | None = None
    elapsed: float | None = None
    note: str = ""  # why the run was not started, when it was not


@dataclass
class SweepReport:
    outcomes: list[Outcome]
    total: int
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_CODES[INTERRUPTED]
        return 0 if all(o.status in SUCCESS for o in self.outcomes) else 1
