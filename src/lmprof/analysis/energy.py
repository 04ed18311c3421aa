"""Energy against speed: joules per token vs tokens/s, one panel per tag, with the frontier.

A setting can be faster and dearer in energy (more power for more throughput), or both faster
and cheaper (less work per token). The Pareto-optimal runs are the ones no other run of the tag
beats on both; the rest are dominated: something else is at least as fast for no more energy.
The columns are the ones lmprof.profiling.energy produces for the steady window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from . import uncertainty
from .common import Context, Plot, Skip, sentence
from .load import JOULES_PER_TOKEN, Run
from .style import FAIL_COLOR, figure, fmt_num, save

FILE = "energy_per_token_vs_throughput.png"


def _jpt(r: Run) -> float | None:
    return r.pos(JOULES_PER_TOKEN)


def _tps(r: Run) -> float | None:
    return r.tokens_per_sec


def pareto(points: Sequence[tuple[float, float, Run]]) -> list[Run]:
    """The runs no other beats on both: at least as fast and at most as many joules per token,
    strictly better on one. `points` are (tokens/s, J/token, run)."""
    front = []
    for x, y, r in points:
        dominated = any(
            (x2 >= x and y2 <= y) and (x2 > x or y2 < y) for x2, y2, _ in points if _ is not r
        )
        if not dominated:
            front.append(r)
    return front


def _points(runs: Sequence[Run]) -> list[tuple[float, float, Run]]:
    return [
        (x, y, r)
        for r in runs
        if r.measured and (x := _tps(r)) is not None and (y := _jpt(r)) is not None
    ]


def energy_vs_throughput(ctx: Context) -> list[Plot]:
    by_tag = {t: _points([r for r in ctx.table.runs if r.tag == t]) for t in ctx.table.tags}
    by_tag = {t: p for t, p in by_tag.items() if p}
    if not by_tag:
        raise Skip(
            f"no run recorded {JOULES_PER_TOKEN} (the energy columns are empty: energy "
            "measurement was off, or neither NVML nor RAPL could be read)"
        )
    ncols = 1 if len(by_tag) == 1 else 2
    nrows = math.ceil(len(by_tag) / ncols)
    fig, axes = figure(ncols=ncols, nrows=nrows, width=7.0 if ncols > 1 else 8.5, height=4.8)
    from matplotlib.ticker import FuncFormatter

    clauses = []
    for ax, (tag, pts) in zip(axes.flat, by_tag.items(), strict=False):
        front = pareto(pts)
        for x, y, r in pts:
            on = r in front
            xci, yci = uncertainty.spread(r, _tps), uncertainty.spread(r, _jpt)
            ax.errorbar(
                [x],
                [y],
                xerr=None if xci is None else [[max(x - xci[0], 0)], [max(xci[1] - x, 0)]],
                yerr=None if yci is None else [[max(y - yci[0], 0)], [max(yci[1] - y, 0)]],
                fmt="o",
                markersize=10 if on else 6,
                color=ctx.palette(r.name),
                markeredgecolor="black" if on else "none",
                markeredgewidth=1.5,
                ecolor="#888888",
                capsize=3,
                zorder=4 if on else 3,
            )
            ax.annotate(
                r.name,
                (x, y),
                xytext=(6, 5),
                textcoords="offset points",
                fontsize=7,
                fontweight="bold" if on else "normal",
            )
        # The frontier as a staircase: from the most frugal to the fastest.
        fx = sorted((x, y) for x, y, r in pts if r in front)
        if len(fx) > 1:
            ax.plot(
                [p[0] for p in fx],
                [p[1] for p in fx],
                drawstyle="steps-post",
                color=FAIL_COLOR,
                linestyle="--",
                linewidth=1.2,
                label="Pareto frontier (fast and frugal)",
            )
        ax.plot([], [], "o", color="white", markeredgecolor="black", markeredgewidth=1.5,
                markersize=9, label="Pareto-optimal run")  # fmt: skip
        ax.set_xlabel("throughput (tokens/s, all GPUs)")
        ax.set_ylabel("energy (J per token, all GPUs)")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt_num(v) if v else "0"))
        ax.set_xlim(left=0, right=max(p[0] for p in pts) * 1.2)
        ax.set_ylim(bottom=0, top=max(p[1] for p in pts) * 1.2)
        ax.set_title(f"tag: {tag}" if tag else "untagged runs", fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
        clauses.append(_reading(tag, pts, front, len(by_tag) > 1))
    for ax in list(axes.flat)[len(by_tag) :]:
        ax.set_visible(False)
    fig.suptitle("Energy per token vs throughput (large, black-edged: Pareto-optimal)", fontsize=13)
    save(fig, ctx.out / FILE)
    return [Plot(FILE, "Energy per token vs throughput", sentence(*clauses), ctx.out / FILE)]


def _reading(tag: str, pts: list[tuple[float, float, Run]], front: list[Run], many: bool) -> str:
    where = f"in tag {tag or '(untagged)'}, " if many else ""
    fastest = max(pts, key=lambda p: p[0])
    frugal = min(pts, key=lambda p: p[1])
    names = ", ".join(r.name for r in front)
    text = (
        f"{where}{len(front)} of {len(pts)} run(s) are Pareto-optimal ({names}); the fastest, "
        f"{fastest[2].name}, gives {fmt_num(fastest[0])} tokens/s at {fastest[1]:.3g} J/token"
    )
    if frugal[2] is not fastest[2]:
        text += f", the most frugal, {frugal[2].name}, {frugal[1]:.3g} J/token"
    else:
        text += ", and is also the most frugal"
    return text
