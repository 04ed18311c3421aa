"""Training curves from results/details: perplexity per step, loss per token and per second.

One panel per tag, so a 50-step batch sweep and an 8000-step quality run are not squeezed onto
one axis; each run keeps its colour in every curve figure; evaluations are the larger markers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .common import Context, Plot, Skip
from .load import Curve, Run
from .style import figure, fmt_num, save


def _with_curves(ctx: Context) -> list[tuple[Run, Curve]]:
    if ctx.details is None or not ctx.details.is_dir():
        raise Skip(
            f"no details directory ({ctx.details or 'results/details'}) with per-step metrics"
        )
    # Each replicate has its own details (seeds learn differently); the merged row has none.
    found = [(r, c) for r in ctx.table.all_runs if (c := ctx.curve(r)) is not None]
    if not found:
        raise Skip(f"no run has a non-empty {ctx.details}/<run>_metrics.csv")
    return found


def _xy(data: dict[str, np.ndarray], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    if x not in data or y not in data:
        return np.array([]), np.array([])
    keep = np.isfinite(data[x]) & np.isfinite(data[y])
    return data[x][keep], data[y][keep]


def _panels(
    ctx: Context,
    found: list[tuple[Run, Curve]],
    file: str,
    title: str,
    x: tuple[str, str],
    y: tuple[str, str],
    xlabel: str,
    ylabel: str,
    logy: bool = False,
) -> list[tuple[Run, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Draw train (line) and eval (markers) curves, one panel per tag; returns what was drawn."""
    tags = list(dict.fromkeys(r.tag for r, _ in found))
    ncols = 1 if len(tags) == 1 else 2
    nrows = math.ceil(len(tags) / ncols)
    fig, axes = figure(ncols=ncols, nrows=nrows, width=7.0 if ncols > 1 else 8.5, height=4.2)
    drawn = []
    for ax, tag in zip(axes.flat, tags, strict=False):
        eval_shown = False
        for run, curve in found:
            if run.tag != tag:
                continue
            tx, ty = _xy(curve.train, x[0], y[0])
            ex, ey = _xy(curve.eval, x[1], y[1])
            if not len(tx) and not len(ex):
                continue
            color = ctx.palette(run.name)
            label = run.name if run.status == "ok" else f"{run.name} ({run.status})"
            # Short runs log a handful of points; markers keep a one-point run visible.
            ax.plot(
                tx,
                ty,
                color=color,
                linewidth=1.6,
                label=label,
                alpha=0.9,
                marker="o" if len(tx) < 15 else None,
                markersize=3,
            )
            if len(ex):
                ax.plot(
                    ex,
                    ey,
                    linestyle="none",
                    marker="D",
                    markersize=6,
                    color=color,
                    markeredgecolor="black",
                    markeredgewidth=0.8,
                )
                eval_shown = True
            drawn.append((run, tx, ty, ex, ey))
        if eval_shown:
            ax.plot(
                [],
                [],
                linestyle="none",
                marker="D",
                color="white",
                markeredgecolor="black",
                label="evaluation",
            )
        ax.set_title(f"tag: {tag}" if tag else "untagged runs", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logy:
            from matplotlib.ticker import LogFormatter

            ax.set_yscale("log")
            # The log scale's own labels, as plain numbers: its default ones are mathtext,
            # which style.plain_text turns off.
            ax.yaxis.set_major_formatter(LogFormatter())
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
        if x[0] == "tokens_seen":
            from matplotlib.ticker import EngFormatter

            ax.xaxis.set_major_formatter(EngFormatter())
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(tags) :]:
        ax.set_visible(False)
    if not drawn:
        raise Skip(f"the details CSVs have no {x[0]} and {y[0]} columns")
    fig.suptitle(title, fontsize=13)
    save(fig, ctx.out / file)
    return drawn


def perplexity_over_time(ctx: Context) -> list[Plot]:
    found = _with_curves(ctx)
    file = "perplexity_over_time.png"
    drawn = _panels(
        ctx,
        found,
        file,
        "Training perplexity per step (diamonds: evaluation)",
        ("step", "step"),
        ("perplexity", "eval_perplexity"),
        "training step",
        "perplexity (log scale)",
        logy=True,
    )
    evals = [(ey[-1], ex[-1], r) for r, _, _, ex, ey in drawn if len(ey)]
    if evals:
        best, worst = min(evals, key=lambda t: t[0]), max(evals, key=lambda t: t[0])
        reading = (
            f"The lowest final evaluation perplexity of {len(evals)} evaluated run(s) is "
            f"{best[2].name}'s {best[0]:.2f} at step {best[1]:.0f}"
        )
        if worst[2] is not best[2]:
            reading += f" (highest: {worst[2].name}'s {worst[0]:.2f})"
    else:
        final = [(ty[-1], tx[-1], r) for r, tx, ty, _, _ in drawn if len(ty)]
        best = min(final, key=lambda t: t[0])
        reading = (
            f"No run logged an evaluation; the lowest final training perplexity is "
            f"{best[2].name}'s {best[0]:.2f} at step {best[1]:.0f}"
        )
    return [Plot(file, "Perplexity over training", reading + ".", ctx.out / file)]


def _loss_at(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    """The last logged value at or before x."""
    i = int(np.searchsorted(xs, x, side="right")) - 1
    return float(ys[max(i, 0)])


def _loss_vs(ctx: Context, x: str, file: str, title: str, xlabel: str, what: str) -> list[Plot]:
    found = _with_curves(ctx)
    if not any(x in c.train for _, c in found):
        raise Skip(f"the details CSVs have no {x} column")
    drawn = [
        d
        for d in _panels(
            ctx,
            found,
            file,
            title,
            (x, x),
            ("loss", "eval_loss"),
            xlabel,
            "loss (cross-entropy, nats/token)",
        )
        if len(d[1])
    ]
    return [Plot(file, f"Loss vs {what}", _loss_reading(drawn, x) + ".", ctx.out / file)]


def _loss_reading(drawn: Sequence[tuple[Run, np.ndarray, np.ndarray, Any, Any]], x: str) -> str:
    if not drawn:
        return "Only evaluation points were logged"
    unit = (lambda v: f"{fmt_num(v)} tokens") if x == "tokens_seen" else (lambda v: f"{v:.3g} s")
    if len(drawn) == 1:
        run, xs, ys, _, _ = drawn[0]
        return f"Run {run.name} goes from loss {ys[0]:.2f} to {ys[-1]:.2f} in {unit(xs[-1])}"
    if x == "tokens_seen":
        # Compare at the largest token count every run reached, so shorter runs are not penalised.
        common = min(float(xs[-1]) for _, xs, _, _, _ in drawn)
        at = sorted((_loss_at(xs, ys, common), r.name) for r, xs, ys, _, _ in drawn)
        return (
            f"After {unit(common)}, {at[0][1]} has the lowest training loss ({at[0][0]:.2f}) and "
            f"{at[-1][1]} the highest ({at[-1][0]:.2f})"
        )
    # Time to the loss every run reached: the highest of the runs' best losses.
    target = max(float(ys.min()) for _, _, ys, _, _ in drawn)
    times = sorted((float(xs[np.argmax(ys <= target)]), r.name) for r, xs, ys, _, _ in drawn)
    return (
        f"Every run reached training loss {target:.2f}; {times[0][1]} got there first, after "
        f"{unit(times[0][0])} (last: {times[-1][1]}, {unit(times[-1][0])})"
    )


def loss_vs_tokens(ctx: Context) -> list[Plot]:
    return _loss_vs(
        ctx,
        "tokens_seen",
        "loss_vs_tokens.png",
        "Loss vs tokens seen (diamonds: evaluation)",
        "tokens seen",
        "tokens seen",
    )


def loss_vs_time(ctx: Context) -> list[Plot]:
    return _loss_vs(
        ctx,
        "elapsed_sec",
        "loss_vs_time.png",
        "Loss vs wall-clock time (diamonds: evaluation)",
        "wall-clock time (s)",
        "wall-clock time",
    )
