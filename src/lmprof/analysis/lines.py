"""What the sweep plots share: the lines of one metric against the swept value (whiskers,
rings round flagged points, failure markers), the panels' figure, and the words of a reading.

plots.py (sequence length, batch size) and scaling.py (model size, GPU count) draw with these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from . import uncertainty
from .common import Context, Series, Skip, series_of
from .load import Run
from .style import (
    FAIL_COLOR,
    TOKENS_LABEL,
    figure,
    fmt_num,
    fmt_tick,
    footnote,
    mark_failures,
    save,
    set_x,
    tokens_axis,
)

NOISY_COLOR = "#888888"
MEM_LABEL = "peak memory (GB: GPU allocated; host RSS for CPU runs)"
MFU_LABEL = "MFU (% of peak FLOP/s)"


def seq(r: Run) -> float | None:
    return r.pos("sequence_length")


def bs(r: Run) -> float | None:
    return r.pos("batch_size")


def mfu_pct(r: Run) -> float | None:
    return None if r.mfu is None else r.mfu * 100.0


def ring(
    ax: Any, points: Sequence[tuple[float, float]], label: str, color: str = FAIL_COLOR
) -> None:
    """A ring round points that stay on the chart but are flagged (red: implausible)."""
    if points:
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            linestyle="none",
            marker="o",
            markersize=15,
            markerfacecolor="none",
            markeredgecolor=color,
            markeredgewidth=2,
            label=label,
            zorder=6,
        )


def draw(
    ax: Any,
    series: Sequence[Series],
    ylabel: str,
    metric: Callable[[Run], float | None] | None = None,
) -> None:
    """Lines per series, 95% whiskers where repeats give them, flagged points ringed, failures
    marked along the top."""
    top = max((p[1] for s in series for p in s.points), default=1.0)
    for s in series:
        if s.points:
            xs, ys = [p[0] for p in s.points], [p[1] for p in s.points]
            ax.plot(xs, ys, marker="o", color=s.color, label=s.label, linewidth=2)
            cis = [uncertainty.spread(r, metric) if metric else None for _, _, r in s.points]
            if any(cis):
                low = [y - ci[0] if ci else 0.0 for y, ci in zip(ys, cis, strict=True)]
                high = [ci[1] - y if ci else 0.0 for y, ci in zip(ys, cis, strict=True)]
                ax.errorbar(
                    xs,
                    ys,
                    yerr=[[max(v, 0.0) for v in low], [max(v, 0.0) for v in high]],
                    fmt="none",
                    ecolor=s.color,
                    elinewidth=1.2,
                    capsize=4,
                )
                top = max([top, *(ci[1] for ci in cis if ci)])
            if ylabel == MFU_LABEL:
                ring(ax, [(x, y) for x, y in zip(xs, ys, strict=True) if y > 100],
                      "impossible (MFU > 100%)")  # fmt: skip
            if ylabel == TOKENS_LABEL:
                ring(
                    ax,
                    [(x, y) for x, y, r in s.points if uncertainty.disagreements(r)],
                    "flagged: repeats disagree beyond their intervals",
                )
                ring(
                    ax,
                    [(x, y) for x, y, r in s.points if uncertainty.is_noisy(r)],
                    "noisy timing: no verdict from this point",
                    NOISY_COLOR,
                )
        mark_failures(ax, [(x, r.status, s.color) for x, r in s.failed])
    ax.set_ylabel(ylabel)
    if ylabel == TOKENS_LABEL:
        tokens_axis(ax)
    ax.set_ylim(bottom=0)
    # Headroom above the data for the failure markers at the top of the axis.
    ax.set_ylim(top=top * (1.25 if any(s.failed for s in series) else 1.08))


def legend(ax: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=False))
    # The failure marker's entry goes last, after the configurations.
    uniq = dict(sorted(uniq.items(), key=lambda kv: kv[0].startswith("stopped early")))
    if uniq:
        # Below the axes: inside, it can hide the failure markers along the top edge.
        ax.legend(
            uniq.values(),
            uniq.keys(),
            fontsize=9,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.13),
            ncol=min(len(uniq), 3),
            frameon=False,
        )


def sweep(
    ctx: Context,
    file: str,
    title: str,
    runs: Sequence[Run],
    x: Callable[[Run], float | None],
    xlabel: str,
    xdim: str,
    panels: Sequence[tuple[Callable[[Run], float | None], str]],
    extra: Callable[[Any, Sequence[Series]], None] | None = None,
) -> list[list[Series]]:
    """One figure with a panel per metric; returns each panel's series for the reading."""
    found = [series_of(ctx, runs, x, y, exclude=(xdim,)) for y, _ in panels]
    if not found[0][0]:
        raise Skip(f"no run has both a {xlabel.split(' (')[0]} and a {panels[0][1].split(' (')[0]}")
    fig, axes = figure(ncols=len(panels))
    out, undrawn_all = [], {}
    for ax, (series, undrawn), (metric, ylabel) in zip(axes[0], found, panels, strict=True):
        out.append(series)
        undrawn_all.update({r.line: r for r in undrawn})
        draw(ax, series, ylabel, metric)
        if extra is not None and ax is axes[0][0]:
            extra(ax, series)
        set_x(
            ax,
            [p[0] for s in series for p in s.points] + [f[0] for s in series for f in s.failed],
            xlabel,
        )
        legend(ax)
    fig.suptitle(title, fontsize=13)
    footnote(fig, list(undrawn_all.values()), "not run, or no value")
    save(fig, ctx.out / file)
    return out


def require(
    runs: Sequence[Run],
    what: str,
    metric: Callable[[Run], float | None] | None = None,
    name: str = "",
) -> None:
    if not runs:
        raise Skip(f"no runs tagged {what}")
    if metric is not None and not any(r.measured and metric(r) is not None for r in runs):
        raise Skip(f"no run tagged {what} recorded {name}")


def prefix(series: Sequence[Series], s: Series) -> str:
    return f"For {s.label}, " if len(series) > 1 else ""


def growth(
    series: Sequence[Series],
    noun: str,
    fmt: Callable[[float], str],
    at: Callable[[float], str],
    what: str,
) -> str:
    """'peak memory grows from 2.00 GB at 128 tokens to 11.8 GB at 1024 tokens (5.9x for 8x the
    length)' for the series with the most points."""
    s = max(series, key=lambda s: len(s.points), default=None)
    if s is None or not s.points:
        return ""
    (x0, y0, _), (x1, y1, _) = s.points[0], s.points[-1]
    if len(s.points) < 2:
        return f"{prefix(series, s)}{noun} was {fmt(y0)} at {at(x0)}"
    verb = "grows" if y1 >= y0 else "falls"
    return (
        f"{prefix(series, s)}{noun} {verb} from {fmt(y0)} at {at(x0)} to {fmt(y1)} at "
        f"{at(x1)} ({y1 / y0:.2g}x for {x1 / x0:.3g}x the {what})"
    )


def gb(y: float) -> str:
    return f"{y:.2f} GB"


def pct(y: float) -> str:
    return f"{y:.1f}%"


def tps(y: float) -> str:
    return f"{fmt_num(y)} tokens/s"


def tokens(x: float) -> str:
    return f"{fmt_tick(x)} tokens"


def batch(x: float) -> str:
    return f"batch {fmt_tick(x)}"


def gpu_prediction(r) -> float | None:
    """The memory model predicts the GPU allocator's peak; a CPU run's host RSS is no match."""
    return r.pos("predicted_peak_mem_gb") if r.pos("peak_gpu_mem_gb") else None
