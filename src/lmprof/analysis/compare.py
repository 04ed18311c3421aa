"""Optimisations against their baseline: pairing runs of a comparison tag, and the bar charts.

The baseline of a tag is its run named *baseline*, else the run(s) with the fewest
optimisations on (no checkpointing, no compile, vanilla attention, fp32). Every other run is
paired with the baseline it differs from least, and the difference names the optimisation.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from lmprof.attention_kernels import names_where
from lmprof.stats import SINGLE, Ratio

from . import uncertainty
from .common import STATUS_WORDS, Context, Plot, Skip, more_less, pct_change
from .load import Run, Table
from .style import FAIL_COLOR, TOKENS_LABEL, figure, fmt_num, save, tokens_axis

COMPARISON_TAGS = ("opts", "attention", "precision", "compile", "checkpointing")


def is_comparison(tag: str, runs: list[Run] | None = None) -> bool:
    """The seed's comparison tags, or any tag holding a run named like `*baseline*` (a user's
    own study: every other run of the tag is compared with it)."""
    if tag in COMPARISON_TAGS or tag.endswith("opts"):
        return True
    return any("baseline" in r.name.lower() for r in runs or ())


# The seed's own attention (explicit mask) and the textbook one are the unoptimised kinds.
_BASELINE_ATTENTIONS = names_where(lambda k: k.baseline)


def _score(r: Run) -> int:
    return (
        (r.checkpointing != "none")
        + r.compiled
        + (r.attention not in _BASELINE_ATTENTIONS)
        + (r.precision != "fp32")
    )


def baselines(runs: list[Run]) -> list[Run]:
    named = [r for r in runs if "baseline" in r.name.lower()]
    if named:
        return named
    low = min(_score(r) for r in runs)
    return [r for r in runs if _score(r) == low]


def differences(base: Run, run: Run) -> list[tuple[str, str]]:
    """(optimisation name, colour key) for each way `run` differs from `base`."""
    out = []
    if run.checkpointing != base.checkpointing:
        mode = run.checkpointing
        name = {"full": "gradient_checkpointing", "none": "no_checkpointing"}.get(
            mode, f"{mode}_checkpointing"
        )
        out.append((name, name))
    if run.attention != base.attention:
        out.append((f"{run.attention}_attention", run.attention))
    if run.compiled != base.compiled:
        out.append(("compile" if run.compiled else "no_compile", "compile"))
    if run.precision != base.precision:
        out.append((run.precision, run.precision))
    for col, fmt in (
        ("batch_size", "batch_{}"),
        ("sequence_length", "seq_{}"),
        ("ddp_gpus", "{}_gpus"),
    ):
        if run.get(col) != base.get(col) and run.get(col):
            out.append((fmt.format(run.get(col)), fmt.format(run.get(col))))
    return out


@dataclass
class Pair:
    tag: str
    name: str  # the optimisation, safe for a file name and unique
    title: str  # the optimisation, for people
    color_key: str
    base: Run
    run: Run


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "run"


def pairs(table: Table) -> list[Pair]:
    found: list[Pair] = []
    for tag in table.tags:
        runs = [r for r in table.runs if r.tag == tag]
        if not is_comparison(tag, runs):
            continue
        bases = baselines(runs)
        for r in runs:
            if r in bases:
                continue
            base = min(bases, key=lambda b: len(differences(b, r)))
            diffs = differences(base, r)
            if diffs:
                name = "_and_".join(d[0] for d in diffs)
                title = " + ".join(d[0].replace("_", " ") for d in diffs)
                key = diffs[0][1] if len(diffs) == 1 else r.name
            else:  # differs only in something the row does not show (lr, data, ...)
                name, title, key = r.name, r.name, r.name
            found.append(Pair(tag, _safe(name), title, key, base, r))
    # The same optimisation in two tags (opts and vanilla_opts) needs two file names.
    counts = Counter(p.name for p in found)
    for p in found:
        if counts[p.name] > 1:
            p.name = f"{p.name}_{_safe(p.tag)}"
    counts = Counter(p.name for p in found)
    for p in found:
        if counts[p.name] > 1:
            p.name = f"{p.name}_{_safe(p.run.name)}"
    return found


def _bars(
    ax: Any,
    pair: Pair,
    value: Any,
    ylabel: str,
    fmt: Any,
    ctx: Context,
    rt: Ratio | None = None,
) -> None:
    """Baseline and run side by side; `rt`: the ratio whose verdict the change's label obeys
    (None for a value that does not wander with the machine's load, as peak memory)."""
    runs = (pair.base, pair.run)
    vals = [value(r) if r.measured else None for r in runs]
    colors = [ctx.palette("baseline"), ctx.palette(pair.color_key)]
    cis = [
        uncertainty.spread(r, value) if v is not None else None
        for r, v in zip(runs, vals, strict=True)
    ]
    top = max([*(v for v in vals if v is not None), *(ci[1] for ci in cis if ci)], default=1.0)
    top *= 1.25
    for i, (r, v, c) in enumerate(zip(runs, vals, colors, strict=True)):
        if v is None:
            # A run without a value still gets a bar: hatched, to the top of the axis (the limit
            # it hit, or no measurement), with the reason on it.
            ax.bar(i, top, color="none", edgecolor=FAIL_COLOR, hatch="//", linewidth=1.5)
            word = (
                "out of memory"
                if r.status == "oom"
                else (r.status if not r.measured else "no value")
            )
            ax.text(
                i,
                top * 0.5,
                word,
                ha="center",
                va="center",
                fontsize=12,
                color=FAIL_COLOR,
                fontweight="bold",
                bbox={"facecolor": "white", "edgecolor": "none"},
            )
            continue
        ci = uncertainty.spread(r, value)
        err = None if ci is None else [[max(v - ci[0], 0.0)], [max(ci[1] - v, 0.0)]]
        withheld = i == 1 and rt is not None and not rt.is_verdict
        # A change with no verdict is drawn hatched and says so, never as a bare percentage.
        ax.bar(
            i,
            v,
            color=c,
            edgecolor="black",
            linewidth=0.6,
            yerr=err,
            capsize=6,
            hatch="xx" if withheld else None,
            alpha=0.55 if withheld else 1.0,
        )
        text = fmt(v)
        if i == 1 and vals[0] is not None:
            text += f"\n{rt.no_verdict}" if withheld else f"\n{pct_change(v, vals[0]):+.1f}%"
        ax.text(
            i,
            v,
            text,
            ha="center",
            va="bottom",
            fontsize=11 if i == 1 else 10,
            color=FAIL_COLOR if withheld else "black",
        )
    ax.set_xticks([0, 1], [f"{pair.base.name}\n(baseline)", pair.run.name], fontsize=9)
    ax.set_ylabel(ylabel)
    if ylabel == TOKENS_LABEL:
        tokens_axis(ax)
    ax.set_ylim(0, top)
    ax.grid(False, axis="x")


def _reading(pair: Pair) -> str:
    base, run = pair.base, pair.run
    if not base.measured or not run.measured:
        who, other = (run, base) if not run.measured else (base, run)
        role = "" if who is run else "the baseline "
        facts = ", ".join(
            x
            for x in (
                f"{other.mem_gb:.2f} GB" if other.mem_gb is not None else "",
                f"{fmt_num(other.tokens_per_sec)} tokens/s"
                if other.tokens_per_sec is not None
                else "",
            )
            if x
        )
        return (
            f"With {pair.title}, {role}{who.name} {STATUS_WORDS.get(who.status, who.status)}"
            + (f" ({other.name}: {facts})" if facts else "")
            + "."
        )
    parts = []
    if run.mem_gb is not None and base.mem_gb is not None:
        parts.append(f"uses {more_less(run.mem_gb, base.mem_gb, 'peak memory', base.name)}")
    if run.tokens_per_sec is not None and base.tokens_per_sec is not None:
        whose = "its" if parts else f"{base.name}'s"
        rt = uncertainty.compare(run, base)
        if rt is None or not rt.is_verdict:
            value = run.tokens_per_sec / base.tokens_per_sec if rt is None else rt.value
            why = f" ({rt.why})" if rt is not None and rt.why else ""
            mark = rt.no_verdict if rt is not None else "no verdict"
            parts.append(f"shows {value:.2f}x {whose} tokens/s, {mark}{why}")
        elif not pair_differs(pair):
            parts.append(
                f"differs from {base.name} only in settings the row does not show, yet has "
                f"{rt.text()} the tokens/s: flagged as implausible, no verdict"
            )
        elif rt.includes_one:
            single = ", single runs" if rt.basis == SINGLE else ""
            parts.append(f"shows no measurable difference in tokens/s ({rt.text()}{single})")
        else:
            parts.append(f"gives {rt.text()} {whose} tokens/s{_basis_words(rt)}")
    if not parts:
        return f"{run.name} and {base.name} recorded neither memory nor throughput."
    return f"With {pair.title}, {run.name} {' and '.join(parts)}."


def _basis_words(rt: Ratio) -> str:
    if rt.basis == SINGLE:
        return (
            " (single runs, both steady: the interval is each run's own step-time spread, "
            "blind to run-to-run variation; --repeat 3 measures that)"
        )
    return " (across interleaved repeats)"


def pair_differs(pair: Pair) -> bool:
    return bool(differences(pair.base, pair.run))


def optimization_comparisons(ctx: Context) -> list[Plot]:
    found = pairs(ctx.table)
    if not found:
        tags = [
            t for t in ctx.table.tags if is_comparison(t, [r for r in ctx.table.runs if r.tag == t])
        ]
        if tags:
            raise Skip(f"tag(s) {', '.join(tags)} hold only baseline runs")
        raise Skip(
            "no runs tagged opts, vanilla_opts, attention, precision or compile, and no tag "
            "with a run named *baseline*"
        )
    plots = []
    for pair in found:
        fig, axes = figure(ncols=2, width=5.6, height=4.6)
        _bars(
            axes[0][0], pair, lambda r: r.mem_gb, "peak memory (GB)", lambda v: f"{v:.2f} GB", ctx
        )
        rt = uncertainty.compare(pair.run, pair.base)
        _bars(axes[0][1], pair, lambda r: r.tokens_per_sec, TOKENS_LABEL, fmt_num, ctx, rt)
        fig.suptitle(
            f"Optimisation: {pair.title} vs baseline {pair.base.name} (tag {pair.tag})", fontsize=13
        )
        file = f"optimization_{pair.name}_comparison.png"
        save(fig, ctx.out / file)
        plots.append(
            Plot(
                file, f"Optimisation: {pair.title} (tag {pair.tag})", _reading(pair), ctx.out / file
            )
        )
    return plots
