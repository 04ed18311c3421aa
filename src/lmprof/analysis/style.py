"""Figure plumbing shared by every plot: lazy matplotlib, colours, axes and failure markers."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lmprof import attention_kernels, precision
from lmprof.errors import UserError
from lmprof.io import atomic_write_bytes

from .load import Run

DPI = 110
TOKENS_LABEL = "throughput (tokens/s, all GPUs)"

# Configurations that recur across figures get fixed colours, so fp16 is orange in the batch
# plots, the precision comparison and everywhere else.
FIXED_COLORS = {
    **{p.name: p.color for p in precision.PRECISIONS.values()},
    "baseline": "#7f7f7f",
    **{k.name: k.color for k in attention_kernels.KERNELS.values()},
    "gradient_checkpointing": "#393b79",
    "selective_checkpointing": "#6b6ecf",
    "compile": "#637939",
}
# Strong colours the fixed configurations do not use come first, so per-run lines stay legible.
_POOL = (
    "#3182bd",
    "#e6550d",
    "#31a354",
    "#756bb1",
    "#bd9e39",
    "#ce6dbd",
    "#636363",
    "#843c39",
    "#5254a3",
    "#8ca252",
    "#d6616b",
    "#7b4173",
    "#8c6d31",
    "#ad494a",
    "#a55194",
    "#6baed6",
    "#fd8d3c",
    "#74c476",
    "#9e9ac8",
    "#e7ba52",
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
FAIL_COLOR = "#c0392b"


class Palette:
    """One colour per configuration label for the whole analysis, assigned on first use."""

    def __init__(self) -> None:
        self._assigned: dict[str, str] = dict(FIXED_COLORS)
        self._next = 0

    def __call__(self, key: str) -> str:
        if key not in self._assigned:
            # Prefer colours no fixed configuration owns; past the pool, reuse it in order.
            free = [c for c in _POOL if c not in self._assigned.values()]
            pick = free[0] if free else _POOL[self._next % len(_POOL)]
            self._next += 1
            self._assigned[key] = pick
        return self._assigned[key]


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(
            "plots need matplotlib, which is not installed: pip install 'lmprof[analysis]'"
        ) from None
    return Figure, FigureCanvasAgg


def matplotlib_missing() -> str | None:
    """Why no plot can be drawn here (matplotlib absent or broken), or None when they can."""
    try:
        _matplotlib()
    except UserError as e:
        return str(e)
    return None


@contextlib.contextmanager
def plain_text() -> Iterator[None]:
    """Every figure drawn inside shows its text as written: tags and run names are the user's
    text, and matplotlib would parse `$...$` in them as mathtext (a crash on `$\\frac{a$`) or
    send all of it through LaTeX where a matplotlibrc sets text.usetex. The rcParam is read as
    each text is made, from the first title to the tick labels drawn at save time, so the whole
    plotting pass runs inside. (No axis of ours uses mathtext: the log axes' ticks are plain.)"""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        yield


def figure(
    ncols: int = 1, nrows: int = 1, width: float = 7.5, height: float = 4.8
) -> tuple[Any, Any]:
    """A Figure on the Agg canvas (no pyplot: no global state, no GUI backend) and its axes."""
    Figure, FigureCanvasAgg = _matplotlib()
    fig = Figure(figsize=(width * ncols, height * nrows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.grid(True, which="major", alpha=0.3)
    return fig, axes


def save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    # Tight: a footnote or a legend below the axes is kept whole, never cut at the edge.
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.08)
    atomic_write_bytes(path, buf.getvalue())


def doubling(values: Sequence[float]) -> bool:
    """True when the sorted values step by factors of two (a sweep that doubles)."""
    xs = sorted(set(v for v in values if v and v > 0))
    if len(xs) < 2:
        return False
    return all(
        abs(math.log2(b / a) - round(math.log2(b / a))) < 0.05
        for a, b in zip(xs, xs[1:], strict=False)
    )


def set_x(ax: Any, values: Sequence[float], label: str) -> None:
    """Log2 axis with a tick per value for doubling sweeps, log10 for wide ranges, else linear."""
    xs = sorted(set(v for v in values if v is not None and v > 0))
    ax.set_xlabel(label)
    if not xs:
        return
    if doubling(xs):
        ax.set_xscale("log", base=2)
    elif xs[-1] / xs[0] >= 8:
        ax.set_xscale("log")
    else:
        return
    ax.set_xticks(xs)
    ax.set_xticklabels([fmt_tick(x) for x in xs])
    ax.minorticks_off()
    pad = 2**0.25 if doubling(xs) else 10**0.08
    ax.set_xlim(xs[0] / pad, xs[-1] * pad)


def fmt_tick(x: float) -> str:
    if float(x).is_integer():
        return f"{int(x)}"
    return f"{x:.3g}"


def tokens_axis(ax: Any) -> None:
    """tokens/s ticks as 50k, 1.2M rather than 50000, 1200000."""
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt_num(v) if v else "0"))


def fmt_num(x: float | None, digits: int = 3) -> str:
    """Short human number: 12.3k, 1.2M, 45.6."""
    if x is None:
        return "n/a"
    ax = abs(x)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if ax >= div:
            return f"{x / div:.{digits}g}{suffix}"
    return f"{x:.{digits}g}"


def mark_failures(ax: Any, failures: Sequence[tuple[float, str, str]]) -> None:
    """Runs that stopped early, as a marker at the top of the axis (the limit they hit)."""
    if not failures:
        return
    tr = ax.get_xaxis_transform()  # x in data units, y in axes fraction
    for x, status, color in failures:
        ax.plot(
            [x],
            [0.94],
            marker="X",
            markersize=11,
            color=color,
            markeredgecolor=FAIL_COLOR,
            markeredgewidth=1.5,
            linestyle="none",
            transform=tr,
            clip_on=False,
            zorder=5,
        )
        ax.annotate(
            status.upper() if status == "oom" else status,
            (x, 0.94),
            xycoords=tr,
            xytext=(0, -14),
            textcoords="offset points",
            ha="center",
            fontsize=8,
            color=FAIL_COLOR,
            fontweight="bold",
        )
    # The legend names the statuses drawn, not a fixed pair that may be neither.
    seen = ", ".join(dict.fromkeys(s.upper() if s == "oom" else s for _, s, _ in failures))
    ax.plot(
        [],
        [],
        marker="X",
        color="white",
        markeredgecolor=FAIL_COLOR,
        markeredgewidth=1.5,
        linestyle="none",
        markersize=9,
        label=f"stopped early ({seen})",
    )


def footnote(fig: Any, runs: Sequence[Run], why: str) -> None:
    """Name runs a figure could not draw, so none goes missing silently."""
    if not runs:
        return
    import textwrap

    names = ", ".join(f"{r.name} ({r.status})" for r in runs[:6])
    more = f" and {len(runs) - 6} more" if len(runs) > 6 else ""
    # Wrapped to the figure's width (about 17 characters per inch at 7 pt), so no line is cut.
    width = max(int(fig.get_figwidth() * 17), 40)
    lines = textwrap.wrap(f"Not drawn ({why}): {names}{more}", width)
    fig.text(
        0.005,
        0.003,
        "\n".join(lines),
        fontsize=7,
        color="#555555",
        ha="left",
        va="bottom",
    )
    share = min(0.03 * len(lines) + 0.01, 0.3) * 4.8 / fig.get_figheight()
    fig.get_layout_engine().set(rect=(0, share, 1, 1 - share))
