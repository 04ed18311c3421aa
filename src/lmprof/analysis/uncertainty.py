"""Intervals for what the analysis compares: a run's (or its replicates') throughput, and the
ratio of two of them, with the words a sentence may use (lmprof.stats does the arithmetic).

A ratio is a verdict only where lmprof.stats.ratio's basis allows one, and here two more
conditions: repeats must have been interleaved (their start times overlap, so a slow spell of
the machine hit both sides), and a comparison that another sweep measured too must agree with
it within both intervals; otherwise it is a contradiction, shown once, with no verdict.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Sequence

from lmprof.stats import REPEATS, SINGLE, Estimate, Ratio, from_runs, from_spread, ratio

from .load import Run, Table

NOT_INTERLEAVED = "repeats not interleaved"
CONTRADICTION = "contradiction"

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
        return from_spread(value, None, None, one.noisy)
    # A rate is tokens over the median step time: its interval is the step time's, inverted.
    return from_spread(value, value * mid / hi, value * mid / lo, one.noisy)


def is_noisy(run: Run) -> bool:
    """A single run whose throughput can support no verdict (lmprof.stats: its noisy flag or
    a wide median interval); repeats are judged by their spread instead."""
    est = estimate(run)
    return est is not None and est.n < 2 and est.noisy


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
    """new / base, with the verdict withheld where the data cannot support one."""
    a, b = estimate(new, metric), estimate(base, metric)
    if a is None or b is None:
        return None
    rt = ratio(a, b)
    if rt.basis == REPEATS and _interleaved(new, base) is False:
        rt = rt.withheld(
            NOT_INTERLEAVED,
            "one side's repeats all ran before the other's, so a slow spell of the machine "
            "may have hit one side only; run them in one sweep with --repeat (interleaved)",
        )
    found = contradiction(new, base, metric)
    if found:
        rt = rt.withheld(CONTRADICTION, found)
    return rt


def _started(r: Run) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(r.get("started_at"))
    except ValueError:
        return None


def _interleaved(new: Run, base: Run) -> bool | None:
    """Whether the two sides' repeats ran mixed in time; None where a start time is missing."""
    sides = []
    for side in (new, base):
        times = [_started(m) for m in side.replicates if m.measured]
        if not times or None in times:
            return None
        sides.append(times)
    (a, b) = sides
    try:
        return max(a) > min(b) and max(b) > min(a)
    except TypeError:  # one naive, one aware timestamp: cannot be ordered
        return None


def by_sweep(run: Run) -> dict[str, Run]:
    """The configuration as each sweep measured it: its replicates' measured rows of that sweep
    (rows without a sweep id, from `lmprof run`, are in none)."""
    found: dict[str, list[Run]] = {}
    for m in run.replicates:
        seen: dict[str, Run] = {}
        for row in m.rows or [m]:
            if row.measured and row.sweep:
                seen[row.sweep] = row  # a sweep's latest row of this replicate
        for sweep, row in seen.items():
            found.setdefault(sweep, []).append(row)
    return {
        s: (rows[0] if len(rows) == 1 else Run(rows[0].row, rows[0].line, rows))
        for s, rows in found.items()
    }


def contradiction(new: Run, base: Run, metric: Metric = _tps) -> str:
    """'' unless two sweeps measured this comparison and their intervals do not overlap: then
    what each said (so it is reported once, as a contradiction, not as two findings)."""
    a, b = by_sweep(new), by_sweep(base)
    found: list[tuple[str, Ratio]] = []
    for sweep in a.keys() & b.keys():
        ea, eb = estimate(a[sweep], metric), estimate(b[sweep], metric)
        if ea is not None and eb is not None and (rt := ratio(ea, eb)).known:
            found.append((sweep, rt))
    found.sort()
    for i, (s1, r1) in enumerate(found):
        for s2, r2 in found[i + 1 :]:
            if r1.high < r2.low or r2.high < r1.low:
                return (
                    f"sweep {s1} measured {r1.text()} and sweep {s2} {r2.text()}: each interval "
                    "excludes the other's value, so something changed between the sweeps (load, "
                    "clocks, the machine) more than either run shows"
                )
    return ""


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
    noisy = [m for r in table.runs for m in r.replicates if m.measured and m.noisy]
    if noisy:
        measured = sum(m.measured for r in table.runs for m in r.replicates)
        reasons = sorted({_reason_kind(m.get("noisy_reason")) for m in noisy})
        out.append(
            f"noisy timing in {len(noisy)} of {measured} measured runs "
            f"({', '.join(m.name for m in noisy[:12])}{', ...' if len(noisy) > 12 else ''}; "
            f"{'; '.join(reasons)}): a comparison with a noisy single run says "
            "'noisy: no verdict' (rerun with --repeat 3, on a quieter machine, or longer)"
        )
    return out


def _reason_kind(reason: str) -> str:
    """A noisy reason without its run's numbers, so one line covers many runs."""
    if not reason:
        return "see each run's log"
    if "too few" in reason or "fewer than" in reason:
        return "too few steady steps"
    if "too spread" in reason:
        return "the median step time too spread"
    return reason.split(":")[0]


def ratio_cell(rt: Ratio | None) -> str:
    """A ratio for a table cell: value [low, high] with what it may say: no verdict (and why
    in a word), no measurable difference, or that it rests on single runs."""
    if rt is None:
        return ""
    if not rt.known:
        return f"{rt.value:.3f} ({rt.no_verdict})"
    text = f"{rt.value:.3f} [{rt.low:.3f}, {rt.high:.3f}]"
    if not rt.is_verdict:
        return f"{text} ({rt.no_verdict})"
    if rt.includes_one:
        return f"{text} (no measurable difference)"
    return f"{text} ({SINGLE})" if rt.basis == SINGLE else text


def change_cell(rt: Ratio | None, new: float | None, old: float | None) -> str:
    """A percentage change for a table cell, or the mark that withholds it: never a bare
    percentage from data that cannot support it."""
    if new is None or not old:
        return ""
    if rt is not None and not rt.is_verdict:
        return rt.no_verdict
    return f"{(new / old - 1) * 100:+.1f}"


def withheld(ratios: Sequence[Ratio | None]) -> list[Ratio]:
    return [rt for rt in ratios if rt is not None and not rt.is_verdict]
