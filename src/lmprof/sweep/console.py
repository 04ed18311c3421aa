"""What the sweep prints: a line per run as it ends, the summary table, the --dry-run plan."""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from lmprof.status import OK
from lmprof.sweep.outcome import Outcome, SweepReport
from lmprof.sweep.plan import RunPlan
from lmprof.sweep.resume import decide, load_history


def _float(row: Mapping[str, str] | None, *keys: str) -> float | None:
    for k in keys:
        with contextlib.suppress(TypeError, ValueError):
            v = float((row or {}).get(k) or "nan")
            if v == v:  # not NaN
                return v
    return None


def _tps(row: Mapping[str, str] | None) -> str:
    v = _float(row, "steady_tokens_per_sec", "throughput")
    if v is None:
        return ""
    return (
        f"{v / 1e6:.2f}M tok/s"
        if v >= 1e6
        else f"{v / 1e3:.1f}k tok/s"
        if v >= 1e3
        else f"{v:.0f} tok/s"
    )


def _peak(row: Mapping[str, str] | None) -> str:
    v = _float(row, "peak_gpu_mem_gb")
    return f"peak {v:.2f} GB" if v else ""


def _ppl(row: Mapping[str, str] | None) -> str:
    v = _float(row, "eval_perplexity")
    return f"ppl {v:.2f}" if v is not None else ""


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


def one_line(text: str) -> str:
    return " ".join(text.split())


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart, under a header and a rule."""
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    fmt = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def outcome_line(i: int, n: int, o: Outcome, name_width: int) -> str:
    """The line printed as run i of n ends."""
    w = len(str(n))
    head = f"[{i:>{w}}/{n}] {o.plan.name:<{name_width}} {o.status:<11}"
    if o.status == OK and o.row:
        metrics = "  ".join(x for x in (_tps(o.row), _peak(o.row), _ppl(o.row)) if x)
    else:
        metrics = one_line(o.detail)
    if o.note:
        metrics = f"{metrics}  ({o.note})" if metrics else f"({o.note})"
    took = duration(o.elapsed) if o.elapsed is not None else ""
    return f"{head} {metrics}  {took}".rstrip()


def latest_point(metrics_csv: Path, since: float) -> dict[str, str] | None:
    """The last whole row of a running run's metrics CSV, if written after `since` (a time.time
    value): the file of an earlier attempt is not this run's progress."""
    try:
        if os.path.getmtime(metrics_csv) < since:
            return None
        with open(metrics_csv, "rb") as f:
            header = f.readline().decode(errors="replace")
            f.seek(0, os.SEEK_END)
            f.seek(max(len(header), f.tell() - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    # Only lines ended by a newline: the child may be halfway through writing the last one.
    lines = [ln for ln in tail.split("\n")[:-1] if ln.strip()]
    if not lines or not header.strip():
        return None
    cols = next(csv.reader([header]))
    values = next(csv.reader([lines[-1]]))
    return dict(zip(cols, values, strict=False)) if len(values) == len(cols) else None


def progress_line(
    i: int,
    n: int,
    name: str,
    max_steps: int,
    point: Mapping[str, str] | None,
    run_elapsed: float,
    sweep_elapsed: float,
    eta: float | None,
) -> str:
    """The running run (its latest logged step, loss and tokens/s) and the sweep as a whole."""
    run = f"[{i}/{n}] {name} {duration(run_elapsed)}"
    if point:
        loss = _float(point, "loss")
        tps = _tps({"throughput": point.get("tokens_per_sec", "")})
        run += f"  step {point.get('step', '?')}/{max_steps}"
        run += f" loss {loss:.3f}" if loss is not None else ""
        run += f" {tps}" if tps else ""
    else:
        run += "  starting"
    left = f"ETA {duration(eta)}" if eta is not None else "ETA after the first run"
    return f"{run}  |  {i - 1}/{n} runs done, {duration(sweep_elapsed)} elapsed, {left}"


def format_summary(report: SweepReport) -> str:
    rows = []
    for o in report.outcomes:
        time_s = duration(o.elapsed) if o.elapsed is not None else ""
        # Whole: a reason cut at a column width is a reason the user cannot act on.
        note = (
            o.note if o.status == OK else one_line(f"{o.detail} ({o.note})" if o.note else o.detail)
        )
        rows.append(
            [
                str(o.plan.index),
                o.plan.name,
                o.plan.tag,
                o.status,
                _tps(o.row).replace(" tok/s", ""),
                _peak(o.row).replace("peak ", "").replace(" GB", ""),
                _ppl(o.row).replace("ppl ", ""),
                time_s,
                note,
            ]
        )
    lines = ["", "Summary"]
    lines += table(
        ["#", "run", "tag", "status", "tok/s", "peak GB", "eval ppl", "time", "note"], rows
    )
    counts: dict[str, int] = {}
    for o in report.outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    tally = ", ".join(f"{v} {k}" for k, v in counts.items())
    lines.append(f"{len(report.outcomes)} of {report.total} runs: {tally or 'none'}")
    if report.interrupted:
        left = report.total - len(report.outcomes)
        lines.append(f"interrupted: {left} run(s) not started; rerun the same command to resume")
    if any(o.note.startswith("earlier;") for o in report.outcomes):
        lines.append(
            "runs that diverged or timed out in an earlier sweep were kept; --retry-failed "
            "reruns them"
        )
    return "\n".join(lines)


def format_warnings(plans: Sequence[RunPlan]) -> str | None:
    """One line for the runs whose warm-up outlasts them (config.warmup_warning)."""
    from lmprof.config import warmup_warning

    hit = [p for p in plans if warmup_warning(p.cfg)]
    if not hit:
        return None
    runs = ", ".join(
        f"{p.name} ({p.cfg.training.warmup_steps} >= {p.cfg.training.max_steps})" for p in hit
    )
    return (
        f"warning: training.warmup_steps >= training.max_steps in {len(hit)} run(s), so their "
        f"learning rate never reaches its peak: {runs}"
    )


def format_rounds(plans: Sequence[RunPlan]) -> str | None:
    """The line that says repeats are interleaved, when any run is repeated."""
    rounds = max((p.round for p in plans), default=1)
    if rounds < 2:
        return None
    return (
        f"repeats are interleaved: {rounds} rounds, each running every repeated configuration "
        "once (a b a b, not a a b b), so a slow spell of the machine hits all of them alike"
    )


def format_plan(plans: Sequence[RunPlan], force: bool = False, retry_failed: bool = False) -> str:
    """The --dry-run listing: what each run changes, its GPUs and what the sweep would do."""
    history = load_history(plans)
    rows, notes, counts = [], {}, {"run": 0, "done": 0, "kept": 0, "skip": 0}
    for p in plans:
        action, prior = decide(p, history.get(p.identity, []), force, retry_failed)
        counts[action] += 1
        what = {
            "run": "run",
            "done": f"skip: done ({prior['status'] if prior else ''})",
            "kept": f"skip: {prior['status'] if prior else ''} earlier",
            "skip": "not runnable here",
        }[action]
        rows.append(
            [
                str(p.index),
                p.name,
                ",".join(p.tags),
                str(p.num_gpus),
                what,
                p.describe_changes() or "(base_config)",
            ]
        )
        if action == "skip":
            notes[p.name] = p.unrunnable
    lines = table(
        ["#", "run", "tags", "gpus", "plan", "settings that differ from base_config"], rows
    )
    out = []
    for line, p in zip(lines[2:], plans, strict=True):
        out.append(line)
        if p.name in notes:
            out.append(f"      -> {notes[p.name]}")
    rounds = format_rounds(plans)
    summary = (
        ("" if rounds is None else rounds + "\n")
        + f"{len(plans)} runs: {counts['run']} to run, {counts['done']} done earlier, "
        f"{counts['kept']} diverged or timed out earlier (kept; --retry-failed reruns them), "
        f"{counts['skip']} not runnable on this machine (recorded as skipped)"
    )
    return "\n".join([*lines[:2], *out, summary])
