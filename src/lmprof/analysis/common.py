"""What every plot module shares: the analysis context, the plot record, series grouping."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .load import FAILED, Curve, Run, Table, read_curve
from .style import Palette


class Skip(Exception):
    """A plot that does not apply to this input; the message says why."""


@dataclass
class Plot:
    file: str
    title: str
    reading: str
    path: Path


@dataclass
class Context:
    table: Table
    out: Path
    details: Path | None
    palette: Palette = field(default_factory=Palette)
    target_loss: float | None = None  # --target-loss; None: each tag's worst final eval loss
    _curves: dict[str, Curve | None] = field(default_factory=dict)

    def curve(self, run: Run) -> Curve | None:
        """The curves of exactly this row: the files of its attempt (None: it wrote none)."""
        stem = run.stem
        if self.details is None or stem is None:
            return None
        if stem not in self._curves:
            self._curves[stem] = read_curve(self.details, stem)
        return self._curves[stem]


STATUS_WORDS = {
    "oom": "ran out of memory",
    "failed": "failed",
    "timeout": "timed out",
    "interrupted": "was interrupted",
    "skipped": "was skipped",
    "diverged": "diverged",
}


def _model(r: Run) -> str:
    layers, width = r.get("n_layers"), r.get("d_model")
    return f"{layers}L x {width}d" if layers and width else ""


# Configuration dimensions that can tell two series apart, with how each reads in a legend.
DIMS: dict[str, tuple[Callable[[Run], object], Callable[[object], str]]] = {
    "precision": (lambda r: r.precision, str),
    "batch_size": (lambda r: r.get("batch_size"), lambda v: f"batch {v}"),
    "sequence_length": (lambda r: r.get("sequence_length"), lambda v: f"seq {v}"),
    "attention": (lambda r: r.attention, lambda v: f"{v} attention"),
    "checkpointing": (lambda r: r.checkpointing, lambda v: f"ckpt {v}"),
    "compile": (lambda r: r.compiled, lambda v: "compiled" if v else "eager"),
    "gpus": (lambda r: r.gpus, lambda v: f"{v} GPU" + ("s" if v != 1 else "")),
    "model": (_model, str),
}


@dataclass
class Series:
    label: str
    color: str
    points: list[tuple[float, float, Run]] = field(default_factory=list)  # measured, by x
    failed: list[tuple[float, Run]] = field(default_factory=list)

    def at(self, x: float) -> float | None:
        return next((y for px, y, _ in self.points if px == x), None)

    def run_at(self, x: float) -> Run | None:
        return next((r for px, _, r in self.points if px == x), None)


def series_of(
    ctx: Context,
    runs: Sequence[Run],
    x: Callable[[Run], float | None],
    y: Callable[[Run], float | None],
    exclude: Sequence[str],
) -> tuple[list[Series], list[Run]]:
    """Runs split into series by the configuration that varies besides x, and the runs that
    fit no point (not run, no x, or no value)."""
    varying = [d for d in DIMS if d not in exclude and len({DIMS[d][0](r) for r in runs}) > 1]

    def label(r: Run) -> str:
        # With nothing else varying, the precision names the series, so it keeps its colour.
        if not varying:
            return r.precision
        return ", ".join(DIMS[d][1](DIMS[d][0](r)) for d in varying)

    series: dict[str, Series] = {}
    undrawn: list[Run] = []
    for r in runs:
        xv = x(r)
        yv = y(r) if r.measured else None
        if xv is None or (yv is None and r.status not in FAILED):
            undrawn.append(r)
            continue
        lab = label(r)
        s = series.setdefault(lab, Series(lab, ctx.palette(lab)))
        if yv is not None:
            s.points.append((xv, yv, r))
        else:
            s.failed.append((xv, r))
    for s in series.values():
        s.points.sort(key=lambda p: p[0])
        s.failed.sort(key=lambda p: p[0])
    # A series with nothing measured still shows its failures; one with neither is dropped.
    return [s for s in series.values() if s.points or s.failed], undrawn


def sentence(*clauses: str) -> str:
    """Clauses joined by semicolons into one sentence, capitalised and ended with a period."""
    text = "; ".join(c for c in clauses if c)
    if not text:
        return ""
    # 'peak memory ...' becomes 'Peak memory ...'; an identifier (fp16, seq_len_128) stays as is.
    first = text.split(" ", 1)[0]
    if first.isalpha() and first.islower():
        text = text[:1].upper() + text[1:]
    return text + "."


def failure_clause(series: Sequence[Series], fmt: Callable[[float], str]) -> str:
    """'the largest that fit was 1024; 2048 ran out of memory', per series that had failures."""
    parts = []
    for s in series:
        if not s.failed:
            continue
        fit = [x for x, _, _ in s.points]
        words = [f"{fmt(x)} {STATUS_WORDS.get(r.status, r.status)}" for x, r in s.failed]
        if fit and all(r.status == "oom" and x > max(fit) for x, r in s.failed):
            words.insert(0, f"the largest that fit was {fmt(max(fit))}")
        parts.append(
            f"for {s.label}, {' and '.join(words)}" if len(series) > 1 else "; ".join(words)
        )
    return "; ".join(parts)


def pct_change(new: float, base: float) -> float:
    return (new / base - 1.0) * 100.0


def more_less(new: float, base: float, noun: str, other: str = "") -> str:
    """'31% less memory than fp32', or 'the same memory as fp32' within half a percent."""
    change = pct_change(new, base)
    if abs(change) < 0.5:
        return f"the same {noun}" + (f" as {other}" if other else "")
    return f"{abs(change):.0f}% {'more' if change > 0 else 'less'} {noun}" + (
        f" than {other}" if other else ""
    )
