"""`python -m benchmarks`: the suites' declarations and the runner, on the CPU (no step of a real
suite runs here; a fake suite of `python -c` steps stands in)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks` is a package of the repository, not of src/

from benchmarks.__main__ import main  # noqa: E402
from benchmarks.suites import SUITES, Step, Suite  # noqa: E402


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_list_names_every_suite():
    r = _cli("--list")
    assert r.returncode == 0, r.stderr
    listed = [line.split()[0] for line in r.stdout.splitlines()]
    assert listed == list(SUITES)
    assert {"step", "ops", "memory", "profiling", "energy", "curves", "sweep", "all"} <= set(listed)


def test_unknown_suite_is_one_line_and_exit_2():
    r = _cli("nope", "--out", "x")
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0] and "profiling" in lines[0]
    assert "Traceback" not in r.stderr


def test_running_needs_out(capsys):
    assert main(["ops"]) == 2
    assert "--out" in capsys.readouterr().err


def test_unknown_step_is_one_line(capsys):
    assert main(["profiling", "--out", "x", "--only", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "measured_peak" in err[0]


@pytest.mark.parametrize("name", list(SUITES))
def test_dry_run_prints_commands_whose_files_exist(name, capsys, tmp_path):
    assert main([name, "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    suite = SUITES[name]
    for step in suite.steps:
        assert f"# {name}.{step.name}" in out
        if step.script:
            assert step.script.startswith("benchmarks/")
            assert (ROOT / step.script).is_file() or step.optional, step.script
        for arg in step.args:  # config and sweep files of the repository
            if arg.startswith("{root}/"):
                assert (ROOT / arg.removeprefix("{root}/")).is_file(), arg
    assert not list(tmp_path.iterdir())  # a dry run writes nothing
    for line in out.splitlines():
        if not line.startswith("#"):
            assert sys.executable in line


def test_all_is_every_suite_once():
    parts = [s for n, s in SUITES.items() if n != "all"]
    assert [st.name for st in SUITES["all"].steps] == [
        f"{s.name}.{st.name}" for s in parts for st in s.steps
    ]
    # Suites' folders must not collide in `all` (each its own results.csv).
    owners = {st.folder: s.name for s in parts for st in s.steps}
    for s in parts:
        assert all(owners[st.folder] == s.name for st in s.steps)


def _py(name: str, code: str, **kw) -> Step:
    return Step(name, ("-c", code), name, **kw)


def test_run_writes_environment_logs_summary_and_goes_on_after_a_failure(tmp_path, capsys):
    fake = Suite(
        "fake",
        "a fake suite",
        "nothing",
        (
            _py(
                "first",
                "import os, pathlib, sys; print('to stdout'); print('to stderr', file=sys.stderr);"
                "pathlib.Path('{dir}', 'table.md').write_text(os.environ['PYTHONPATH'])",
                keep={"table.md": "first_table.md"},
            ),
            _py("broken", "import sys; print('going down'); sys.exit(3)"),
            _py("slow", "import time; time.sleep(30)", timeout=1),
            _py("table", "print('| a | b |')", stdout="table.md"),
            Step("later", ("benchmarks/not_written_yet.py",), "later", optional=True),
        ),
    )
    out = tmp_path / "out"
    rc = main(["fake", "--out", str(out)], suites={"fake": fake})
    printed = capsys.readouterr()
    assert rc == 1
    assert "fake.broken: failed (exit 3)" in printed.out
    assert "fake.slow: timed out after 1 s" in printed.out
    assert "fake.table: ok" in printed.out  # the steps after the failures still ran
    assert "fake.later: skipped" in printed.out
    assert "going down" in printed.err  # a failure shows the end of its log

    env = (out / "environment.txt").read_text()
    for key in ("date_utc", "command", "lmprof_commit", "python", "torch", "gpu"):
        assert re.search(rf"^{key}: \S", env, re.M), key
    assert "-m benchmarks fake --out" in env

    first = (out / "logs" / "fake.first.log").read_text()
    assert "to stdout" in first and "to stderr" in first and "# ok" in first
    assert "# failed (exit 3)" in (out / "logs" / "fake.broken.log").read_text()
    # Steps run with the repository's src first on PYTHONPATH; kept files land at the top.
    assert (out / "first_table.md").read_text().split(os.pathsep)[0] == str(ROOT / "src")
    assert (out / "table" / "table.md").read_text() == "| a | b |\n"
    summary = (out / "SUMMARY.md").read_text()
    assert "| fake.broken | failed (exit 3) | 0 | logs/fake.broken.log |" in summary
    assert "| fake.later | skipped" in summary


def test_only_runs_the_named_steps_and_traces_are_gzipped(tmp_path):
    fake = Suite(
        "fake",
        "a fake suite",
        "nothing",
        (
            _py(
                "trace",
                "import pathlib; p = pathlib.Path('{dir}/results/traces/r');"
                "p.mkdir(parents=True); (p / 'trace.json').write_text('{{}}')",
            ),
            _py("other", "import sys; sys.exit(1)"),
        ),
    )
    assert main(["fake", "--out", str(tmp_path), "--only", "trace"], suites={"fake": fake}) == 0
    assert (tmp_path / "trace" / "results" / "traces" / "r" / "trace.json.gz").is_file()
    assert not (tmp_path / "trace" / "results" / "traces" / "r" / "trace.json").exists()
    assert not (tmp_path / "logs" / "fake.other.log").exists()


OUTSIDE = re.compile(r"/work\b|\.\./shared|/tmp\b|\$HOME|~/|/home/|/root\b|/Users/")


def test_no_benchmark_file_names_a_path_outside_the_repository():
    files = [
        p
        for p in (ROOT / "benchmarks").rglob("*")
        if p.is_file()
        and "results" not in p.relative_to(ROOT / "benchmarks").parts
        and "__pycache__" not in p.parts
    ]
    assert any(p.name == "suites.py" for p in files)
    offenders = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in files
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not offenders, offenders
    assert not list((ROOT / "benchmarks").glob("*.sh"))  # the suites replaced them


def test_nanogpt_recipe_reads_both_trainers_evaluations_and_picks_the_best(tmp_path):
    from benchmarks import nanogpt_recipe as nr

    log = tmp_path / "nanoGPT_seed0.log"
    log.write_text(
        "iter 0: loss 4.2, time 10ms\nstep 0: train loss 4.2000, val loss 4.1900\n"
        "step 250: train loss 1.9000, val loss 1.9500\nstep 500: train loss 1.5, val loss 1.95\n"
        "step 750: train loss 1.2000, val loss 2.0100\n"
    )
    nano = nr.Run("nanoGPT", 0, [], log)
    nr.read_results(nano, tmp_path)
    assert nano.evals == {0: 4.19, 250: 1.95, 500: 1.95, 750: 2.01}
    assert nano.best() == (1.95, 250)  # a tie goes to the earlier step
    details = tmp_path / "lmprof" / "results" / "details"
    details.mkdir(parents=True)
    (details / "lmprof_seed1_eval.csv").write_text("step,eval_loss\n250,2.0\n500,1.7\n750,1.8\n")
    (tmp_path / "lmprof" / "results.csv").write_text(
        "run_name,wall_time_sec\nlmprof_seed0,9\nlmprof_seed1,12.5\n"
    )
    lm = nr.Run("lmprof", 1, [], tmp_path / "lmprof_seed1.log")
    nr.read_results(lm, tmp_path)
    assert lm.best() == (1.7, 500) and lm.row["wall_time_sec"] == "12.5"
    nano.alone = lm.alone = True
    nano.returncode = lm.returncode = 0
    nano.wall_s, lm.wall_s = 30.0, 10.0
    text = nr.table([nano, lm], smoke=False)
    assert "lmprof 3.00x as fast" in text
    assert "| nanoGPT | 1 | 1.9500 (1.9500 to 1.9500) | 250 |" in text


def test_nanogpt_recipe_runs_share_the_gpu_and_the_deadline_stops_the_rest(tmp_path):
    from benchmarks import nanogpt_recipe as nr

    quick = [sys.executable, "-c", "print('done')"]
    runs = [nr.Run("lmprof", k, quick, tmp_path / f"quick{k}.log") for k in range(2)]
    nr.run_all(runs, tmp_path, 2, float("inf"))
    assert [(r.returncode, r.stopped, r.shared_with) for r in runs] == [(0, False, 2)] * 2
    assert (tmp_path / "quick0.log").read_text() == "done\n"
    slow = nr.Run(
        "nanoGPT", 0, [sys.executable, "-c", "import time; time.sleep(120)"], tmp_path / "s"
    )
    never = nr.Run("nanoGPT", 1, quick, tmp_path / "never.log")
    nr.run_all([slow, never], tmp_path, 1, nr.time.perf_counter() + 1)
    assert slow.stopped and slow.returncode == -nr.signal.SIGTERM
    assert never.stopped and never.returncode is None and not never.log.exists()


# ---- benchmarks/step_throughput.py: its groups and the nanoGPT rows, without a GPU


def test_step_throughput_groups_expand_to_known_rows_and_ratios_name_rows():
    from benchmarks import step_throughput as st

    rows = st.expand(["vs_nanogpt", "nanogpt_small_nobias", "small_kernels", "losses"])
    assert rows[0] == "nanogpt_small_nobias" and rows.count("nanogpt_small_nobias") == 1
    assert set(rows) <= set(st.CONFIGS)
    assert {st.CONFIGS[n]["ref"] for n in rows if st.CONFIGS[n].get("ref")} <= set(rows)
    # nanoGPT's rows and lmprof's equal-architecture rows differ only where lmprof must say so.
    nano, ours = st.CONFIGS["nanogpt_small_nobias"], st.CONFIGS["small_cudnn_bf16_compile_nobias"]
    for key in ("n_layers", "d_model", "n_heads", "batch_size", "sequence_length", "bias"):
        assert nano[key] == ours[key], key
    assert ours["dropout"] == 0.0 and ours["compile"] and ours["precision"] == "bf16"


def test_step_throughput_nanogpt_row_is_skipped_when_ext_is_absent(monkeypatch, tmp_path):
    import torch

    from benchmarks import step_throughput as st

    monkeypatch.setattr(st, "NANOGPT", tmp_path / "absent" / "model.py")
    spec = st.smoke_spec(st.CONFIGS["nanogpt_small_nobias"])
    row = st.measure("nanogpt_small_nobias", spec, 2, 1, torch.device("cpu"))
    assert row["status"] == "skipped" and "absent" in row["detail"]
    assert "skipped" in st.markdown([row])


def test_step_throughput_quack_rows_are_skipped_with_a_line_where_quack_cannot_run(capsys):
    import torch

    from benchmarks import step_throughput as st

    for loss in ("quack", "quack_chunked"):
        name = f"small_cudnn_bf16_compile_nobias_{loss}"
        assert name in st.GROUPS["losses"] and st.CONFIGS[name]["loss"] == loss
        row = st.measure(name, st.smoke_spec(st.CONFIGS[name]), 2, 1, torch.device("cpu"))
        assert row["status"] == "skipped" and ("quack" in row["detail"] or "CUDA" in row["detail"])
        assert f"{name} skipped" in capsys.readouterr().err


def test_step_throughput_table_gives_the_ratio_to_the_ref_row():
    from benchmarks import step_throughput as st

    def ok(name, tps, ref=None):
        return dict(
            name=name, ref=ref, status="ok", batch_size=16, sequence_length=1024,
            tokens_per_sec=tps, mfu=0.4, step_ms_p50=1.0, step_ms_p10=0.9, step_ms_p90=1.2,
            wall_ms_per_step=1.0, peak_mem_gib=8.0, compile_s=0.0,
        )  # fmt: skip

    table = st.markdown([ok("nano", 400e3), ok("ours", 480e3, ref="nano")])
    assert "1.20x nano" in table and "[0.90, 1.20]" in table
