"""Scaling plots: throughput (and MFU) against model size, and data-parallel throughput and
efficiency against the GPU count. Callers reach them as plots.* (plots.py imports them)."""

from __future__ import annotations

from collections.abc import Callable

from lmprof.stats import SINGLE

from . import lines, uncertainty
from .common import Context, Plot, Skip, failure_clause, sentence, series_of
from .load import Run
from .style import TOKENS_LABEL, figure, fmt_tick, footnote, mark_failures, save, set_x


def throughput_vs_model_size(ctx: Context) -> list[Plot]:
    runs = ctx.table.tagged("model_size")
    lines.require(runs, "model_size", lambda r: r.tokens_per_sec, "tokens/s")
    file = "throughput_vs_model_size.png"
    panels: list[tuple[Callable[[Run], float | None], str]] = [
        (lambda r: r.tokens_per_sec, TOKENS_LABEL)
    ]
    has_mfu = any(r.mfu is not None for r in runs)
    if has_mfu:
        panels.append((lines.mfu_pct, lines.MFU_LABEL))
    result = lines.sweep(
        ctx,
        file,
        "Throughput and MFU vs model size" if has_mfu else "Throughput vs model size",
        runs,
        lambda r: r.pos("total_params_m"),
        "parameters (millions)",
        "model",
        panels,
    )

    def params(x: float) -> str:
        return f"{fmt_tick(x)}M parameters"

    growth = lines.growth(result[0], "throughput", lines.tps, params, "parameters")
    if has_mfu and result[1] and growth:
        s = max(result[1], key=lambda s: len(s.points))
        if len(s.points) >= 2:
            growth += f", while MFU goes from {s.points[0][1]:.1f}% to {s.points[-1][1]:.1f}%"
    reading = sentence(growth, failure_clause(result[0], lambda x: f"{fmt_tick(x)}M"))
    return [Plot(file, "Throughput vs model size", reading, ctx.out / file)]


def scaling_efficiency_vs_gpus(ctx: Context) -> list[Plot]:
    runs = ctx.table.tagged("ddp")
    lines.require(runs, "ddp", lambda r: r.tokens_per_sec, "tokens/s")
    if len({r.gpus for r in runs}) < 2:
        raise Skip("the runs tagged ddp all use the same number of GPUs")
    series, undrawn = series_of(
        ctx, runs, lambda r: float(r.gpus), lambda r: r.tokens_per_sec, exclude=("gpus",)
    )
    s = max(series, key=lambda s: len(s.points))
    if len(s.points) < 2:
        raise Skip("fewer than two GPU counts of the ddp tag finished")
    file = "scaling_efficiency_vs_gpus.png"
    fig, axes = figure(ncols=2)
    tps_ax, eff_ax = axes[0]
    lines.draw(tps_ax, series, TOKENS_LABEL, lambda r: r.tokens_per_sec)
    xs_all = [x for q in series for x, _, _ in q.points] + [x for q in series for x, _ in q.failed]
    top = tps_ax.get_ylim()[1]
    for q in series:
        if not q.points:
            continue
        # Efficiency is per-GPU tokens/s relative to the smallest GPU count that finished.
        x0, y0, _ = q.points[0]
        xs = sorted({x for x, _, _ in q.points} | {x for x, _ in q.failed})
        ideal = [y0 / x0 * x for x in xs]
        tps_ax.plot(
            xs, ideal, linestyle="--", color=q.color, alpha=0.6, label=f"{q.label} ideal (linear)"
        )
        top = max(top, max(ideal) * 1.08)
        eff_ax.plot(
            [x for x, _, _ in q.points],
            [100 * (y / x) / (y0 / x0) for x, y, _ in q.points],
            marker="o",
            color=q.color,
            linewidth=2,
            label=q.label,
        )
        mark_failures(eff_ax, [(x, r.status, q.color) for x, r in q.failed])
    tps_ax.set_ylim(0, top)
    eff_ax.axhline(100, linestyle="--", color="#555555", alpha=0.7, label="ideal (100%)")
    effs = [
        100 * (y / x) / (q.points[0][1] / q.points[0][0]) for q in series for x, y, _ in q.points
    ]
    for q in series:
        if not q.points:
            continue
        x0q, y0q = q.points[0][0], q.points[0][1]
        over = [(x, 100 * (y / x) / (y0q / x0q)) for x, y, _ in q.points]
        over = [(x, e) for x, e in over if e > 100.5]
        # Kept on the chart, ringed: above linear scaling is a measurement to question.
        lines.ring(eff_ax, over, "implausible (>100%)")
    eff_ax.set_ylim(0, max(125, max(effs, default=0) * 1.12))
    eff_ax.set_ylabel("scaling efficiency (% of linear)")
    for ax in (tps_ax, eff_ax):
        set_x(ax, xs_all, "GPUs")
        lines.legend(ax)
    fig.suptitle("Data-parallel scaling: throughput and efficiency vs GPU count", fontsize=13)
    footnote(fig, undrawn, "not run, or no value")
    save(fig, ctx.out / file)
    (x0, y0, r0), (x1, y1, r1) = s.points[0], s.points[-1]
    eff = 100.0 * (y1 / x1) / (y0 / x0)
    rt = uncertainty.compare(r1, r0)
    if rt is not None and rt.is_verdict:
        lo, hi = 100 * rt.low * x0 / x1, 100 * rt.high * x0 / x1
        eff_text = f"{eff:.0f}% scaling efficiency, 95% interval [{lo:.0f}%, {hi:.0f}%]"
        if rt.basis == SINGLE:
            eff_text += ", single runs"
        if lo > 100:
            eff_text += (
                "; above 100% beyond its interval, which is implausible for data parallelism: "
                "flagged, not a finding (check the runs' load and batch sizes)"
            )
    else:
        eff_text = f"{eff:.0f}% scaling efficiency, {rt.no_verdict if rt else 'no verdict'}"
        if eff > 100:
            eff_text += "; above 100%: implausible, flagged, not a finding"
    reading = sentence(
        f"{lines.prefix(series, s)}{fmt_tick(x1)} GPUs give {y1 / y0:.2f}x the tokens/s of "
        f"{fmt_tick(x0)} ({eff_text})",
        failure_clause(series, lambda x: f"{fmt_tick(x)} GPUs"),
    )
    return [Plot(file, "Scaling efficiency vs GPU count", reading, ctx.out / file)]
