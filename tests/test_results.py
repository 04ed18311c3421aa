"""The one results writer: atomic appends under a lock, tables that widen safely."""

from __future__ import annotations

import multiprocessing as mp

from lmprof.results import SEED_COLUMNS, append_row, columns, groups, producer_of, read_rows


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
    assert columns()[0] == "run_name"


def test_a_table_of_thousands_of_rows_widens_keeping_every_cell(tmp_path):
    # Built directly (3,000 appends would rewrite the table 3,000 times), then appended to:
    # a foreign column, a torn last line and a widening row keep every cell in its column.
    path = tmp_path / "results.csv"
    append_row(path, {"run_name": "r0", "status": "ok", "throughput": 0, "mine": "x0"})
    header = path.read_text().splitlines()[0].split(",")
    with open(path, "a") as f:
        for i in range(1, 3000):
            cells = {"run_name": f"r{i}", "status": "ok", "throughput": str(i), "mine": f"x{i}"}
            f.write(",".join(cells.get(c, "") for c in header) + "\n")
        f.write("torn,")  # a kill mid-line: the cells it has are kept
    append_row(path, {"run_name": "new", "status": "oom", "widened": 1.25})
    rows = read_rows(path)
    assert len(rows) == 3002 and [r["run_name"] for r in rows[:3]] == ["r0", "r1", "r2"]
    assert all(
        r["throughput"] == str(i) and r["mine"] == f"x{i}" for i, r in enumerate(rows[:3000])
    )
    assert all(r["widened"] == "" for r in rows[:3001]) and rows[-1]["widened"] == "1.25"
    assert rows[3000]["run_name"] == "torn" and rows[3000]["status"] == ""
    assert rows[-1]["status"] == "oom" and rows[-1]["mine"] == ""
    header = path.read_text().splitlines()[0].split(",")
    assert header[: len(SEED_COLUMNS)] == list(SEED_COLUMNS) and header[-1] == "widened"
    append_row(path, {"run_name": "same"})  # no new column: the rows are copied as they are
    assert read_rows(path)[:-1] == rows


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


def test_each_column_has_one_producer_and_the_seed_columns_are_produced():
    seen: dict[str, str] = {}
    for g in groups():
        assert g.meaning, g.name
        for c in g.columns:
            assert c not in seen, f"{c} declared by {seen[c]} and {g.name}"
            seen[c] = g.name
    assert [c for c in SEED_COLUMNS if c not in seen] == []
    # Families named at run time are declared by pattern, and only those names match.
    assert producer_of("forward_ms_p50").name == "instruments"
    assert producer_of("profile_share_matmul").name == "instruments"
    assert producer_of("forward_ms_p51") is None


def test_a_row_for_a_child_that_never_started_uses_declared_columns(tmp_path):
    from lmprof.config import build_config
    from lmprof.sweep.classify import parent_row
    from lmprof.sweep.plan import RunPlan

    cfg = build_config(overrides=["run_name=r1"])
    plan = RunPlan(index=1, name="r1", tags=(), group="g", cfg=cfg)
    row = parent_row(plan, "failed", "why", 1.0, "t0")
    assert [c for c in row if producer_of(c) is None] == []


def test_architecture_says_where_every_column_group_is_computed():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "ARCHITECTURE.md").read_text()
    for g in groups():
        assert f"| {g.name} |" in text, g.name


def test_every_column_the_readme_names_for_results_csv_is_a_declared_column():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (line,) = [t for t in text.splitlines() if t.startswith("| `results.csv` |")]
    named = re.findall(r"`([a-z0-9_]+)`", line.split("|")[2])
    assert len(named) > 20
    assert [c for c in named if producer_of(c) is None] == []
