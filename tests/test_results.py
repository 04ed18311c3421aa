"""The one results writer: atomic appends under a lock, tables that widen safely."""

from __future__ import annotations

import multiprocessing as mp

from lmprof.results import COLUMNS, SEED_COLUMNS, append_row, read_rows


def test_rows_keep_the_seed_columns_first_and_new_columns_widen_the_table(tmp_path):
    path = tmp_path / "results.csv"
    append_row(path, {"run_name": "a", "throughput": 1.5, "status": "ok"})
    append_row(path, {"run_name": "b", "status": "oom", "my_new_metric": 7})
    rows = read_rows(path)
    assert [r["run_name"] for r in rows] == ["a", "b"]
    assert rows[0]["my_new_metric"] == "" and rows[1]["my_new_metric"] == "7"
    header = path.read_text().splitlines()[0].split(",")
    assert header[: len(SEED_COLUMNS)] == list(SEED_COLUMNS)  # always all of them, in order
    assert header.index("status") < header.index("my_new_metric")
    assert COLUMNS[0] == "run_name"


def _writer(path, who: int, n: int) -> None:
    for i in range(n):
        append_row(path, {"run_name": f"p{who}_{i}", "status": "ok", f"col{who}": i})


def test_concurrent_appends_never_interleave_or_lose_a_row(tmp_path):
    path = tmp_path / "results.csv"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 15)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = read_rows(path)
    assert sorted(r["run_name"] for r in rows) == sorted(
        f"p{w}_{i}" for w in range(3) for i in range(15)
    )
    assert all(len(r) == len(rows[0]) for r in rows)  # every row has every column
    assert not list(tmp_path.glob(".results.csv.*.tmp"))  # no temp file left behind


def test_the_lock_leaves_no_file_in_the_users_folder_and_git_ignores_it(tmp_path):
    import shutil
    import subprocess

    append_row(tmp_path / "results.csv", {"run_name": "a", "status": "ok"})
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "results.csv"
    ]
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        status = subprocess.run(
            ["git", "-C", str(tmp_path), "status", "--porcelain", "--untracked-files=all"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert status.split() == ["??", "results.csv"]
