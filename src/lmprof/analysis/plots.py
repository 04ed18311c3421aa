"""Sweep plots: a metric against the swept value, one line per configuration.

Each function takes the context and returns the plots it wrote, or raises Skip with the reason
it does not apply. Readings are one sentence computed from the same numbers the plot draws.
Here the sequence-length and batch-size plots; the model-size and GPU-count ones are
scaling.py's (imported here: callers name them all as plots.*), the shared drawing lines.py's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmprof.stats import SINGLE

from . import lines, uncertainty
from .common import Context, Plot, Series, failure_clause, more_less, sentence, series_of
from .load import Run
from .scaling import scaling_efficiency_vs_gpus, throughput_vs_model_size
from .style import TOKENS_LABEL, fmt_tick

__all__ = [
    "memory_vs_batch_size",
    "memory_vs_sequence_length",
    "mfu_vs_batch_size",
    "mfu_vs_sequence_length",
    "scaling_efficiency_vs_gpus",
    "throughput_vs_batch_size",
    "throughput_vs_model_size",
]


def memory_vs_sequence_length(ctx: Context) -> list[Plot]:
    runs = ctx.table.tagged("seq_len")
    lines.require(runs, "seq_len", lambda r: r.mem_gb, "peak memory")

    def predicted(ax: Any, series: Sequence[Series]) -> None:
        top = 0.0
        for s in series:
            pts = [(x, lines.gpu_prediction(r)) for x, _, r in s.points]
            pts = sorted(
                (x, y)
                for x, y in pts + [(x, lines.gpu_prediction(r)) for x, r in s.failed]
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
    (series,) = lines.sweep(
        ctx,
        file,
        "Peak memory vs sequence length",
        runs,
        lines.seq,
        "sequence length (tokens)",
        "sequence_length",
        [(lambda r: r.mem_gb, lines.MEM_LABEL)],
        extra=predicted,
    )
    errs = [
        abs(lines.gpu_prediction(r) / y - 1)
        for s in series
        for _, y, r in s.points
        if lines.gpu_prediction(r)
    ]
    reading = sentence(
        lines.growth(series, "peak memory", lines.gb, lines.tokens, "length"),
        f"the memory model's prediction was within {max(errs) * 100:.0f}% of measured"
        if errs
        else "",
        failure_clause(series, fmt_tick),
    )
    return [Plot(file, "Memory vs sequence length", reading, ctx.out / file)]


def mfu_vs_sequence_length(ctx: Context) -> list[Plot]:
    runs = ctx.table.tagged("seq_len")
    lines.require(runs, "seq_len", lambda r: r.mfu, "MFU")
    file = "mfu_vs_sequence_length.png"
    (series,) = lines.sweep(
        ctx,
        file,
        "Model FLOPs utilisation vs sequence length",
        runs,
        lines.seq,
        "sequence length (tokens)",
        "sequence_length",
        [(lines.mfu_pct, lines.MFU_LABEL)],
    )
    reading = sentence(
        lines.growth(series, "MFU", lines.pct, lines.tokens, "length"),
        failure_clause(series, fmt_tick),
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
    at = lines.batch(x)
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
    lines.require(runs, "bs_fp32/bs_fp16", lambda r: r.tokens_per_sec, "tokens/s")
    file = "throughput_vs_batch_size.png"
    (series,) = lines.sweep(
        ctx,
        file,
        "Throughput vs batch size",
        runs,
        lines.bs,
        "batch size (sequences per GPU)",
        "batch_size",
        [(lambda r: r.tokens_per_sec, TOKENS_LABEL)],
    )
    mem, _ = series_of(ctx, runs, lines.bs, lambda r: r.mem_gb, exclude=("batch_size",))
    reading = sentence(
        _versus(series, mem) or lines.growth(series, "throughput", lines.tps, lines.batch, "batch"),
        failure_clause(series, lines.batch),
    )
    return [Plot(file, "Throughput vs batch size", reading, ctx.out / file)]


def memory_vs_batch_size(ctx: Context) -> list[Plot]:
    runs = _batch_runs(ctx)
    lines.require(runs, "bs_fp32/bs_fp16", lambda r: r.mem_gb, "peak memory")
    file = "memory_vs_batch_size.png"
    (series,) = lines.sweep(
        ctx,
        file,
        "Peak memory vs batch size",
        runs,
        lines.bs,
        "batch size (sequences per GPU)",
        "batch_size",
        [(lambda r: r.mem_gb, lines.MEM_LABEL)],
    )
    ref = _reference(series)
    parts = []
    for s in series:
        common = [x for x, _, _ in s.points if ref is not None and ref.at(x) is not None]
        if s is ref or not common:
            continue
        x = max(common)
        parts.append(
            f"at {lines.batch(x)}, {s.label} uses {more_less(s.at(x), ref.at(x), 'peak memory', ref.label)} "
            f"({s.at(x):.2f} vs {ref.at(x):.2f} GB)"
        )
    reading = sentence(
        "; ".join(parts) or lines.growth(series, "peak memory", lines.gb, lines.batch, "batch"),
        failure_clause(series, lines.batch),
    )
    return [Plot(file, "Memory vs batch size", reading, ctx.out / file)]


def mfu_vs_batch_size(ctx: Context) -> list[Plot]:
    runs = _batch_runs(ctx)
    lines.require(runs, "bs_fp32/bs_fp16", lambda r: r.mfu, "MFU")
    file = "mfu_vs_batch_size.png"
    (series,) = lines.sweep(
        ctx,
        file,
        "Model FLOPs utilisation vs batch size",
        runs,
        lines.bs,
        "batch size (sequences per GPU)",
        "batch_size",
        [(lines.mfu_pct, lines.MFU_LABEL)],
    )
    best = max(
        ((y, x, s) for s in series for x, y, _ in s.points), key=lambda t: t[0], default=None
    )
    reading = sentence(
        f"the highest MFU is {best[0]:.1f}% ({best[2].label}, batch {fmt_tick(best[1])})"
        if best
        else "",
        failure_clause(series, lines.batch),
    )
    return [Plot(file, "MFU vs batch size", reading, ctx.out / file)]
