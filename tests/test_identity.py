"""A run is its configuration, seed and repeat, not its name: a name another configuration holds
is refused before work (or renamed on request), no run writes over another's files, and
identical configurations never produce a verdict, even on a loaded machine."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import TINY

from lmprof.cli import main
from lmprof.results import append_row


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_name_another_configuration_holds_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", *TINY, "run_name=x"]) == 0
    first_log = (tmp_path / "logs/x.log").read_text()
    capsys.readouterr()
    assert main(["run", *TINY, "run_name=x", "d_model=48"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'x' is already used" in err[0] and "line 2" in err[0]
    assert "d_model" in err[0] and "--fresh-name" in err[0]
    assert len(_rows(tmp_path / "results.csv")) == 1  # nothing started, nothing written
    assert (tmp_path / "logs/x.log").read_text() == first_log

    # Asked for: a fresh name, said in one line, and its own files.
    assert main(["run", *TINY, "run_name=x", "d_model=48", "--fresh-name"]) == 0
    assert "named 'x-2' (logging.fresh_name)" in capsys.readouterr().err
    rows = _rows(tmp_path / "results.csv")
    assert [r["run_name"] for r in rows] == ["x", "x-2"]
    assert rows[0]["config_hash"] != rows[1]["config_hash"]
    assert (tmp_path / "results/details/x-2_metrics.csv").is_file()

    # The same configuration again under its name: accepted, and its files are a new attempt's.
    assert main(["run", *TINY, "run_name=x"]) == 0
    rows = _rows(tmp_path / "results.csv")
    assert rows[-1]["run_name"] == "x" and rows[-1]["attempt"] == "2"
    assert (tmp_path / "logs/x.log").read_text() == first_log
    assert (tmp_path / "results/details/x@2_metrics.csv").is_file()
    assert "ended: ok" in (tmp_path / "logs/x@2.log").read_text()


def test_a_sweep_refuses_a_taken_name_before_its_first_run(tmp_path, capsys):
    out = tmp_path / "out"
    append_row(
        out / "results.csv",
        {"run_name": "b", "status": "ok", "config_hash": "0123456789abcdef", "seed": 42},
    )
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "base_config: {max_steps: 2}\n"
        "experiments:\n"
        "  - {name: g, tag: t, runs: [{name: a, params: {}}, {name: b, params: {lr: 0.01}}]}\n"
    )
    code = main(["sweep", str(sweep), f"logging.output_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2 and "name 'b' is already used" in err and "0123456789abcdef" in err
    assert len(_rows(out / "results.csv")) == 1 and not (out / "logs").exists()  # a never ran
    assert (
        main(["sweep", str(sweep), f"logging.output_dir={out}", "--fresh-name", "--dry-run"]) == 0
    )
    assert "this run is named 'b-2'" in capsys.readouterr().err


def _row(name: str, status: str, h: str, line_tag: str = "t", **extra: object) -> dict:
    return {
        "run_name": name,
        "tag": line_tag,
        "status": status,
        "config_hash": h,
        "seed": 42,
        "repeat": 0,
        "attempt": 0 if status == "skipped" else 1,
        "steady_tokens_per_sec": 1000 if status == "ok" else "",
        **extra,
    }


def test_a_skipped_row_never_hides_an_ok_row_and_names_never_merge_configurations(tmp_path):
    from lmprof.analysis.load import load_table

    results = tmp_path / "results.csv"
    append_row(results, _row("a", "ok", "h1", batch_size=8))
    append_row(results, _row("a", "skipped", "h1", batch_size=8))  # a later sweep could not run
    append_row(results, _row("s", "ok", "h2", batch_size=8))
    append_row(results, _row("s", "ok", "h3", batch_size=16))  # the name reused for another one
    table = load_table(results)
    by_name = {r.name: r for r in table.runs}
    assert by_name["a"].status == "ok" and by_name["a"].line == 2
    assert [m.lines for m in table.merged] == [[2, 3]]
    assert sorted(n for n in by_name if n.startswith("s")) == ["s [h2]", "s [h3]"]
    assert table.shared_names == ["s"]
    # Each row reads its own files: the skipped one wrote none.
    assert [r.stem for r in table.all_runs] == ["a", "s", "s"]


def _load(seconds: float) -> subprocess.Popen:
    """Another process keeping a core busy while the runs are timed."""
    return subprocess.Popen(
        [sys.executable, "-c", f"import time\nt=time.time()+{seconds}\nwhile time.time()<t: pass"]
    )


def test_identical_configurations_never_give_a_verdict_under_load(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from lmprof.analysis import analyze

    monkeypatch.chdir(tmp_path)
    busy = _load(120)
    try:
        for name in ("opts_baseline", "opts_twin", "opts_other_twin"):
            assert main(["run", *TINY, "tag=opts", f"run_name={name}"]) == 0
    finally:
        busy.kill()
        busy.wait()
    assert len({r["config_hash"] for r in _rows(tmp_path / "results.csv")}) == 1
    done = analyze(tmp_path / "results.csv", tmp_path / "out")
    report = done.report.read_text()
    # One run under three names: said, and nothing compared with itself.
    assert "opts_baseline = opts_twin = opts_other_twin" in report
    verdicts = re.compile(r"\d+(\.\d+)?x \[|faster|slower|(?<![+\w])[+-]\d+\.\d%")
    for text in [re.sub(r"<[^>]+>", " ", report), *(p.reading for p in done.plots)]:
        for hit in verdicts.finditer(text):
            around = text[hit.start() : hit.start() + 200]
            assert "no verdict" in around, around
    for table in done.tables:
        if table.suffix != ".csv":
            continue
        for row in _rows(table):
            for col, value in row.items():
                if col.endswith(("_change_pct", "_ratio_95ci")) and value:
                    assert "no verdict" in value, (table.name, col, value)


def test_sweep_repeats_are_interleaved_and_it_says_so(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "base_config: {max_steps: 2}\n"
        "experiments:\n"
        "  - {name: g, tag: t, runs: [{name: a, params: {}}, {name: b, params: {lr: 0.01}}]}\n"
    )
    assert (
        main(["sweep", str(sweep), f"logging.output_dir={tmp_path}", "--repeat", "2", "--dry-run"])
        == 0
    )
    out = capsys.readouterr().out
    assert "repeats are interleaved: 2 rounds" in out
    order = [n for n in re.findall(r"\b([ab]_rep\d)\b", out)]
    assert list(dict.fromkeys(order)) == ["a_rep1", "b_rep1", "a_rep2", "b_rep2"]


def _timed(name: str, h: str, tps: float, sweep: str, **extra: object) -> dict:
    p50 = 1e5 / tps
    return {
        "run_name": name,
        "tag": "opts",
        "status": "ok",
        "config_hash": h,
        "seed": 42,
        "repeat": 0,
        "attempt": 1,
        "sweep_id": sweep,
        "steady_tokens_per_sec": tps,
        "step_time_p50_ms": p50,
        "step_time_p50_ci_low_ms": p50 * 0.99,
        "step_time_p50_ci_high_ms": p50 * 1.01,
        "noisy": False,
        **extra,
    }


def test_a_comparison_two_sweeps_contradict_is_flagged_once_not_reported_twice(tmp_path):
    pytest.importorskip("matplotlib")
    from lmprof.analysis import analyze

    results = tmp_path / "results.csv"
    # bf16 against fp32: 0.28x in one sweep, 2.37x in another, each interval tight.
    for sweep, base, bf16 in (("s1", 1000, 280), ("s2", 1000, 2370)):
        append_row(results, _timed("opts_baseline", "hb", base, sweep, precision="fp32"))
        append_row(results, _timed("opts_bf16", "hf", bf16, sweep, precision="bf16"))
    done = analyze(results, tmp_path / "out")
    report = done.report.read_text()
    assert report.count("<b>Contradiction:</b>") == 1
    assert "sweep s1 measured 0.28x [" in report and "sweep s2 2.37x [" in report
    (row,) = [r for r in _rows(tmp_path / "out/tables/opts.csv") if r["run_name"] == "opts_bf16"]
    assert "contradiction: no verdict" in row["tokens_per_sec_ratio_95ci"]
    assert row["tokens_per_sec_change_pct"] == "contradiction: no verdict"
    reading = next(p.reading for p in done.plots if p.file.startswith("optimization_bf16"))
    assert "contradiction: no verdict" in reading and "gives" not in reading
