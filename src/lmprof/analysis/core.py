"""`analyze`: results.csv and the details CSVs in; plots, tables and report.html out."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lmprof.paths import details_dir

from . import compare, curves, energy, plots, quality
from .common import Context, Plot, Skip
from .load import load_table
from .report import write_report
from .style import matplotlib_missing, plain_text
from .tables import write_tables

# In report order; the name is what a skip message calls the plot.
PLOTTERS: list[tuple[str, Callable[[Context], list[Plot]]]] = [
    ("memory_vs_sequence_length.png", plots.memory_vs_sequence_length),
    ("mfu_vs_sequence_length.png", plots.mfu_vs_sequence_length),
    ("throughput_vs_batch_size.png", plots.throughput_vs_batch_size),
    ("memory_vs_batch_size.png", plots.memory_vs_batch_size),
    ("mfu_vs_batch_size.png", plots.mfu_vs_batch_size),
    ("optimization_*_comparison.png", compare.optimization_comparisons),
    ("throughput_vs_model_size.png", plots.throughput_vs_model_size),
    ("scaling_efficiency_vs_gpus.png", plots.scaling_efficiency_vs_gpus),
    (energy.FILE, energy.energy_vs_throughput),
    ("perplexity_over_time.png", curves.perplexity_over_time),
    ("loss_vs_tokens.png", curves.loss_vs_tokens),
    ("loss_vs_time.png", curves.loss_vs_time),
    ("time_to_target_loss.png", quality.time_to_target_loss),
]


@dataclass
class Analysis:
    plots: list[Plot] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (plot file, why)
    tables: list[Path] = field(default_factory=list)
    report: Path | None = None
    notes: list[str] = field(default_factory=list)
    no_plots: str | None = None  # why no plot at all could be drawn (matplotlib missing)
    quality: list[quality.Group] = field(default_factory=list)  # speed at equal quality, per tag


def default_details(results: Path, out: Path) -> Path | None:
    """Where the runs wrote their details: beside results.csv (the trainer's layout) or in out."""
    for candidate in (details_dir(results.parent), out / "details"):
        if candidate.is_dir():
            return candidate
    return None


def analyze(
    results: str | Path = "results.csv",
    out: str | Path = "results",
    details: str | Path | None = None,
    target_loss: float | str | None = None,
) -> Analysis:
    """Write every plot that applies, the per-tag tables and report.html under `out`.

    `target_loss`: the evaluation loss the speed-at-equal-quality comparison measures the way
    to; None takes, per tag, the worst final evaluation loss of its runs."""
    results, out = Path(results), Path(out)
    target = quality.parse_target(target_loss)
    table = load_table(results)
    ctx = Context(
        table, out, Path(details) if details else default_details(results, out), target_loss=target
    )
    # Plots are optional: without matplotlib the tables and the report still answer the
    # questions in words and numbers, and say which plots they lack.
    done = Analysis(no_plots=matplotlib_missing())
    with contextlib.nullcontext() if done.no_plots else plain_text():
        for name, plotter in PLOTTERS:
            if done.no_plots:
                done.skipped.append((name, done.no_plots))
                continue
            try:
                done.plots += plotter(ctx)
            except Skip as why:
                done.skipped.append((name, str(why)))
    done.quality = quality.groups(ctx)
    done.tables = write_tables(table, out, done.quality)
    # What was read as one and what was kept apart, for the console (the report says more).
    done.notes = [
        f"merged: {' = '.join(m.names)}: {len(m.lines)} rows of one run in {results.name}, "
        f"using line {m.used}"
        for m in table.merged
    ] + [
        f"kept apart: {name} names more than one configuration (shown with its config hash)"
        for name in table.shared_names
    ]
    done.report = write_report(
        table, done.plots, done.skipped, done.tables, results, out, done.quality, done.no_plots
    )
    return done
