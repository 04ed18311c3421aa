"""The roofline's outputs: its Markdown table and the md/CSV pair a profiled run writes beside
its trace (paths.RunPaths.roofline_table)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from lmprof.paths import RunPaths
from lmprof.profiling.roofline import Limits, Roofline, analyze, load_trace


def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def markdown(rl: Roofline, title: str = "") -> str:
    lim = rl.limits
    lines = [f"## Roofline{': ' + title if title else ''}", ""]
    lines.append(
        f"{rl.steps} profiled step(s); limits: matmul/attention "
        + (
            f"{lim.matmul_flops / 1e12:.0f} TFLOP/s ({lim.matmul_source})"
            if lim.matmul_flops
            else "unknown"
        )
        + ", memory-bound "
        + (
            f"{lim.bandwidth / 1e9:.0f} GB/s ({lim.bandwidth_source})"
            if lim.bandwidth
            else "unknown"
        )
        + "."
    )
    lines += [
        "",
        "| group | launches | ms/step | share | work/step | achieved | fraction of limit | ms at limit | gain ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in rl.table():
        if t["gflop_per_step"] is not None:
            work = f"{t['gflop_per_step']:.1f} GFLOP"
            ach = f"{t['achieved'] / 1e12:.1f} TFLOP/s" if t["achieved"] else ""
        elif t["gb_per_step"] is not None:
            work = f"{t['gb_per_step']:.3f} GB"
            ach = f"{t['achieved'] / 1e9:.0f} GB/s" if t["achieved"] else ""
        else:
            work = ach = ""
        frac = f"{t['fraction_of_limit']:.0%}" if t["fraction_of_limit"] is not None else ""
        lines.append(
            f"| {t['group']} | {t['launches']} | {t['ms_per_step']:.3f} | {t['share']:.1%} | "
            f"{work} | {ach} | {frac} | {t['ms_at_limit']:.3f} | {t['gain_ms']:.3f} |"
        )
    g, gain = rl.most_to_gain()
    lines += [
        "",
        f"Headroom: {rl.step_ms():.2f} ms of kernels and idle per step; at every group's limit "
        f"(groups serial, no idle; no gain claimed where the work is unknown) "
        f"{rl.step_at_limit_ms():.2f} ms. Most to gain: **{g}** ({gain:.2f} ms per step).",
    ]
    lines += [f"- {n}" for n in rl.notes]
    return "\n".join(lines) + "\n"


def write_roofline(
    trace_path: str | Path,
    paths: RunPaths,
    limits: Limits,
    optimizer_bytes_per_step: float | None = None,
) -> tuple[Path, Path]:
    from lmprof.io import atomic_write_text

    rl = analyze(load_trace(trace_path), limits, optimizer_bytes_per_step)
    md, csv_path = paths.roofline_table("md"), paths.roofline_table("csv")
    atomic_write_text(md, markdown(rl, paths.stem))
    rows = rl.table()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["group"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(csv_path, buf.getvalue())
    return md, csv_path
