"""Sweep plots: a metric against the swept value, one line per configuration.

Each function takes the context and returns the plots it wrote, or raises Skip with the reason
it does not apply. Readings are one sentence computed from the same numbers the plot draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lmprof.stats import SINGLE

from . import uncertainty
from .common import (
    Context,
    Plot,
    Series,
    Skip,
    failure_clause,
    more_less,
    sentence,
    series_of,
)
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


def _seq(r: Run) -> float | None:
    return r.pos("sequence_length")


def _bs(r: Run) -> float | None:
    return r.pos("batch_size")


def _mfu_pct(r: Run) -> float | None:
    return None if r.mfu is None else r.mfu * 100.0


def _ring(
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


def _draw(
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
                _ring(ax, [(x, y) for x, y in zip(xs, ys, strict=True) if y > 100],
                      "impossible (MFU > 100%)")  # fmt: skip
            if ylabel == TOKENS_LABEL:
                _ring(
                    ax,
                    [(x, y) for x, y, r in s.points if uncertainty.disagreements(r)],
                    "flagged: repeats disagree beyond their intervals",
                )
                _ring(
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


def _legend(ax: Any) -> None:
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


def _sweep(
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
        _draw(ax, series, ylabel, metric)
        if extra is not None and ax is axes[0][0]:
            extra(ax, series)
        set_x(
            ax,
            [p[0] for s in series for p in s.points] + [f[0] for s in series for f in s.failed],
            xlabel,
        )
        _legend(ax)
    fig.suptitle(title, fontsize=13)
    footnote(fig, list(undrawn_all.values()), "not run, or no value")
    save(fig, ctx.out / file)
    return out


def _require(
    runs: Sequence[Run],
    what: str,
    metric: Callable[[Run], float | None] | None = None,
    name: str = "",
) -> None:
    if not runs:
        raise Skip(f"no runs tagged {what}")
    if metric is not None and not any(r.measured and metric(r) is not None for r in runs):
        raise Skip(f"no run tagged {what} recorded {name}")


def _prefix(series: Sequence[Series], s: Series) -> str:
    return f"For {s.label}, " if len(series) > 1 else ""


def _growth(
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
        return f"{_prefix(series, s)}{noun} was {fmt(y0)} at {at(x0)}"
    verb = "grows" if y1 >= y0 else "falls"
    return (
        f"{_prefix(series, s)}{noun} {verb} from {fmt(y0)} at {at(x0)} to {fmt(y1)} at "
        f"{at(x1)} ({y1 / y0:.2g}x for {x1 / x0:.3g}x the {what})"
    )


def _gb(y: float) -> str:
    return f"{y:.2f} GB"


def _pct(y: float) -> str:
    return f"{y:.1f}%"


def _tps(y: float) -> str:
    return f"{fmt_num(y)} tokens/s"


def _tokens(x: float) -> str:
    return f"{fmt_tick(x)} tokens"


def _batch(x: float) -> str:
    return f"batch {fmt_tick(x)}"


def _gpu_prediction(r) -> float | None:
    """The memory model predicts the GPU allocator's peak; a CPU run's host RSS is no match."""
    return r.pos("predicted_peak_mem_gb") if r.pos("peak_gpu_mem_gb") else None


def memory_vs_sequence_length(ctx: Context) -> list[Plot]:
    runs = ctx.table.tagged("seq_len")
    _require(runs, "seq_len", lambda r: r.mem_gb, "peak memory")

    def predicted(ax: Any, series: Sequence[Series]) -> None:
        top = 0.0
        for s in series:
            pts = [(x, _gpu_prediction(r)) for x, _, r in s.points]
            pts = sorted(
                (x, y)
                for x, y in pts + [(x, _gpu_prediction(r)) for x, r in s.failed]
                if y is not None
            )
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    linestyle="--",
                    marker=".",
                    color=s.color,
                    alpha=0.8,
                    label=f"{s.label} predicted",
                )
                top = max(top, max(p[1] for p in pts))
        # Keep the failure markers (drawn at the top of the axis) clear of the prediction line.
        headroom = 1.25 if any(s.failed for s in series) else 1.08
        ax.set_ylim(0, max(ax.get_ylim()[1], top * headroom))

    file = "memory_vs_sequence_length.png"
    (series,) = _sweep(
        ctx,
        file,
        "Peak memory vs sequence length",
        runs,
        _seq,
        "sequence length (tokens)",
        "sequence_length",
        [(lambda r: r.mem_gb, MEM_LABEL)],
        extra=predicted,
    )
    errs = [
        abs(_gpu_prediction(r) / y - 1)
        for s in series
        for _, y, r in s.points
        if _gpu_prediction(r)
    ]
    reading = sentence(
        _growth(series, "peak memory", _gb, _tokens, "length"),
        f"the memory model's prediction was within {max(errs) * 100:.0f}% of measured"
        if errs
        else "",
        failure_clause(series, fmt_tick),
    )
    return [Plot(file, "Memory vs sequence length", reading, ctx.out / file)]


def mfu_vs_sequence_length(ctx: Context) -> list[Plot]:
    runs = ctx.table.tagged("seq_len")
    _require(runs, "seq_len", lambda r: r.mfu, "MFU")
    file = "mfu_vs_sequence_length.png"
    (series,) = _sweep(
        ctx,
        file,
        "Model FLOPs utilisation vs sequence length",
        runs,
        _seq,
        "sequence length (tokens)",
        "sequence_length",
        [(_mfu_pct, MFU_LABEL)],
    )
    reading = sentence(
        _growth(series, "MFU", _pct, _tokens, "length"), failure_clause(series, fmt_tick)
    )
    return [Plot(file, "MFU vs sequence length", reading, ctx.out / file)]


def _reference(series: Sequence[Series]) -> Series | None:
    return next((s for s in series if s.label == "fp32"), series[0] if series else None)


def _versus(series: Sequence[Series], mem_series: Sequence[Series] | None) -> str:
    """'fp16 gives 2.1x the tokens/s of fp32 at batch 32 and 31% less memory'."""
    ref = _reference(series)
    parts = []
    for s in series:
        if s is ref or ref is None:
            continue
        common = [x for x, _, _ in s.points if ref.at(x) is not None]
        if not common:
            continue
        x = max(common)
        text = _speed_words(s, ref, x)
        if mem_series is not None:
            ms = next((m for m in mem_series if m.label == s.label), None)
            mr = next((m for m in mem_series if m.label == ref.label), None)
            if ms and mr and ms.at(x) is not None and mr.at(x) is not None:
                text += f" and {more_less(ms.at(x), mr.at(x), 'memory')}"
        parts.append(text)
    return "; ".join(parts)


def _speed_words(s: Series, ref: Series, x: float) -> str:
    """'fp16 gives 2.2x [2.1, 2.3] the tokens/s of fp32 at batch 32 (single runs)', or the
    ratio marked with why it is no verdict."""
    new, old = s.run_at(x), ref.run_at(x)
    rt = uncertainty.compare(new, old) if new is not None and old is not None else None
    at = _batch(x)
    if rt is None or not rt.is_verdict:
        mark = rt.no_verdict if rt is not None else "no verdict"
        ratio = s.at(x) / ref.at(x)
        return f"{s.label} has {ratio:.2g}x the tokens/s of {ref.label} at {at} ({mark})"
    single = rt.basis == SINGLE
    if rt.includes_one:
        return (
            f"{s.label} and {ref.label} show no measurable difference in tokens/s at {at} "
            f"({rt.text()}{', single runs' if single else ''})"
        )
    return f"{s.label} gives {rt.text()} the tokens/s of {ref.label} at {at}" + (
        " (single runs)" if single else ""
    )


def _batch_runs(ctx: Context) -> list[Run]:
    return ctx.table.tagged("bs_")


def throughput_vs_batch_size(ctx: Context) -> list[Plot]:
    runs = _batch_runs(ctx)
    _require(runs, "bs_fp32/bs_fp16", lambda r: r.tokens_per_sec, "tokens/s")
    file = "throughput_vs_batch_size.png"
    (series,) = _sweep(
        ctx,
        file,
        "Throughput vs batch size",
        runs,
        _bs,
        "batch size (sequences per GPU)",
        "batch_size",
        [(lambda r: r.tokens_per_sec, TOKENS_LABEL)],
    )
    mem, _ = series_of(ctx, runs, _bs, lambda r: r.mem_gb, exclude=("batch_size",))
    reading = sentence(
        _versus(series, mem) or _growth(series, "throughput", _tps, _batch, "batch"),
        failure_clause(series, _batch),
    )
    return [Plot(file, "Throughput vs batch size", reading, ctx.out / file)]


def memory_vs_batch_size(ctx: Context) -> list[Plot]:
    runs = _batch_runs(ctx)
    _require(runs, "bs_fp32/bs_fp16", lambda r: r.mem_gb, "peak memory")
    file = "memory_vs_batch_size.png"
    (series,) = _sweep(
        ctx,
        file,
        "Peak memory vs batch size",
        runs,
        _bs,
        "batch size (sequences per GPU)",
        "batch_size",
        [(lambda r: r.mem_gb, MEM_LABEL)],
    )
    ref = _reference(series)
    parts = []
    for s in series:
        common = [x for x, _, _ in s.points if ref is not None and ref.at(x) is not None]
        if s is ref or not common:
            continue
        x = max(common)
        parts.append(
            f"at {_batch(x)}, {s.label} uses {more_less(s.at(x), ref.at(x), 'peak memory', ref.label)} "
            f"({s.at(x):.2f} vs {ref.at(x):.2f} GB)"
        )
    reading = sentence(
        "; ".join(parts) or _growth(series, "peak memory", _gb, _batch, "batch"),
        failure_clause(series, _batch),
    )
    return [Plot(file, "Memory vs batch size", reading, ctx.out / file)]


def mfu_vs_batch_size(ctx: Context) -> list[Plot]:
    runs = _batch_runs(ctx)
    _require(runs, "bs_fp32/bs_fp16", lambda r: r.mfu, "MFU")
    file = "mfu_vs_batch_size.png"
    (series,) = _sweep(
        ctx,
        file,
        "Model FLOPs utilisation vs batch size",
        runs,
        _bs,
        "batch size (sequences per GPU)",
        "batch_size",
        [(_mfu_pct, MFU_LABEL)],
    )
    best = max(
        ((y, x, s) for s in series for x, y, _ in s.points), key=lambda t: t[0], default=None
    )
    reading = sentence(
        f"the highest MFU is {best[0]:.1f}% ({best[2].label}, batch {fmt_tick(best[1])})"
        if best
        else "",
        failure_clause(series, _batch),
    )
    return [Plot(file, "MFU vs batch size", reading, ctx.out / file)]


def throughput_vs_model_size(ctx: Context) -> list[Plot]:
    runs = ctx.table.tagged("model_size")
    _require(runs, "model_size", lambda r: r.tokens_per_sec, "tokens/s")
    file = "throughput_vs_model_size.png"
    panels: list[tuple[Callable[[Run], float | None], str]] = [
        (lambda r: r.tokens_per_sec, TOKENS_LABEL)
    ]
    has_mfu = any(r.mfu is not None for r in runs)
    if has_mfu:
        panels.append((_mfu_pct, MFU_LABEL))
    result = _sweep(
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

    growth = _growth(result[0], "throughput", _tps, params, "parameters")
    if has_mfu and result[1] and growth:
        s = max(result[1], key=lambda s: len(s.points))
        if len(s.points) >= 2:
            growth += f", while MFU goes from {s.points[0][1]:.1f}% to {s.points[-1][1]:.1f}%"
    reading = sentence(growth, failure_clause(result[0], lambda x: f"{fmt_tick(x)}M"))
    return [Plot(file, "Throughput vs model size", reading, ctx.out / file)]


def scaling_efficiency_vs_gpus(ctx: Context) -> list[Plot]:
    runs = ctx.table.tagged("ddp")
    _require(runs, "ddp", lambda r: r.tokens_per_sec, "tokens/s")
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
    _draw(tps_ax, series, TOKENS_LABEL, lambda r: r.tokens_per_sec)
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
        _ring(eff_ax, over, "implausible (>100%)")
    eff_ax.set_ylim(0, max(125, max(effs, default=0) * 1.12))
    eff_ax.set_ylabel("scaling efficiency (% of linear)")
    for ax in (tps_ax, eff_ax):
        set_x(ax, xs_all, "GPUs")
        _legend(ax)
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
        f"{_prefix(series, s)}{fmt_tick(x1)} GPUs give {y1 / y0:.2f}x the tokens/s of "
        f"{fmt_tick(x0)} ({eff_text})",
        failure_clause(series, lambda x: f"{fmt_tick(x)} GPUs"),
    )
    return [Plot(file, "Scaling efficiency vs GPU count", reading, ctx.out / file)]
