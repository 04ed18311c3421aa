"""Speed at equal quality (tokens, seconds, joules, USD to a target eval loss), the energy
frontier plot, and an analysis without matplotlib: each from planted results and curves."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

from lmprof.analysis import analyze
from lmprof.cli.analyze import main
from lmprof.results import append_row

REPO = Path(__file__).resolve().parents[1]
TOKENS_PER_STEP = 8192


def _loss(tokens: float, speed: float) -> float:
    """A planted learning curve; `speed` 2 reaches every loss in half the tokens."""
    return 2.0 + 6.0 / math.sqrt(1.0 + speed * tokens / 1e5)


def _row(name: str, tag: str = "opts", status: str = "ok", **extra: object) -> dict[str, object]:
    return {
        "run_name": name,
        "tag": tag,
        "status": status,
        "sequence_length": 512,
        "batch_size": 16,
        "precision": "bf16",
        "attention": "sdpa",
        "grad_checkpoint": "none",
        "compile": False,
        "ddp_gpus": 1,
        "steady_tokens_per_sec": 100e3,
        "peak_gpu_mem_gb": 6.0,
        "training_time_sec": 100.0,
        "config_hash": f"h-{tag}-{name}",
        **extra,
    }


def _curves(details: Path, name: str, speed: float, evals: int = 8, sec_per_step: float = 0.1):
    details.mkdir(parents=True, exist_ok=True)
    steps = list(range(25, 25 * evals + 1, 25))
    with open(details / f"{name}_metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss", "tokens_seen", "elapsed_sec"])
        for s in range(1, steps[-1] + 1):
            t = s * TOKENS_PER_STEP
            w.writerow([s, _loss(t, speed) + 0.05, t, s * sec_per_step])
    with open(details / f"{name}_eval.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "tokens_seen", "elapsed_sec", "eval_loss", "eval_perplexity"])
        for s in steps:
            t = s * TOKENS_PER_STEP
            w.writerow([s, t, s * sec_per_step, _loss(t, speed), math.exp(_loss(t, speed))])


def _sweep(
    root: Path, fast_speed: float, seeds: tuple[int, ...] = (0, 1, 2), **extra: object
) -> Path:
    """A baseline and a compiled configuration, one run per seed; seeds differ by a few %."""
    results = root / "results.csv"
    details = root / "results" / "details"
    for seed in seeds:
        jitter = 1.0 + 0.03 * (seed - 1)
        for name, speed, compiled in (
            ("opts_baseline", 1.0, False),
            ("opts_compile", fast_speed, True),
        ):
            run = f"{name}_seed{seed}" if len(seeds) > 1 else name
            append_row(results, _row(run, compile=compiled, **extra))
            _curves(details, run, speed * jitter)
    return results


def _table(out: Path) -> list[dict[str, str]]:
    with open(out / "tables" / "time_to_target_loss.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_half_the_tokens_is_a_finding(tmp_path: Path) -> None:
    done = analyze(_sweep(tmp_path, fast_speed=2.0), tmp_path / "out")
    (group,) = done.quality
    assert group.base.name == "opts_baseline" and not group.chosen
    fast = next(c for c in group.configs if c.name == "opts_compile")
    assert len(fast.reaches) == 3 and fast.reached
    rt = group.ratio(fast, "tokens")
    assert rt is not None and rt.known and rt.high < 1.0
    # Linear interpolation between evaluations keeps the planted 2x within a few percent.
    assert rt.value == pytest.approx(0.5, rel=0.05)
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Speed at equal quality" in report
    assert "tokens to target 0.5" in report and "fewer tokens" in report
    rows = _table(tmp_path / "out")
    by_run = {r["run_name"]: r for r in rows}
    assert by_run["opts_compile"]["reached"] == "3/3"
    assert "no measurable difference" not in by_run["opts_compile"]["tokens_ratio_95ci"]
    assert (tmp_path / "out" / "time_to_target_loss.png").is_file()


def test_identical_configurations_show_no_measurable_difference(tmp_path: Path) -> None:
    done = analyze(_sweep(tmp_path, fast_speed=1.0), tmp_path / "out")
    (group,) = done.quality
    other = next(c for c in group.configs if c is not group.base)
    rt = group.ratio(other, "tokens")
    assert rt is not None and rt.known and rt.includes_one
    report = (tmp_path / "out" / "report.html").read_text()
    assert "tokens to target no measurable difference" in report


def test_a_run_that_never_gets_there_is_not_reached(tmp_path: Path) -> None:
    results = _sweep(tmp_path, fast_speed=3.0, seeds=(0,))
    # The baseline's best loss is about 2.0 + 6/sqrt(1 + 16.4) = 3.44; 3.0 is only for the fast.
    done = analyze(results, tmp_path / "out", target_loss=3.0)
    (group,) = done.quality
    assert group.chosen and group.target == 3.0
    base = group.base
    assert not base.reached and base.median("tokens") is None
    fast = next(c for c in group.configs if c is not base)
    assert fast.reached and fast.median("tokens") is not None
    rows = _table(tmp_path / "out")
    assert {r["run_name"]: r["reached"] for r in rows}["opts_baseline"] == "not reached"
    report = (tmp_path / "out" / "report.html").read_text()
    assert "baseline opts_baseline: not reached (1 of 1 run never got there" in report
    assert "opts_compile needs" not in report  # no claim against a baseline that never got there


def test_single_runs_have_no_verdict_and_energy_and_cost_to_target(tmp_path: Path) -> None:
    results = _sweep(tmp_path, fast_speed=2.0, seeds=(0,), joules_per_token=0.01, gpu_hour_usd=3.6)
    done = analyze(results, tmp_path / "out")
    (group,) = done.quality
    assert group.metrics == ["tokens", "seconds", "joules", "usd"]
    fast = next(c for c in group.configs if c is not group.base)
    (reach,) = fast.reaches
    assert reach.joules == pytest.approx(0.01 * reach.tokens)
    assert reach.usd == pytest.approx(3.6 / 3600 * reach.seconds)  # 1 GPU at 3.6 USD/h
    rt = group.ratio(fast, "tokens")
    assert rt is not None and not rt.known
    report = (tmp_path / "out" / "report.html").read_text()
    # Said once for the section, not once per ratio; each ratio carries its mark.
    assert report.count("A configuration run once has no spread") == 1
    assert "interval unknown: no verdict" in report
    header = list(_table(tmp_path / "out")[0])
    assert "usd_to_target" in header and "joules_to_target" in header


@pytest.mark.parametrize("bad", ["abc", "-1", "0", "nan"])
def test_bad_target_loss_is_one_line(
    tmp_path: Path, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    results = _sweep(tmp_path, fast_speed=2.0, seeds=(0,))
    assert (
        main(["--results", str(results), "--out", str(tmp_path / "o"), "--target-loss", bad]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --target-loss") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_lmprof_analyze_takes_target_loss(tmp_path: Path) -> None:
    results = _sweep(tmp_path, fast_speed=2.0, seeds=(0,))
    proc = subprocess.run(
        [sys.executable, "-m", "lmprof", "analyze", "--results", str(results), "--out",
         str(tmp_path / "o"), "--target-loss", "4.5"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = _table(tmp_path / "o")
    assert {r["target_loss"] for r in rows} == {"4.5"}


# ---- error bars, flagged points, failure markers and footnotes on the sweep plots ----------


def _seq_sweep(root: Path, seeds: tuple[int, ...]) -> Path:
    results = root / "results.csv"
    for seq in (128, 256, 512):
        for seed in seeds:
            j = 1.0 + 0.04 * (seed - 1)
            name = f"seq_len_{seq}_seed{seed}" if len(seeds) > 1 else f"seq_len_{seq}"
            # MFU at 512 is planted above 100%: it must stay drawn, and be ringed.
            mfu = (0.3 + seq / 1e4) * j * (4.0 if seq == 512 else 1.0)
            append_row(
                results,
                _row(name, "seq_len", sequence_length=seq, steady_tokens_per_sec=1e5 * j / seq,
                     peak_gpu_mem_gb=seq / 100 * j, mfu=mfu),
            )  # fmt: skip
    append_row(results, _row("seq_len_1024", "seq_len", "oom", sequence_length=1024))
    append_row(results, _row("seq_len_2048", "seq_len", "timeout", sequence_length=2048))
    for i in range(9):  # enough unplottable runs for a footnote of several lines
        append_row(
            results,
            _row(f"seq_len_unplottable_with_a_long_name_{i}", "seq_len", "skipped",
                 sequence_length=4096 * (i + 1)),
        )  # fmt: skip
    return results


def _figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """The figures the sweep plots save, by file name, for inspection after the analysis."""
    from lmprof.analysis import lines, scaling, style

    saved: dict[str, object] = {}

    def keep(fig: object, path: Path) -> None:
        saved[path.name] = fig
        style.save(fig, path)

    for module in (lines, scaling):  # the modules whose plots save a figure
        monkeypatch.setattr(module, "save", keep)
    return saved


def _errorbars(ax: object) -> int:
    from matplotlib.container import ErrorbarContainer

    return sum(isinstance(c, ErrorbarContainer) for c in ax.containers)  # type: ignore[attr-defined]


def test_repeats_give_error_bars_and_flags_stay_marked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figs = _figures(monkeypatch)
    analyze(_seq_sweep(tmp_path, seeds=(0, 1, 2)), tmp_path / "out")
    mem_ax = figs["memory_vs_sequence_length.png"].axes[0]  # type: ignore[attr-defined]
    mfu_ax = figs["mfu_vs_sequence_length.png"].axes[0]  # type: ignore[attr-defined]
    assert _errorbars(mem_ax) == 1 and _errorbars(mfu_ax) == 1
    (bars,) = [c for c in mfu_ax.containers]
    # Three points, each with a whisker of non-zero length (the seeds differ by 4%).
    segments = bars.lines[2][0].get_segments()
    assert len(segments) == 3 and all(seg[1][1] > seg[0][1] for seg in segments)
    labels = mfu_ax.get_legend_handles_labels()[1]
    assert "impossible (MFU > 100%)" in labels
    # The implausible point is still on the line, not dropped.
    (line,) = [ln for ln in mfu_ax.lines if ln.get_label() == "bf16"]
    assert max(line.get_ydata()) > 100
    # Failure markers say which status each is.
    assert "stopped early (OOM, timeout)" in labels
    texts = {t.get_text() for t in mfu_ax.texts}
    assert {"OOM", "timeout"} <= texts


def test_single_runs_get_no_error_bars_and_footnotes_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figs = _figures(monkeypatch)
    analyze(_seq_sweep(tmp_path, seeds=(0,)), tmp_path / "out")
    fig = figs["memory_vs_sequence_length.png"]
    assert _errorbars(fig.axes[0]) == 0  # type: ignore[attr-defined]
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    fig.draw(renderer)  # type: ignore[attr-defined]
    (note,) = [t for t in fig.texts if t.get_text().startswith("Not drawn")]  # type: ignore[attr-defined]
    box, page = note.get_window_extent(renderer), fig.bbox  # type: ignore[attr-defined]
    assert note.get_text().count("\n") >= 1  # long enough to wrap
    assert box.x0 >= page.x0 and box.x1 <= page.x1 and box.y0 >= page.y0 and box.y1 <= page.y1
    # Nothing else drawn over it: the axes' labels end above the footnote.
    ax_box = fig.axes[0].get_tightbbox(renderer)  # type: ignore[attr-defined]
    assert ax_box.y0 >= box.y1 - 1


# ---- energy per token against throughput -----------------------------------------------------


def test_energy_frontier_from_planted_columns(tmp_path: Path) -> None:
    from lmprof.analysis.energy import FILE

    results = tmp_path / "results.csv"
    # (name, tokens/s, J/token): fast_frugal and frugal are the frontier; the rest dominated.
    for name, tps, jpt in (
        ("fast_frugal", 120e3, 0.008),
        ("frugal", 60e3, 0.006),
        ("slow_dear", 50e3, 0.02),
        ("fast_dear", 110e3, 0.012),
    ):
        append_row(
            results, _row(name, "precision", steady_tokens_per_sec=tps, joules_per_token=jpt)
        )
    append_row(results, _row("oom_run", "precision", "oom", steady_tokens_per_sec=""))
    done = analyze(results, tmp_path / "out")
    (plot,) = [p for p in done.plots if p.file == FILE]
    assert plot.path.is_file() and plot.path.stat().st_size > 10_000
    assert "2 of 4 run(s) are Pareto-optimal (fast_frugal, frugal)" in plot.reading
    assert FILE not in dict(done.skipped)


def test_energy_plot_skipped_without_energy_columns(tmp_path: Path) -> None:
    from lmprof.analysis.energy import FILE

    results = tmp_path / "results.csv"
    append_row(results, _row("a", "precision", joules_per_token=""))
    append_row(results, _row("b", "precision"))
    done = analyze(results, tmp_path / "out")
    assert "joules_per_token" in dict(done.skipped)[FILE]
    assert not (tmp_path / "out" / FILE).exists()
    assert (
        "Not plotted: <code>energy_per_token_vs_throughput.png</code>"
        in (tmp_path / "out" / "report.html").read_text()
    )


# ---- without matplotlib ----------------------------------------------------------------------


def test_without_matplotlib_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """matplotlib made unimportable before lmprof loads: tables, the time-to-target section and
    the report are written; every plot is named as skipped."""
    results = _sweep(tmp_path, fast_speed=2.0)
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from lmprof.cli.analyze import main\n"
        f"raise SystemExit(main(['--results', {str(results)!r}, '--out', {str(tmp_path / 'o')!r}]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "no plots: plots need matplotlib" in proc.stdout
    assert "time_to_target_loss.png" in proc.stdout and "energy_per_token" in proc.stdout
    out = tmp_path / "o"
    assert not list(out.glob("*.png"))
    assert {r["run_name"] for r in _table(out)} == {"opts_baseline", "opts_compile"}
    page = (out / "report.html").read_text()
    assert "Speed at equal quality" in page and "fewer tokens" in page
