"""Sweeps: the seed's sweep format planned into runs, each run in its own process."""

from lmprof.sweep.plan import RunPlan, expand_sweep, load_sweep, plan_sweep
from lmprof.sweep.runner import SweepReport, format_plan, run_sweep

__all__ = [
    "RunPlan",
    "SweepReport",
    "expand_sweep",
    "format_plan",
    "load_sweep",
    "plan_sweep",
    "run_sweep",
]
