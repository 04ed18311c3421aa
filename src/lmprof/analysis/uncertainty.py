"""Intervals for what the analysis compares: a run's (or its replicates') throughput, and the
ratio of two of them, with the words a sentence may use (lmprof.stats does the arithmetic)."""

from __future__ import annotations

import math
from collections.abc import Callable

from lmprof.stats import Estimate, Ratio, from_runs, from_spread, ratio

from .load import Run, Table

Metric = Callable[[Run], float | None]


def _tps(r: Run) -> float | None:
    return r.tokens_per_sec


def estimate(run: Run, metric: Metric = _tps, rate: bool = True) -> Estimate | None:
    """Replicates: their spread. One run: its step-time spread (for a rate: `rate`), else none."""
    reps = [r for r in run.replicates if r.measured]
    values = [v for r in reps if (v := metric(r)) is not None]
    if not values:
        return None
    if len(values) >= 2:
        return from_runs(values)
    value, one = values[0], reps[0]
    lo, mid, hi = (
        one.pos("step_time_p50_ci_low_ms"),
        one.pos("step_time_p50_ms"),
        one.pos("step_time_p50_ci_high_ms"),
    )
    if not rate or lo is None or mid is None or hi is None:
        return from_spread(value, None, None)
    # A rate is tokens over the median step time: its interval is the step time's, inverted.
    return from_spread(value, value * mid / hi, value * mid / lo)


def spread(run: Run, metric: Metric = _tps) -> tuple[float, float] | None:
    """The 95% interval of a configuration's metric across its replicates; None for one run
    (its step-time spread is no error bar for memory, and understates one for a rate)."""
    est = estimate(run, metric)
    if est is None or est.source != "runs":
        return None
    return est.interval()


def disagreements(run: Run) -> list[tuple[Run, Run, Ratio]]:
    """Pairs of a configuration's replicates whose tokens/s differ beyond their own intervals."""
    reps = [m for m in run.replicates if m.measured and m.tokens_per_sec]
    out = []
    for i, a in enumerate(reps):
        for b in reps[i + 1 :]:
            ea, eb = estimate(Run(a.row, a.line)), estimate(Run(b.row, b.line))
            if ea and eb and ea.known and eb.known and not (rt := ratio(ea, eb)).includes_one:
                out.append((a, b, rt))
    return out


def compare(new: Run, base: Run, metric: Metric = _tps) -> Ratio | None:
    a, b = estimate(new, metric), estimate(base, metric)
    if a is None or b is None:
        return None
    return ratio(a, b)


def single_runs(table: Table) -> bool:
    """True when no configuration was repeated: intervals then come from step-time spread."""
    return all(len(r.replicates) == 1 for r in table.runs)


def flags(table: Table) -> list[str]:
    """Implausible values: MFU above 100%, replicates that disagree beyond their intervals."""
    out = []
    for r in table.runs:
        for m in r.replicates:
            if m.measured and m.mfu is not None and m.mfu > 1.0:
                out.append(
                    f"{m.name}: MFU {m.mfu * 100:.0f}% is above 100% (impossible: check the "
                    "FLOP count or the peak FLOP/s); kept on the plots, marked, not a finding"
                )
        pairs = disagreements(r)
        if pairs:
            # One line per configuration: with n repeats there are up to n(n-1)/2 pairs.
            names = sorted({m.name for a, b, _ in pairs for m in (a, b)})
            widest = max(pairs, key=lambda p: abs(math.log(p[2].value)))
            tps = [m.tokens_per_sec for m in r.replicates if m.measured and m.tokens_per_sec]
            out.append(
                f"{r.name}: {len(pairs)} pair(s) of its repeats ({', '.join(names)}) differ in "
                f"tokens/s beyond their own step-time intervals (the repeats span "
                f"{min(tps):,.0f} to {max(tps):,.0f}; widest {widest[0].name} / "
                f"{widest[1].name} {widest[2].text()}): run-to-run variation (machine load, "
                "clocks) is larger than one run shows, so compare with the interval across "
                "repeats; marked on the plots"
            )
        for m in r.replicates:
            if m.noisy:
                out.append(f"{m.name}: noisy timing ({m.get('noisy_reason') or 'see its log'})")
    return out


def ratio_cell(rt: Ratio | None) -> str:
    """A ratio for a table cell: value [low, high], and the verdict where the interval says
    nothing."""
    if rt is None:
        return ""
    if not rt.known:
        return "unknown"
    tail = " (no measurable difference)" if rt.includes_one else ""
    return f"{rt.value:.3f} [{rt.low:.3f}, {rt.high:.3f}]{tail}"
