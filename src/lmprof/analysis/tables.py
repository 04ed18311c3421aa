"""One table per tag (CSV and Markdown) with the columns that answer that tag's question."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from lmprof.io import atomic_write_text

from . import uncertainty
from .compare import baselines, is_comparison, pairs
from .load import Run, Table
from .quality import Group, table_rows

Column = tuple[str, Callable[[Run], str]]


def _f(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _raw(col: str) -> Column:
    return (col, lambda r: r.get(col))


RUN = ("run_name", lambda r: r.name)
PRECISION = ("precision", lambda r: r.precision)
ATTENTION = ("attention", lambda r: r.attention)
CKPT = ("grad_checkpoint", lambda r: r.checkpointing)
COMPILE = ("compile", lambda r: str(r.compiled).lower())
GPUS = ("ddp_gpus", lambda r: str(r.gpus))
TPS = ("tokens_per_sec", lambda r: _f(r.tokens_per_sec if r.measured else None, 0))
MEM = ("peak_mem_gb", lambda r: _f(r.mem_gb if r.measured else None, 2))
PRED = ("predicted_peak_mem_gb", lambda r: _f(r.num("predicted_peak_mem_gb"), 2))
MFU = ("mfu_pct", lambda r: _f(None if r.mfu is None or not r.measured else r.mfu * 100, 1))
PPL = ("eval_perplexity", lambda r: _f(r.num("eval_perplexity"), 2))
TIME = ("training_time_sec", lambda r: _f(r.num("training_time_sec"), 1))
STATUS = ("status", lambda r: r.status)
DETAIL = ("status_detail", lambda r: r.get("status_detail"))
METRICS = [TPS, MEM, MFU, PPL, TIME]


def _num_key(col: str) -> Callable[[Run], tuple[str, float]]:
    return lambda r: (r.precision, r.num(col) or 0.0)


def _comparison(table: Table, runs: list[Run]) -> list[Column]:
    by_run = {id(p.run): p for p in pairs(table)}
    base_ids = {id(b) for b in baselines(runs)}

    def opt(r: Run) -> str:
        return "baseline" if id(r) in base_ids else (by_run[id(r)].title if id(r) in by_run else "")

    def change(metric: Callable[[Run], float | None], timed: bool) -> Callable[[Run], str]:
        """`timed`: a throughput, whose change is withheld where its ratio is no verdict (peak
        memory does not wander with the machine's load)."""

        def cell(r: Run) -> str:
            p = by_run.get(id(r))
            if p is None or not (p.run.measured and p.base.measured):
                return ""
            rt = uncertainty.compare(p.run, p.base) if timed else None
            return uncertainty.change_cell(rt, metric(p.run), metric(p.base))

        return cell

    def ci(r: Run) -> str:
        p = by_run.get(id(r))
        return uncertainty.ratio_cell(None if p is None else uncertainty.compare(p.run, p.base))

    return [
        RUN,
        ("optimisation", opt),
        PRECISION,
        ATTENTION,
        CKPT,
        COMPILE,
        TPS,
        ("tokens_per_sec_change_pct", change(lambda r: r.tokens_per_sec, timed=True)),
        ("tokens_per_sec_ratio_95ci", ci),
        MEM,
        ("peak_mem_change_pct", change(lambda r: r.mem_gb, timed=False)),
        MFU,
        PPL,
        TIME,
    ]


def _ddp(runs: list[Run]) -> list[Column]:
    done = [r for r in runs if r.measured and r.tokens_per_sec]
    base = min(done, key=lambda r: r.gpus) if done else None

    def efficiency(r: Run) -> str:
        if base is None or not r.measured or not r.tokens_per_sec:
            return ""
        rt = uncertainty.compare(r, base)
        eff = 100 * (r.tokens_per_sec / r.gpus) / (base.tokens_per_sec / base.gpus)
        if r is base:
            return _f(eff, 1)
        if rt is None or not rt.is_verdict:
            return f"{eff:.1f} ({rt.no_verdict if rt else 'no verdict'})"
        k = base.gpus / r.gpus
        flag = " IMPLAUSIBLE" if rt.low * k * 100 > 100 else ""
        return f"{eff:.1f} [{rt.low * k * 100:.1f}, {rt.high * k * 100:.1f}]{flag}"

    per_gpu = (
        "tokens_per_sec_per_gpu",
        lambda r: _f(r.tokens_per_sec / r.gpus if r.measured and r.tokens_per_sec else None, 0),
    )
    return [
        RUN,
        GPUS,
        _raw("batch_size"),
        PRECISION,
        TPS,
        per_gpu,
        ("scaling_efficiency_pct", efficiency),
        MEM,
        MFU,
        TIME,
    ]


def _generic(runs: list[Run]) -> list[Column]:
    config = [
        _raw("sequence_length"),
        _raw("batch_size"),
        PRECISION,
        ATTENTION,
        CKPT,
        COMPILE,
        GPUS,
        _raw("total_params_m"),
    ]
    varying = [c for c in config if len({c[1](r) for r in runs}) > 1]
    return [RUN, *varying, *METRICS]


def columns_for(
    table: Table, tag: str, runs: list[Run]
) -> tuple[list[Column], Callable[[Run], object] | None]:
    """The tag's columns and its row order (None: file order)."""
    if tag.startswith("seq_len"):
        return [
            RUN,
            _raw("sequence_length"),
            _raw("batch_size"),
            PRECISION,
            TPS,
            MEM,
            PRED,
            MFU,
            PPL,
            TIME,
        ], _num_key("sequence_length")
    if tag.startswith("bs_"):
        return [RUN, _raw("batch_size"), _raw("sequence_length"), PRECISION, *METRICS], _num_key(
            "batch_size"
        )
    if tag.startswith("model_size"):
        return [
            RUN,
            _raw("total_params_m"),
            _raw("n_layers"),
            _raw("d_model"),
            _raw("n_heads"),
            *METRICS,
        ], lambda r: r.num("total_params_m") or 0.0
    if tag.startswith("ddp"):
        return _ddp(runs), lambda r: r.gpus
    if is_comparison(tag, runs):
        base_ids = {id(b) for b in baselines(runs)}
        return _comparison(table, runs), lambda r: id(r) not in base_ids
    return _generic(runs), None


def _rows(table: Table, tag: str) -> tuple[list[str], list[list[str]]]:
    runs = [r for r in table.runs if r.tag == tag]
    cols, order = columns_for(table, tag, runs)
    if order is not None:
        runs = sorted(runs, key=order)  # type: ignore[arg-type]
    # Metrics no run of the tag recorded (MFU on CPU, ...) only add an empty column.
    cols = [
        c for c in cols if c in (RUN,) or c not in METRICS + [PRED] or any(c[1](r) for r in runs)
    ]
    cols += [STATUS] + ([DETAIL] if any(r.get("status_detail") for r in runs) else [])
    return [c[0] for c in cols], [[c[1](r) for c in cols] for r in runs]


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= 80 else text[:77] + "..."

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table_name(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", tag) or "untagged"


def _write(
    out: Path, name: str, title: str, header: list[str], rows: list[list[str]]
) -> list[Path]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    csv_path, md_path = out / "tables" / f"{name}.csv", out / "tables" / f"{name}.md"
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_text(md_path, f"# {title}\n\n" + _markdown(header, rows))
    return [csv_path, md_path]


# Beside the per-tag tables; a tag named like it would be overwritten, so it gets a prefix.
TIME_TO_TARGET = "time_to_target_loss"


def write_tables(table: Table, out: Path, quality: Sequence[Group] = ()) -> list[Path]:
    """A table per tag and, where runs have evaluation curves, the time-to-target table."""
    written = []
    for tag in table.tags:
        header, rows = _rows(table, tag)
        name = table_name(tag)
        if name == TIME_TO_TARGET:
            name = f"tag_{name}"
        written += _write(
            out, name, f"Runs tagged `{tag}`" if tag else "Untagged runs", header, rows
        )
    if quality:
        header, rows = table_rows(quality)
        written += _write(
            out,
            TIME_TO_TARGET,
            "Speed at equal quality: cost to a target evaluation loss",
            header,
            rows,
        )
    return written
