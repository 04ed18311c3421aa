"""report.html: one self-contained page (inline CSS, a few lines of JS, PNGs as base64)."""

from __future__ import annotations

import base64
import datetime as _dt
import html
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from lmprof.io import atomic_write_text
from lmprof.stats import sig

from . import uncertainty
from .common import Plot
from .compare import pairs
from .load import Run, Table
from .quality import SINGLE_RUN_NOTE, Group, has_single_runs, sentences, table_rows

ENV_COLUMNS = (
    ("device", "device_name"),
    ("torch", "torch_version"),
    ("CUDA", "cuda_version"),
    ("driver", "driver_version"),
    ("NCCL", "nccl_version"),
    ("lmprof", "lmprof_version"),
    ("git commit", "git_commit"),
)


def _n(v: float | None, digits: int) -> str:
    return "" if v is None else f"{v:,.{digits}f}"


def _m(r: Run, v: float | None) -> float | None:
    return v if r.measured else None


# (header, cell text, sort key) for the runs table.
RUN_COLUMNS: list[tuple[str, Callable[[Run], str], Callable[[Run], float | None] | None]] = [
    ("run", lambda r: r.name, None),
    ("tag", lambda r: r.tag, None),
    ("status", lambda r: r.status, None),
    ("params (M)", lambda r: sig(r.num("total_params_m")), lambda r: r.num("total_params_m")),
    ("seq len", lambda r: r.get("sequence_length"), lambda r: r.num("sequence_length")),
    ("batch", lambda r: r.get("batch_size"), lambda r: r.num("batch_size")),
    ("precision", lambda r: r.precision, None),
    ("attention", lambda r: r.attention, None),
    ("checkpointing", lambda r: r.checkpointing, None),
    ("compile", lambda r: "yes" if r.compiled else "no", None),
    ("GPUs", lambda r: str(r.gpus), lambda r: r.gpus),
    ("tokens/s", lambda r: _n(_m(r, r.tokens_per_sec), 0), lambda r: _m(r, r.tokens_per_sec)),
    ("peak mem (GB)", lambda r: _n(_m(r, r.mem_gb), 2), lambda r: _m(r, r.mem_gb)),
    (
        "predicted (GB)",
        # The memory model predicts the GPU allocator: beside a CPU run's host RSS it is no match.
        lambda r: _n(r.num("predicted_peak_mem_gb") if r.pos("peak_gpu_mem_gb") else None, 2),
        lambda r: r.num("predicted_peak_mem_gb"),
    ),
    ("MFU (%)", lambda r: _n(None if r.mfu is None else r.mfu * 100, 1), lambda r: r.mfu),
    ("eval ppl", lambda r: _n(r.num("eval_perplexity"), 2), lambda r: r.num("eval_perplexity")),
    ("time (s)", lambda r: _n(r.num("training_time_sec"), 1), lambda r: r.num("training_time_sec")),
    ("detail", lambda r: r.get("status_detail"), None),
]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;
color:#222;padding:0 16px;line-height:1.4}
h1{margin-bottom:4px} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.sub{color:#666;margin-top:0} dl.env{display:grid;grid-template-columns:max-content auto;gap:2px 16px}
dl.env dt{font-weight:600} dl.env dd{margin:0}
.scroll{max-height:520px;overflow:auto;border:1px solid #ddd}
table.runs{border-collapse:collapse;font-size:12px;width:100%}
table.runs th{position:sticky;top:0;background:#f0f0f0;cursor:pointer;text-align:left;padding:4px 6px;
white-space:nowrap;border-bottom:1px solid #bbb}
table.runs th:hover{background:#e0e0e0} table.runs td{padding:3px 6px;border-bottom:1px solid #eee;white-space:nowrap}
table.runs td.num{text-align:right;font-variant-numeric:tabular-nums}
table.runs tr:nth-child(even){background:#fafafa}
.st{font-weight:600;padding:1px 6px;border-radius:3px}
.st-ok{background:#d4edda;color:#155724} .st-bad{background:#f8d7da;color:#721c24}
.st-other{background:#fff3cd;color:#856404}
figure{margin:24px 0;padding:12px;border:1px solid #ddd;border-radius:6px}
figure img{max-width:100%;height:auto;display:block;margin:auto}
figcaption{margin-top:8px;font-size:15px} figure h3{margin:0 0 8px 0}
ul.notes li{margin:4px 0} code{background:#f4f4f4;padding:0 3px}
"""

SORT_JS = """
document.querySelectorAll("table.runs th").forEach(function (th, i) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], asc = th.dataset.dir !== "asc";
    th.dataset.dir = asc ? "asc" : "desc";
    var key = function (tr) { var c = tr.cells[i]; return c.dataset.v !== undefined ? c.dataset.v : c.textContent; };
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
      var c = (x !== "" && y !== "" && !isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _values(runs: Sequence[Run], col: str) -> str:
    counts = Counter(r.get(col) for r in runs if r.get(col))
    if not counts:
        return ""
    return "; ".join(
        f"{v} ({n} run{'s' if n != 1 else ''})" if len(counts) > 1 else v
        for v, n in counts.most_common()
    )


def _status_class(status: str) -> str:
    return (
        "st-ok"
        if status == "ok"
        else ("st-bad" if status in ("oom", "failed", "diverged") else "st-other")
    )


def _runs_table(table: Table) -> str:
    runs = table.runs
    cols = [c for c in RUN_COLUMNS if c[0] in ("run", "status") or any(c[1](r) for r in runs)]
    head = "".join(f"<th title='click to sort'>{_e(h)}</th>" for h, _, _ in cols)
    body = []
    for r in runs:
        cells = []
        for header, text, key in cols:
            value = text(r)
            if header == "status":
                cells.append(f"<td><span class='st {_status_class(value)}'>{_e(value)}</span></td>")
            elif header == "run" and len(r.replicates) > 1:
                cells.append(
                    f"<td>{_e(value)} <small title='replicates'>"
                    f"(median of {len(r.replicates)})</small></td>"
                )
            elif header == "run" and len(r.rows) > 1:
                cells.append(
                    f"<td>{_e(value)} <small title='rows of this run in results.csv'>"
                    f"(line {r.line} of {len(r.rows)} rows)</small></td>"
                )
            elif header == "detail":
                short = value if len(value) <= 60 else value[:57] + "..."
                cells.append(f"<td title='{_e(value)}'>{_e(short)}</td>")
            elif key is not None:
                k = key(r)
                cells.append(f"<td class='num' data-v='{'' if k is None else k}'>{_e(value)}</td>")
            else:
                cells.append(f"<td>{_e(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f"<div class='scroll'><table class='runs' id='runs'><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _figure(plot: Plot) -> str:
    data = base64.b64encode(plot.path.read_bytes()).decode("ascii")
    return (
        f"<figure id='{_e(plot.file)}'><h3>{_e(plot.title)}</h3>"
        f"<img alt='{_e(plot.title)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{_e(plot.reading)}</figcaption></figure>"
    )


def _notes(table: Table, skipped: Sequence[tuple[str, str]]) -> list[str]:
    """How to read the numbers, then what is flagged and what is not plotted: each said once."""
    notes = [
        "Throughput is tokens/s summed over all GPUs: the steady-state rate (after the "
        "timing warm-up steps) where the run recorded it, else the whole-run average. MFU is "
        "model FLOPs per second over the GPUs' peak."
    ]
    if uncertainty.single_runs(table):
        notes.append(
            "<b>One run per configuration.</b> A ratio between two single runs is a verdict "
            "only when both runs are steady (not flagged noisy, median step time known to "
            "+-2.5%), and is labelled <i>single runs</i>: its 95% interval comes from the runs' "
            "own step-time spread and does not see run-to-run variation, which is often larger. "
            "Rerun with <code>lmprof sweep --repeat 3</code> (interleaved) for intervals across "
            "runs."
        )
    else:
        notes.append(
            "Repeated configurations are shown as their median; intervals are 95% t intervals "
            "of the log values across the repeats (Welch for ratios); repeats must have run "
            "interleaved for a ratio between them to be a verdict."
        )
    notes.append(
        "A ratio whose 95% interval includes 1 is reported as no measurable difference; one with "
        "a noisy single run on either side says <i>noisy: no verdict</i>, and one that another "
        "sweep measured with an interval that excludes it says <i>contradiction: no verdict</i>, "
        "in the tables, the sentences and the plots."
    )
    if any(r.pos("peak_host_mem_gb") and not r.pos("peak_gpu_mem_gb") for r in table.runs):
        notes.append(
            "Peak memory of CPU runs is host RSS (the whole process); the memory model's "
            "prediction is of the GPU allocator's peak and is not shown beside it."
        )
    for flag in uncertainty.flags(table):
        notes.append(f"<b>Flagged:</b> {_e(flag)}")
    for p in pairs(table):
        found = uncertainty.contradiction(p.run, p.base)
        if found:
            notes.append(
                f"<b>Contradiction:</b> {_e(p.run.name)} against {_e(p.base.name)} (tag "
                f"{_e(p.tag or '-')}): {_e(found)}; reported once, as no verdict."
            )
    for file, why in skipped:
        notes.append(f"Not plotted: <code>{_e(file)}</code>: {_e(why)}.")
    return notes


def _merged(table: Table, results: Path) -> list[str]:
    """What the analysis read as one, and what it kept apart: one line per kind."""
    out = []
    reruns = [m for m in table.merged if len(m.names) == 1]
    if reruns:
        items = "; ".join(
            f"{_e(m.names[0])} (lines "
            + ", ".join(f"{n}: {_e(s)}" for n, s in zip(m.lines, m.statuses, strict=True))
            + f"; using {m.used})"
            for m in reruns
        )
        out.append(
            f"<b>Rows of one run</b> (the same configuration, seed and repeat: a rerun, a resumed "
            f"run or another sweep), read from the latest ok row, else the latest measured or "
            f"latest row, so a later skipped or failed attempt never hides a measurement: "
            f"{items}."
        )
    renamed = [m for m in table.merged if len(m.names) > 1]
    if renamed:
        items = "; ".join(
            f"{' = '.join(_e(n) for n in m.names)} (lines {', '.join(map(str, m.lines))}; "
            f"using {m.used})"
            for m in renamed
        )
        out.append(
            f"<b>One run under several names</b> (identical configuration, seed and repeat: a "
            f"name does not make a run another, so no comparison is made between them): {items}."
        )
    reps = [r for r in table.runs if len(r.replicates) > 1]
    if reps:
        items = ", ".join(f"{_e(r.name)} ({len(r.replicates)})" for r in reps)
        out.append(f"<b>Replicates merged into their median</b> (repeats, seeds): {items}.")
    if table.shared_names:
        out.append(
            "<b>Kept apart:</b> these names hold more than one configuration in "
            f"<code>{_e(results.name)}</code>, shown with their config hash: "
            + ", ".join(_e(n) for n in table.shared_names)
            + "."
        )
    return out


def _quality(found: Sequence[Group]) -> str:
    """The speed-at-equal-quality section: stated in words and a table, so it does not depend on
    the plot (which needs matplotlib)."""
    if not found:
        return ""
    parts = [
        "<h2>Speed at equal quality</h2>",
        "<p class='sub'>Tokens, seconds (and joules, USD where recorded) each configuration needed "
        "to reach one evaluation loss, interpolated linearly between evaluations; ratios are to "
        "the tag's baseline with 95% intervals."
        + (f" {_e(SINGLE_RUN_NOTE)}" if has_single_runs(found) else "")
        + "</p>",
    ]
    for g in found:
        items = "".join(f"<li>{_e(s)}</li>" for s in sentences(g))
        header, rows = table_rows([g])
        head = "".join(f"<th>{_e(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
        parts.append(
            f"<ul class='notes quality'>{items}</ul><div class='scroll'><table class='runs'>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
        )
    return "\n".join(parts)


def write_report(
    table: Table,
    plots: Sequence[Plot],
    skipped: Sequence[tuple[str, str]],
    tables: Sequence[Path],
    results: Path,
    out: Path,
    quality: Sequence[Group] = (),
    no_plots: str | None = None,
) -> Path:
    """The page; `no_plots` says why no plot could be drawn at all (then the plots section says
    so, and the skip notes name each plot)."""
    empty = (
        f"<p><b>No plots:</b> {_e(no_plots)}. The tables and the sections below are complete.</p>"
        if no_plots
        else "<p>No plot applies to these runs.</p>"
    )
    runs = table.runs
    # The same count the runs table shows; a CPU run's "GPU" is one process on the CPU.
    gpus = Counter(
        f"{r.gpus} (CPU)"
        if "cpu" in (r.get("device"), r.get("device_name").lower())
        else str(r.gpus)
        for r in runs
    )
    env = (
        "".join(
            f"<dt>{_e(label)}</dt><dd>{_e(v)}</dd>"
            for label, col in ENV_COLUMNS
            if (v := _values(runs, col))
        )
        + f"<dt>GPUs per run</dt><dd>{_e('; '.join(gpus))}</dd>"
    )
    statuses = Counter(r.status for r in runs)
    summary = ", ".join(f"{n} {s}" for s, n in statuses.most_common())
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    table_links = ", ".join(
        f"<code>{_e(p.relative_to(out))}</code>" for p in tables if p.suffix == ".md"
    )
    merged_items = _merged(table, results)
    merged = (
        "<h2>What was merged</h2><ul class='notes'>"
        + "".join(f"<li>{n}</li>" for n in merged_items)
        + "</ul>"
        if merged_items
        else ""
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lmprof report</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>lmprof report</h1>
<p class="sub">{len(runs)} configurations from {table.n_rows} rows of <code>{_e(results)}</code>
({_e(summary)}); {len(plots)} plots; generated {now}.</p>
<h2>Environment</h2>
<dl class="env">{env or "<dt>-</dt><dd>the rows record no environment</dd>"}</dl>
<h2>Runs</h2>
<p class="sub">Click a column header to sort.</p>
{_runs_table(table)}
<h2>Notes</h2>
<ul class="notes">{"".join(f"<li>{n}</li>" for n in _notes(table, skipped))}</ul>
{merged}
<h2>Plots</h2>
{"".join(_figure(p) for p in plots) or empty}
{_quality(quality)}
<h2>Tables</h2>
<p>Per tag, as CSV and Markdown, in <code>tables/</code>: {table_links}.</p>
<script>{SORT_JS}</script>
</body></html>
"""
    path = out / "report.html"
    atomic_write_text(path, page)
    return path
