"""A corpus of bad inputs and faults: each ends as exactly one line on stderr, the documented
exit status, no traceback, and nothing half-written left behind.

Three tiers, cheapest first:
- `lmprof run|sweep|estimate` in a subprocess for the mistakes found before torch is imported
  (YAML files, config values, sweep files): the console is the point, and each costs ~0.5 s;
- `lmprof.cli.main` in this process for the faults found once the run's modules are loaded
  (output folder, memory, links, a full disk, checkpoints), with stderr captured;
- two real subprocess runs where the signal or the second process is the point (SIGTERM during
  a run, two sweeps at once).
"""

from __future__ import annotations

import csv
import errno
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tiny import tiny

from lmprof.cli import main
from lmprof.config import build_config
from lmprof.errors import ConfigError, OutputError, UserError

REPO = Path(__file__).resolve().parents[1]

TINY = tiny(
    "max_steps=2",
    "logging_steps=1",
    "eval_max_batches=1",
    "system.device=cpu",
    "energy.sample=false",
)
# The memory model refuses this in milliseconds: a cheap way to append a real row.
HUGE = "batch_size=1000000000000"


def _env() -> dict[str, str]:
    src = str(REPO / "src")
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{path}" if path else src)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# Tier 1: subprocesses, nothing trained. Each case: files to write, the command, the exit
# status and a fragment of the one line.

DEEP_FLOW = "a: " + "[" * 2000 + "]" * 2000 + "\n"
DEEP_BLOCK = "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 120))
BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 7)
)
SWEEP_HEAD = "base_config: {data.source: synthetic}\n"

CLI_CASES = {
    # config files: the loader (lmprof.yamlio)
    "missing config": ({}, ["run", "absent.yaml"], 2, "does not exist"),
    "config is a directory": ({"cfg.yaml/": ""}, ["run", "cfg.yaml"], 2, "is a directory"),
    "config is a list": ({"c.yaml": "- 1\n- 2\n"}, ["run", "c.yaml"], 2, "not a list"),
    "config is a scalar": ({"c.yaml": "hello\n"}, ["run", "c.yaml"], 2, "not a str"),
    "not UTF-8": ({"c.yaml": b"model:\n  d_model: \xff\xfe\n"}, ["run", "c.yaml"], 2, "offset 18"),
    "too large": ({"c.yaml": "# x\n" * 300_000}, ["run", "c.yaml"], 2, "larger than"),
    "duplicate section": (
        {"c.yaml": "model:\n  d_model: 64\ntraining:\n  lr: 0.1\nmodel:\n  n_layers: 2\n"},
        ["run", "c.yaml"],
        2,
        "'model' is given twice (lines 1 and 5)",
    ),
    "alias bomb": ({"c.yaml": BOMB}, ["run", "c.yaml"], 2, "alias bomb"),
    "deep flow nesting": ({"c.yaml": DEEP_FLOW}, ["run", "c.yaml"], 2, "nested deeper"),
    "deep block nesting": ({"c.yaml": DEEP_BLOCK}, ["run", "c.yaml"], 2, "nested deeper"),
    "invalid YAML": ({"c.yaml": "model: [1, 2\n"}, ["run", "c.yaml"], 2, "not valid YAML"),
    "two documents": ({"c.yaml": "a: 1\n---\nb: 2\n"}, ["run", "c.yaml"], 2, "not valid YAML"),
    "python tag": (
        {"c.yaml": "a: !!python/object/apply:os.system [echo hi]\n"},
        ["run", "c.yaml"],
        2,
        "not valid YAML",
    ),
    # config values: config.validate
    "unknown section": ({"c.yaml": "modle:\n  d_model: 64\n"}, ["run", "c.yaml"], 2, "unknown key"),
    "wrong type": ({"c.yaml": "model:\n  d_model: wide\n"}, ["run", "c.yaml"], 2, "integer"),
    "list for a number": ({}, ["run", "d_model=[1, 2]"], 2, "expected an integer"),
    "non-string key": ({"c.yaml": "1: 2\n"}, ["run", "c.yaml"], 2, "keys must be strings"),
    "lr nan": ({}, ["run", "lr=nan"], 2, "finite"),
    "lr 1e400": ({}, ["run", "lr=1e400"], 2, "finite"),
    "negative batch": ({}, ["run", "batch_size=-1"], 2, "positive"),
    "zero layers": ({}, ["run", "n_layers=0"], 2, "positive"),
    "absurd integer": ({}, ["run", "d_model=" + "9" * 40], 2, "at most"),
    "run name with a slash": ({}, ["run", "run_name=../evil"], 2, "plain file name"),
    "run name with a separator": ({}, ["run", "run_name=a/b"], 2, "plain file name"),
    "override with an empty key": ({}, ["run", "=3"], 2, "empty key"),
    # sweep files: sweep.plan
    "sweep without experiments": (
        {"s.yaml": SWEEP_HEAD},
        ["sweep", "s.yaml"],
        2,
        "no 'experiments'",
    ),
    "sweep with an unknown top-level key": (
        {"s.yaml": SWEEP_HEAD + "experiments: []\nextra: 1\n"},
        ["sweep", "s.yaml"],
        2,
        "unknown top-level key",
    ),
    "sweep with a duplicated group": (
        {"s.yaml": SWEEP_HEAD + "experiments:\n- name: a\n  tag: t\n  runs: {}\n  runs: {}\n"},
        ["sweep", "s.yaml"],
        2,
        "given twice",
    ),
    "sweep that is not UTF-8": ({"s.yaml": b"\x80\x81"}, ["sweep", "s.yaml"], 2, "not UTF-8"),
    # hostile bytes and text in a config: one line with the byte offset (lmprof.yamlio)
    "a NUL byte": (
        {"c.yaml": b"model:\n  d_model: 64\x00\n"},
        ["run", "c.yaml"],
        2,
        "NUL byte at byte offset 20",
    ),
    "a control character": (
        {"c.yaml": b"\xef\xbb\xbfa: 1\nb: x\x1b[31m\n"},
        ["run", "c.yaml"],
        2,
        "U+001B at byte offset 12 (line 2)",  # the byte-order mark counted
    ),
    "a C1 control character": ({"c.yaml": "a: \x85\x9b\n"}, ["run", "c.yaml"], 2, "U+009B"),
    "a lone surrogate's bytes": (
        {"c.yaml": b'tag: "\xed\xa0\x80"\n'},
        ["run", "c.yaml"],
        2,
        "not UTF-8 text (byte 0xed at offset 6)",
    ),
    "a lone surrogate escaped": ({"c.yaml": 'tag: "\\ud800"\n'}, ["run", "c.yaml"], 2, "U+D800"),
    "a NUL escaped": ({"c.yaml": 'data:\n  cache_dir: "a\\0b"\n'}, ["run", "c.yaml"], 2, "U+0000"),
    "a sweep with a NUL byte": ({"s.yaml": b"experiments: []\x00"}, ["sweep", "s.yaml"], 2, "NUL"),
    # run names are file names, on every system (config.RUN_NAME_RULE)
    "run name with a newline": (
        {"c.yaml": 'logging:\n  run_name: "abc\\n"\n'},
        ["run", "c.yaml"],
        2,
        "run_name='abc\\n' is invalid",
    ),
    "run name a device name": ({}, ["run", "run_name=nul"], 2, "Windows device name"),
    "run name a device name with an extension": ({}, ["run", "run_name=COM1.x"], 2, "device"),
    "run name ending in a dot": ({}, ["run", "run_name=abc."], 2, "not ending in '.'"),
    "run name of dots": (
        {},
        ["run", "run_name=.."],
        2,
        "plain file name that every system accepts",
    ),
    "run name too long": ({}, ["run", "run_name=" + "a" * 201], 2, "at most 200 characters"),
    "a value of 100001 characters": (
        {},
        ["estimate", "tag=\x01" + "x" * 10**5],
        2,
        "(100001 characters) is invalid",  # the line stays a line
    ),
    # a FIFO (a device, a socket) would block or fail mid-read: refused before the run
    "data.path a named pipe": (
        {"corpus.txt": os.mkfifo},
        ["run", "data.source=text", "data.path=corpus.txt"],
        2,
        "is not a regular file or a folder",
    ),
    # a path naming an unknown user's home
    "data.path of an unknown user": (
        {},
        ["run", "data.source=text", "data.path=~nosuchuser25/corpus.txt"],
        2,
        "user 'nosuchuser25' is unknown here",
    ),
    "tokenizer_path of an unknown user": (
        {},
        ["run", "tokenizer=file", "data.tokenizer_path=~nosuchuser25/t.json"],
        2,
        "cannot be expanded",
    ),
    # a data key the chosen source does not read
    "data.path without data.source=text": (
        {},
        ["run", "data.path=my.txt"],
        2,
        "data.path='my.txt' is invalid: is read by data.source=text only, and data.source is stdlib",
    ),
    "an hf key with the text source": (
        {},
        ["run", "data.source=text", "data.path=x", "data.hf_config=y"],
        2,
        "is read by data.source=hf only",
    ),
    "streaming without hf": ({}, ["run", "data.streaming=true"], 2, "data.source=hf only"),
    "estimate of a bad value": ({}, ["estimate", "weight_decay=nan"], 2, "finite"),
    # every count has a ceiling (sweep.plan.MAX_RUNS), checked before anything is expanded
    "a huge repeat": (
        {
            "s.yaml": SWEEP_HEAD
            + "experiments:\n- {name: g, repeat: 1000000000000, runs: [{name: a}]}\n"
        },
        ["sweep", "s.yaml"],
        2,
        "expands to 1,000,000,000,000 runs, more than a sweep file may hold (10,000",
    ),
    "a huge grid": (
        {
            "s.yaml": SWEEP_HEAD
            + "experiments:\n- name: g\n  params:\n"
            + "".join(f"    k{i}.x: [{', '.join(['1'] * 40)}]\n" for i in range(12))
        },
        ["sweep", "s.yaml"],
        2,
        "more than a sweep file may hold",
    ),
    "many seeds times a repeat": (
        {
            "s.yaml": SWEEP_HEAD
            + "experiments:\n- name: g\n  repeat: 200\n  seeds: ["
            + ", ".join(map(str, range(100)))
            + "]\n  runs: [{name: a}]\n"
        },
        ["sweep", "s.yaml"],
        2,
        "expands to 20,000 runs",
    ),
    "runs over the ceiling across groups": (
        {
            "s.yaml": SWEEP_HEAD
            + "experiments:\n"
            + "".join(f"- {{name: g{i}, repeat: 4000, runs: [{{name: r{i}}}]}}\n" for i in range(3))
        },
        ["sweep", "s.yaml"],
        2,
        "group 'g2', run 'r2' brings the sweep to 12,000 runs",
    ),
    "find-max with a billion probes": (
        {},
        ["find-max", "data.source=synthetic", "--vary", "batch_size", "--max-probes", str(10**9)],
        2,
        "--max-probes from 2 to 124",
    ),
    "--repeat 0": (
        {"s.yaml": SWEEP_HEAD + "experiments:\n- {name: g, runs: [{name: a}]}\n"},
        ["sweep", "s.yaml", "--repeat", "0"],
        2,
        "repeat must be a positive integer (got 0)",
    ),
}


@pytest.mark.parametrize("case", list(CLI_CASES), ids=list(CLI_CASES))
def test_a_bad_input_is_one_line_and_leaves_nothing(case, tmp_path):
    files, argv, code, fragment = CLI_CASES[case]
    for name, content in files.items():
        if name.endswith("/"):
            (tmp_path / name).mkdir()
        elif content is os.mkfifo:  # a named pipe: a reader would block for ever
            os.mkfifo(tmp_path / name)
        elif isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        else:
            (tmp_path / name).write_text(content)
    before = _files(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "lmprof", *argv],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = _one_error_line(proc.stderr)
    assert "Traceback" not in proc.stdout
    assert proc.returncode == code, (proc.returncode, line)
    assert fragment in line, line
    assert _files(tmp_path) == before  # no results.csv, log, temp file


# ---------------------------------------------------------------------------------------------
# Values the config refuses (in-process: the console line is the CLI's, tested above)

BAD_VALUES = [
    ("training.lr", float("nan")),
    ("training.lr", float("inf")),
    ("training.lr", "1e400"),
    ("training.lr", -1e-3),
    ("training.weight_decay", float("nan")),
    ("training.weight_decay", float("-inf")),
    ("training.batch_size", 10**30),
    ("model.n_layers", 2**70),
    ("training.seed", 2**40),
    ("model.dropout", 1.5),
    ("model.d_model", 0),
    ("training.batch_size", True),
    ("training.lr", "fast"),
    ("system.precision", "fp8"),
    ("training.max_steps", 1.5),
    ("system.num_gpus", 0),
    ("data.val_fraction", 1.0),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=[f"{k}={v!r}" for k, v in BAD_VALUES])
def test_the_config_refuses_a_bad_value_in_one_line(key, value):
    section, name = key.split(".")
    with pytest.raises(ConfigError) as info:
        build_config({section: {name: value}})
    assert key in str(info.value) and "\n" not in str(info.value)


def test_a_later_source_replaces_the_keys_of_the_earlier_one():
    # The README's offline run of the seed's WikiText config: data.source=synthetic on top.
    seed = {"dataset_name": "wikitext", "dataset_config": "wikitext-103-raw-v1"}
    cfg = build_config(seed, overrides=["data.source=synthetic"])
    assert (cfg.data.source, cfg.data.hf_config) == ("synthetic", "")
    assert cfg.hash() == build_config({"data": {"source": "synthetic"}}).hash()
    # A saved config from before the rule (stdlib with a WikiText config name) still loads.
    from lmprof.config import from_dict

    old = build_config().to_dict()
    old["data"]["hf_config"] = "wikitext-103-raw-v1"
    assert from_dict(old).data.hf_config == ""
    # Given after the source was chosen, the key is meant: refused, naming it.
    with pytest.raises(ConfigError, match="data.hf_config"):
        build_config({"data": {"source": "synthetic"}}, overrides=["data.hf_config=x"])


def test_an_empty_config_file_is_the_defaults(tmp_path):
    from lmprof.config import load_config

    (tmp_path / "c.yaml").write_text("# nothing here\n")
    assert load_config(tmp_path / "c.yaml").to_dict() == build_config().to_dict()


def test_merge_keys_may_override_what_they_merge(tmp_path):
    from lmprof.yamlio import load_mapping

    (tmp_path / "c.yaml").write_text(
        "base: &b {d_model: 64, n_layers: 2}\nmodel:\n  <<: *b\n  d_model: 128\n"
    )
    assert load_mapping(tmp_path / "c.yaml")["model"] == {"d_model": 128, "n_layers": 2}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_config_is_one_line(tmp_path):
    from lmprof.yamlio import load_mapping

    p = tmp_path / "c.yaml"
    p.write_text("a: 1\n")
    p.chmod(0)
    with pytest.raises(UserError, match="permission denied"):
        load_mapping(p)


def test_a_file_that_cannot_be_read_is_one_line_even_for_root(tmp_path, monkeypatch):
    from lmprof import yamlio

    p = tmp_path / "c.yaml"
    p.write_text("a: 1\n")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(yamlio, "open", denied, raising=False)
    with pytest.raises(UserError, match="cannot be read: permission denied"):
        yamlio.load_mapping(p)


def test_every_yaml_read_goes_through_the_one_loader():
    import re

    reads = re.compile(r"yaml\.(safe_load|load|full_load|unsafe_load|load_all)\(")
    offenders = [
        str(f.relative_to(REPO))
        for d in ("src", "benchmarks", "scripts")
        for f in (REPO / d).rglob("*.py")
        if f.name != "yamlio.py" and reads.search(f.read_text())
    ]
    offenders += [
        f for f in ("run_experiments.py", "analysis.py") if reads.search((REPO / f).read_text())
    ]
    assert offenders == []


def test_html_in_a_tag_is_data_and_never_a_path(tmp_path):
    from lmprof.sweep.plan import expand_sweep

    doc = {
        "base_config": {"data.source": "synthetic"},
        "experiments": [
            {"name": "g", "tag": "x<script>alert(1)</script>/../y", "params": {"batch_size": [2]}}
        ],
    }
    (plan,) = expand_sweep(doc)
    assert "/" not in plan.name and "<" not in plan.name
    assert plan.cfg.logging.tag == "x<script>alert(1)</script>/../y"  # text; the report escapes it
    doc["experiments"][0]["tag"] = "<script>"  # a name would start with '-': refused, one line
    with pytest.raises(ConfigError, match="plain file name"):
        expand_sweep(doc)


def test_mathtext_and_html_in_a_tag_are_shown_as_written(tmp_path):
    pytest.importorskip("matplotlib")
    from lmprof.analysis.core import analyze

    tag = "$\\frac{a$<b>&"  # even dollars: mathtext to matplotlib, whose parser fails on it
    (tmp_path / "results.csv").write_text(
        "run_name,tag,status,sequence_length,batch_size,throughput,peak_gpu_mem_gb,config_hash\n"
        f"baseline,{tag},ok,128,2,1000,1,h1\nfast,{tag},ok,128,4,1800,1,h2\n"
    )
    done = analyze(tmp_path / "results.csv", tmp_path / "out")
    assert [p.file for p in done.plots] == ["optimization_batch_4_comparison.png"]
    assert done.plots[0].path.stat().st_size > 0
    page = done.report.read_text()
    assert "$\\frac{a$&lt;b&gt;&amp;" in page and tag not in page


# ---------------------------------------------------------------------------------------------
# Tier 2: `lmprof run` in this process: output folder, memory, links, a full disk, checkpoints


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["run", *TINY, *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out and "Traceback" not in err
    return code, out, err


def test_a_missing_data_path_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = _main(capsys, "data.source=text", "data.path=nowhere.txt", "run_name=r")
    assert code == 2 and "nowhere.txt" in _one_error_line(err)
    assert _files(tmp_path) == set()  # the log it opened is removed; no row


def test_output_dir_under_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocker").write_text("x")
    code, _, err = _main(capsys, "output_dir=blocker/out", "run_name=r")
    assert code == 2 and "is a file, not a folder" in _one_error_line(err)
    assert _files(tmp_path) == {"blocker"}


def test_a_file_where_the_logs_folder_belongs_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logs").write_text("x")
    code, _, err = _main(capsys, "run_name=r")
    assert code == 2 and "needs a folder" in _one_error_line(err)
    assert _files(tmp_path) == {"logs"}


def test_results_csv_that_is_a_directory_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results.csv").mkdir()
    code, _, err = _main(capsys, "run_name=r")
    assert code == 2 and "is a folder" in _one_error_line(err)
    assert _files(tmp_path) == set()


def test_results_csv_in_another_encoding_is_one_line_and_left_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    damaged = b"run_name,status\na,ok\nb\xe9,ok\n"
    (tmp_path / "results.csv").write_bytes(damaged)
    code, _, err = _main(capsys, "run_name=r")
    assert code == 2 and "not a readable CSV" in _one_error_line(err)
    assert (tmp_path / "results.csv").read_bytes() == damaged


def test_a_read_only_folder_is_one_line(tmp_path, monkeypatch, capsys):
    import tempfile

    monkeypatch.chdir(tmp_path)

    def refuse(*args, **kwargs):  # what a read-only mount says (the mode bits do not stop root)
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code, _, err = _main(capsys, "run_name=r")
    assert code == 2 and "read-only" in _one_error_line(err)
    assert _files(tmp_path) == set()


def test_a_full_disk_before_the_run_is_one_line(tmp_path, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 10**12, 0))
    code, _, err = _main(capsys, "run_name=r")
    assert code == 2 and "the disk is full" in _one_error_line(err)
    assert _files(tmp_path) == set()


def test_a_full_disk_during_a_run_keeps_earlier_rows_and_leaves_no_temp_file(
    tmp_path, monkeypatch, capsys
):
    from lmprof import io as lmio
    from lmprof.train import outputs

    monkeypatch.chdir(tmp_path)
    assert main(["run", *TINY, HUGE, "run_name=earlier"]) == 3  # a real row, no training
    capsys.readouterr()
    before = (tmp_path / "results.csv").read_bytes()

    calls = []

    def fill_up(fd: int, data: bytes) -> None:
        # The config and the two CSV headers are written; the disk is full from then on.
        calls.append(len(data))
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        os.write(fd, data)

    def no_space(path, text):  # the first metrics line
        raise lmio.output_error(path, OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(lmio, "_write_all", fill_up)
    monkeypatch.setattr(outputs, "append_text", no_space)
    code, _, err = _main(capsys, "run_name=later")
    line = _one_error_line(err)
    assert code == 1 and "the disk is full" in line and "row was not written" in line, line
    assert (tmp_path / "results.csv").read_bytes() == before
    assert not [f for f in _files(tmp_path) if f.endswith(".tmp")]


def test_a_planted_link_in_the_details_folder_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}_outside.txt"
    outside.write_text("precious\n")
    details = tmp_path / "results" / "details"
    details.mkdir(parents=True)
    (details / "r_metrics.csv").symlink_to(outside)
    code, _, err = _main(capsys, "run_name=r")
    # Refused, or the run's files are a later attempt's (`r@2_...`, lmprof.paths): never written
    # through the link.
    assert code == 2 and "symbolic link" in _one_error_line(err) or code == 0
    assert outside.read_text() == "precious\n"
    outside.unlink()


def test_a_linked_details_folder_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "details").symlink_to(elsewhere)
    code, _, err = _main(capsys, "run_name=r")
    assert code == 2 and "symbolic link" in _one_error_line(err)
    assert list(elsewhere.iterdir()) == []


def test_the_writers_never_write_through_a_link(tmp_path):
    from lmprof.io import append_text, atomic_write_text

    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    link = tmp_path / "table.csv"
    link.symlink_to(outside)
    with pytest.raises(OutputError, match="symbolic link"):
        append_text(link, "row\n")
    atomic_write_text(link, "new\n")  # the rename replaces the link itself
    assert not link.is_symlink() and link.read_text() == "new\n"
    assert outside.read_text() == "precious\n"


def test_a_file_a_library_writes_is_renamed_into_place_only_when_complete(tmp_path):
    # The profiler's trace and torch's memory snapshot are written by torch given a path
    # (io.atomic_output): a write that dies midway leaves the old file, and no temp file.
    from lmprof.io import atomic_output

    trace = tmp_path / "traces" / "trace.json"
    with atomic_output(trace) as tmp:
        assert tmp.parent == trace.parent and tmp != trace
        tmp.write_text('{"old": 1}')
    assert trace.read_text() == '{"old": 1}'
    with pytest.raises(KeyboardInterrupt), atomic_output(trace) as tmp:
        tmp.write_text('{"tor')
        raise KeyboardInterrupt  # a kill mid-export
    assert trace.read_text() == '{"old": 1}'
    assert [p.name for p in trace.parent.iterdir()] == ["trace.json"]
    with pytest.raises(OutputError, match="permission denied|read-only"):
        trace.chmod(0o444)  # its owner made it read-only: refused, as atomic_write_text does
        with atomic_output(trace) as tmp:
            tmp.write_text("{}")
    assert [p.name for p in trace.parent.iterdir()] == ["trace.json"]


def test_a_folder_built_whole_replaces_the_old_one_by_renames(tmp_path):
    # The token cache and checkpoints (io.replace_dir): the old folder or the new one.
    from lmprof.io import replace_dir

    final = tmp_path / "step_2"
    for text in ("first", "second"):
        tmp = tmp_path / ".tmp_step_2"
        tmp.mkdir()
        (tmp / "trainer.json").write_text(text)
        replace_dir(tmp, final)
        assert (final / "trainer.json").read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_2"]


def test_a_predicted_oom_is_refused_in_milliseconds_as_an_oom_row(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    t0 = time.monotonic()
    code, _, err = _main(capsys, "n_layers=3000000", "run_name=deep")
    assert time.monotonic() - t0 < 5  # the model is never built
    line = _one_error_line(err)
    assert code == 3 and "out of memory predicted" in line and "GiB" in line
    code, _, err = _main(capsys, HUGE, "run_name=wide")
    assert code == 3 and "available" in _one_error_line(err)
    rows = _rows(tmp_path / "results.csv")
    assert [(r["run_name"], r["status"]) for r in rows] == [("deep", "oom"), ("wide", "oom")]
    assert rows[1]["status_detail"].startswith("out of memory predicted")
    assert float(rows[1]["predicted_peak_mem_gb"]) > 1e6
    assert _files(tmp_path) == {"results.csv", ".lmprof/results.csv.lock", ".lmprof/.gitignore"}


def test_on_a_gpu_the_prediction_is_held_against_its_free_memory(monkeypatch):
    import torch

    from lmprof.preflight import predicted_oom

    gib = 1024**3
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (100 * gib, 141 * gib))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H200")
    base = {"data": {"source": "synthetic", "vocab_size": 256}}
    need, line = predicted_oom(build_config(base, {"training": {"batch_size": 10**6}}), "cuda")
    assert need > 150 * gib and "NVIDIA H200 has 100.0 GiB free of 141.0 GiB" in line
    assert predicted_oom(build_config(base), "cuda") is None  # fits: it runs


def test_allow_predicted_oom_skips_the_prediction(tmp_path, monkeypatch, capsys):
    run_module = importlib.import_module("lmprof.train.run")  # the package exports run()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_module, "predicted_oom", lambda *a: (1, "refused"))
    assert _main(capsys, "run_name=a")[0] == 3
    assert _main(capsys, "run_name=b", "system.allow_predicted_oom=true", "max_steps=1")[0] == 0


def test_a_torn_last_line_and_foreign_columns_survive_an_append(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results.csv").write_text('run_name,mine\nold,kept\ntorn,"half')
    assert _main(capsys, HUGE, "run_name=new")[0] == 3
    rows = _rows(tmp_path / "results.csv")
    assert [r["run_name"] for r in rows] == ["old", "torn", "new"]
    assert rows[0]["mine"] == "kept" and rows[2]["status"] == "oom"


def test_a_read_only_results_csv_is_refused_before_the_run_and_left_alone(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results.csv").write_text("run_name,status\nold,ok\n")
    (tmp_path / "results.csv").chmod(0o444)  # root could write it: the owner's mode decides
    code, _, err = _main(capsys, HUGE, "run_name=new")
    assert code == 2 and "read-only (mode 444)" in _one_error_line(err)
    assert (tmp_path / "results.csv").read_text() == "run_name,status\nold,ok\n"
    assert _files(tmp_path) == {"results.csv"}
    assert (tmp_path / "results.csv").stat().st_mode & 0o777 == 0o444


def test_a_private_results_csv_stays_private_when_a_row_is_added(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results.csv").write_text("run_name,status\nold,ok\n")
    (tmp_path / "results.csv").chmod(0o600)
    assert _main(capsys, HUGE, "run_name=new")[0] == 3
    assert [r["run_name"] for r in _rows(tmp_path / "results.csv")] == ["old", "new"]
    assert (tmp_path / "results.csv").stat().st_mode & 0o777 == 0o600


def test_a_row_with_a_cell_more_than_the_header_is_refused_and_left_alone(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    damaged = "run_name,status\nold,ok,extra\n"
    (tmp_path / "results.csv").write_text(damaged)
    code, _, err = _main(capsys, HUGE, "run_name=new")
    assert code == 2 and "line 2 has 3 cells but the header names 2" in _one_error_line(err)
    assert (tmp_path / "results.csv").read_text() == damaged


def test_an_excel_byte_order_mark_is_read_and_the_table_keeps_one_run_name(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results.csv").write_bytes("\ufeffrun_name,status\r\nold,ok\r\n".encode())
    assert _main(capsys, HUGE, "run_name=new")[0] == 3
    with open(tmp_path / "results.csv", newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert header.count("run_name") == 1 and header[0] == "run_name"
    assert [r["run_name"] for r in _rows(tmp_path / "results.csv")] == ["old", "new"]


def test_resuming_from_an_incompatible_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ck = ["checkpoint.interval=1", "checkpoint.resume=auto", "run_name=ck"]
    assert _main(capsys, *ck)[0] == 0
    code, out, err = _main(capsys, *ck, "d_model=64", "max_steps=3")
    line = _one_error_line(err)
    # The name holds the earlier configuration (lmprof.identity): refused before the checkpoint
    # is read, in one line.
    assert code == 2 and "by a different configuration" in line
    assert [r["status"] for r in _rows(tmp_path / "results.csv")] == ["ok"]
    # Without the table's row, the checkpoint's own check refuses it.
    (tmp_path / "results.csv").unlink()
    code, out, err = _main(capsys, *ck, "d_model=64", "max_steps=3")
    assert code == 1 and "another config" in _one_error_line(err)
    assert "Traceback" not in (tmp_path / "logs" / "ck.log").read_text()
    rows = _rows(tmp_path / "results.csv")
    assert [r["status"] for r in rows] == ["failed"]
    assert "another config" in rows[0]["status_detail"]


# ---------------------------------------------------------------------------------------------
# Tier 3: real processes


def test_sigterm_during_a_run_keeps_earlier_rows_and_writes_one_interrupted_row(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main(["run", *TINY, HUGE, "run_name=earlier"]) == 3
    capsys.readouterr()
    before = _rows(tmp_path / "results.csv")
    args = [a for a in TINY if not a.startswith("max_steps")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmprof", "run", *args, "max_steps=1000000", "run_name=long"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "results" / "details" / "long_metrics.csv"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 2
    ):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    rows = _rows(tmp_path / "results.csv")
    assert {k: rows[0][k] for k in before[0]} == before[0]  # widened, never changed
    assert [r["status"] for r in rows[1:]] == ["interrupted"]
    assert not [f for f in _files(tmp_path) if f.endswith(".tmp")]


def test_sigterm_during_setup_stops_at_once_as_interrupted(tmp_path, monkeypatch, capsys):
    from lmprof.train import loop

    monkeypatch.chdir(tmp_path)
    build = loop.Trainer.__init__

    def build_then_term(self, *args, **kwargs):  # setup that would not reach a step soon
        os.kill(os.getpid(), signal.SIGTERM)
        build(self, *args, **kwargs)

    monkeypatch.setattr(loop.Trainer, "__init__", build_then_term)
    code, _, err = _main(capsys, "run_name=setup")
    assert code == 130 and err == ""
    (row,) = _rows(tmp_path / "results.csv")
    assert row["status"] == "interrupted" and "during setup" in row["status_detail"]
    assert signal.getsignal(signal.SIGTERM) is not None  # the handler was put back


def _sigterm_in_evaluation(monkeypatch, split: str) -> list[int]:
    """Make every pass over `split` endless (its first batch again and again), with a SIGTERM
    after its first batch: the run must stop at the next batch. Returns the batches served."""
    from lmprof.data.datamodule import DataModule

    served: list[int] = []
    original = DataModule.eval_batches

    def endless(self, which, *args, **kwargs):
        if which != split:
            yield from original(self, which, *args, **kwargs)
            return
        first = next(iter(original(self, which, *args, **kwargs)))
        for i in range(500):  # a bound, so a stop that is not honoured fails instead of hanging
            served.append(i)
            yield first
            if i == 0:
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(DataModule, "eval_batches", endless)
    return served


@pytest.mark.parametrize("interval", [0, 100], ids=["no checkpoints", "checkpoints on"])
def test_sigterm_during_the_final_evaluation_stops_at_the_next_batch(
    tmp_path, monkeypatch, capsys, interval
):
    from lmprof.train.checkpoint import list_checkpoints

    monkeypatch.chdir(tmp_path)
    served = _sigterm_in_evaluation(monkeypatch, "val")
    ck = [f"checkpoint.interval={interval}", "checkpoint.resume=auto", "run_name=ev"]
    code, out, err = _main(capsys, *ck)
    assert code == 130 and err == "" and len(served) == 2  # the batch in hand, then the stop
    (row,) = _rows(tmp_path / "results.csv")
    assert (row["status"], row["steps_done"]) == ("interrupted", "2")
    said = [ln for ln in out.splitlines() if "ended: interrupted" in ln]
    assert len(said) == 1 and "SIGTERM during evaluation at step 2" in said[0], out
    found = [s for s, _ in list_checkpoints(tmp_path / "checkpoints" / "ev")]
    assert found == ([2] if interval else [])
    if interval:  # the resumed run trains no step again: it evaluates and ends ok
        monkeypatch.undo()
        monkeypatch.chdir(tmp_path)
        assert _main(capsys, *ck)[0] == 0
        assert [(r["status"], r["steps_done"]) for r in _rows(tmp_path / "results.csv")] == [
            ("interrupted", "2"),
            ("ok", "2"),
        ]


def test_sigterm_during_an_evaluation_in_training_and_the_test_split(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    served = _sigterm_in_evaluation(monkeypatch, "val")
    code, out, _ = _main(capsys, "max_steps=6", "eval_interval=3", "run_name=mid")
    assert code == 130 and len(served) == 2
    assert "SIGTERM during evaluation at step 3" in out
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    text = "".join(f"line {i} of a small corpus, long enough to split.\n" for i in range(200))
    (tmp_path / "train.txt").write_text(text)
    (tmp_path / "test.txt").write_text(text[:2000])
    served = _sigterm_in_evaluation(monkeypatch, "test")
    data = ["data.source=text", "data.path=train.txt", "data.test_path=test.txt"]
    code, out, _ = _main(capsys, *data, "run_name=tst")
    assert code == 130 and len(served) == 2
    assert "SIGTERM during the test split at step 2" in out
    rows = _rows(tmp_path / "results.csv")
    assert [(r["run_name"], r["status"]) for r in rows] == [
        ("mid", "interrupted"),
        ("tst", "interrupted"),
    ]


def test_sigterm_during_a_checkpoint_write_stops_once_it_is_written(tmp_path, monkeypatch, capsys):
    from lmprof.train import checkpoint

    monkeypatch.chdir(tmp_path)
    write = checkpoint.CheckpointManager._write

    def write_then_term(self, step):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the checkpoint is written
        return write(self, step)

    monkeypatch.setattr(checkpoint.CheckpointManager, "_write", write_then_term)
    code, out, _ = _main(capsys, "max_steps=10", "checkpoint.interval=2", "run_name=cw")
    assert code == 130
    (row,) = _rows(tmp_path / "results.csv")
    # Stopped after the checkpoint of step 2, not at step 4's nor at the end.
    assert (row["status"], row["steps_done"]) == ("interrupted", "2")
    assert row["status_detail"] == "SIGTERM: checkpoint at step 2"
    found = checkpoint.list_checkpoints(tmp_path / "checkpoints" / "cw")
    assert [s for s, _ in found] == [2]
    assert not list((tmp_path / "checkpoints" / "cw").glob(".tmp_*"))


SLOW_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from lmprof.config import load_config
    from lmprof.results import append_row

    cfg = load_config(sys.argv[1])
    out = Path(cfg.logging.output_dir)
    with open(out / "calls.txt", "a") as f:
        f.write(cfg.logging.run_name + "\\n")
    time.sleep(3)
    append_row(out / "results.csv", {"run_name": cfg.logging.run_name, "status": "ok",
                                     "config_hash": cfg.hash(), "seed": cfg.training.seed,
                                     "repeat": cfg.logging.repeat})
""")


def test_two_sweeps_at_once_run_each_run_once(tmp_path):
    (tmp_path / "child.py").write_text(SLOW_CHILD)
    sweep = {
        "base_config": {"data.source": "synthetic", "logging.output_dir": str(tmp_path)},
        "experiments": [{"name": "g", "tag": "t", "runs": [{"name": "only", "params": {}}]}],
    }
    (tmp_path / "s.yaml").write_text(json.dumps(sweep))  # JSON is YAML
    env = _env() | {"LMPROF_SWEEP_CHILD": str(tmp_path / "child.py")}
    cmd = [sys.executable, "-m", "lmprof", "sweep", "s.yaml"]
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (tmp_path / "calls.txt").exists():
        time.sleep(0.05)
    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    (tmp_path / "go").touch()
    first_out, _ = first.communicate(timeout=60)
    assert "running elsewhere" in second.stdout and second.returncode == 0
    assert "Traceback" not in second.stderr + second.stdout
    assert first.returncode == 0 and " ok " in first_out
    assert (tmp_path / "calls.txt").read_text().split() == ["only"]
    assert [r["run_name"] for r in _rows(tmp_path / "results.csv")] == ["only"]


LINGERING_CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from lmprof.config import load_config
    from lmprof.results import append_row

    cfg = load_config(sys.argv[1])
    out = Path(cfg.logging.output_dir)
    # A run slow to stop: the SIGTERM its dead sweep's kernel sends is noted, and it goes on.
    signal.signal(signal.SIGTERM, lambda *a: (out / "term.txt").write_text("x"))
    with open(out / "calls.txt", "a") as f:
        f.write(f"{cfg.logging.run_name} {os.getpid()}\\n")
    deadline = time.monotonic() + 30
    while not (out / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    append_row(out / "results.csv", {"run_name": cfg.logging.run_name, "status": "ok",
                                     "config_hash": cfg.hash(), "seed": cfg.training.seed,
                                     "repeat": cfg.logging.repeat})
""")


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_rerun_after_a_sigkilled_sweep_never_starts_its_still_running_child(tmp_path):
    (tmp_path / "child.py").write_text(LINGERING_CHILD)
    sweep = {
        "base_config": {"data.source": "synthetic", "logging.output_dir": str(tmp_path)},
        "experiments": [{"name": "g", "tag": "t", "runs": [{"name": "only", "params": {}}]}],
    }
    (tmp_path / "s.yaml").write_text(json.dumps(sweep))
    env = _env() | {"LMPROF_SWEEP_CHILD": str(tmp_path / "child.py")}
    cmd = [sys.executable, "-m", "lmprof", "sweep", "s.yaml"]
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (tmp_path / "calls.txt").exists():
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    while time.monotonic() < deadline and not (tmp_path / "term.txt").exists():
        time.sleep(0.05)
    assert (tmp_path / "term.txt").exists()  # the kernel told the orphan to stop
    # The child holds the claim its sweep handed it: the rerun leaves the run to it.
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "running elsewhere" in again.stdout, again.stdout
    assert "Traceback" not in again.stderr
    (tmp_path / "go").touch()
    name, pid = (tmp_path / "calls.txt").read_text().split()
    assert name == "only" and _gone(int(pid), 10)
    assert [(r["run_name"], r["status"]) for r in _rows(tmp_path / "results.csv")] == [
        ("only", "ok")
    ]
    # Once it has ended, the claim is free: the next rerun finds the run done.
    last = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert "done earlier" in last.stdout and len((tmp_path / "calls.txt").read_text().split()) == 2


PHASED_CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from lmprof.cli import main
    from lmprof.config import load_config
    from lmprof.data.datamodule import DataModule
    from lmprof.train.loop import Trainer

    cfg = load_config(sys.argv[1])
    name, out = cfg.logging.run_name, Path(cfg.logging.output_dir)
    with open(out / "calls.txt", "a") as f:
        f.write(f"{name} {os.getpid()}\\n")
    first = not (out / f"{name}.seen").exists()
    (out / f"{name}.seen").touch()

    def reached(phase):  # the test kills the sweep once it sees this
        (out / f"{name}.in-{phase}").write_text(str(os.getpid()))

    # The first attempt of each run stays in the phase it is named after (bounded waits, so a
    # stop that is not honoured fails the test instead of hanging it); the real run code and
    # its SIGTERM handling do the rest. The rerun is a plain `lmprof run`.
    if first and name == "setup":
        build = Trainer.__init__
        def slow_build(self, *a, **k):
            reached("setup")
            time.sleep(30)
            build(self, *a, **k)
        Trainer.__init__ = slow_build
    if first and name == "training":
        step = Trainer._step
        def slow_step(self, *a, **k):
            step(self, *a, **k)
            reached("training")
            for _ in range(600):
                if self.checkpoints.stop_requested:
                    return
                time.sleep(0.05)
        Trainer._step = slow_step
    if first and name == "evaluation":
        batches = DataModule.eval_batches
        def endless(self, which, *a, **k):
            if which != "val":
                yield from batches(self, which, *a, **k)
                return
            one = next(iter(batches(self, which, *a, **k)))
            for _ in range(600):
                reached("evaluation")
                yield one
                time.sleep(0.05)
        DataModule.eval_batches = endless
    sys.exit(main(["run", sys.argv[1]]))
""")


def test_a_sweep_killed_in_each_phase_of_a_child_ends_with_every_run_once_ok(tmp_path):
    """SIGKILL the sweep while its child is in setup, then training, then evaluation; rerun
    after each. The dead sweep's child stops (PDEATHSIG: SIGTERM, recorded `interrupted`) and
    the rerun starts it again: every run ends exactly once `ok`, and no process is left."""
    (tmp_path / "child.py").write_text(PHASED_CHILD)
    base = dict(a.split("=", 1) for a in TINY) | {"logging.output_dir": str(tmp_path)}
    # Three configurations (lmprof.identity: one configuration under two names is refused).
    phases = ("setup", "training", "evaluation")
    runs = [{"name": n, "params": {"training.lr": f"1e-{k + 3}"}} for k, n in enumerate(phases)]
    sweep = {"base_config": base, "experiments": [{"name": "g", "tag": "t", "runs": runs}]}
    (tmp_path / "s.yaml").write_text(json.dumps(sweep))
    env = _env() | {"LMPROF_SWEEP_CHILD": str(tmp_path / "child.py")}
    cmd = [sys.executable, "-m", "lmprof", "sweep", "s.yaml"]
    for phase in ("setup", "training", "evaluation"):
        sweep_proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL)
        marker = tmp_path / f"{phase}.in-{phase}"
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline and sweep_proc.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), f"the {phase} run never reached {phase}"
        sweep_proc.send_signal(signal.SIGKILL)
        sweep_proc.wait(timeout=10)
        assert _gone(int(marker.read_text()), 30), f"the orphan in {phase} did not stop"
    last = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert last.returncode == 0 and "Traceback" not in last.stderr, last.stdout + last.stderr
    by_run: dict[str, list[str]] = {}
    for r in _rows(tmp_path / "results.csv"):
        by_run.setdefault(r["run_name"], []).append(r["status"])
    assert by_run == {
        "setup": ["interrupted", "ok"],
        "training": ["interrupted", "ok"],
        "evaluation": ["interrupted", "ok"],
    }
    started = [line.split() for line in (tmp_path / "calls.txt").read_text().splitlines()]
    assert [n for n, _ in started] == [
        "setup",
        "setup",
        "training",
        "training",
        "evaluation",
        "evaluation",
    ]
    assert all(_gone(int(pid), 10) for _, pid in started)  # no process left running


def test_a_sweep_into_an_unwritable_folder_starts_nothing(tmp_path, monkeypatch, capsys):
    (tmp_path / "blocker").write_text("x")
    sweep = {
        "base_config": {"logging.output_dir": str(tmp_path / "blocker" / "out")},
        "experiments": [{"name": "g", "tag": "t", "runs": [{"name": "r", "params": {}}]}],
    }
    (tmp_path / "s.yaml").write_text(json.dumps(sweep))
    monkeypatch.setenv("LMPROF_SWEEP_CHILD", str(tmp_path / "never.py"))
    assert main(["sweep", str(tmp_path / "s.yaml")]) == 2
    out, err = capsys.readouterr()
    assert "is a file, not a folder" in _one_error_line(err)
    assert _files(tmp_path) == {"blocker", "s.yaml"}


def test_a_byte_order_mark_is_read_as_the_text_it_starts(tmp_path):
    import codecs

    from lmprof.sweep.plan import plan_sweep
    from lmprof.yamlio import load_mapping

    (tmp_path / "c.yaml").write_bytes(codecs.BOM_UTF8 + b"model:\n  d_model: 64\n")
    assert load_mapping(tmp_path / "c.yaml") == {"model": {"d_model": 64}}
    sweep = (
        "base_config: {data.source: synthetic}\nexperiments:\n- {name: g, params: {seed: [1]}}\n"
    )
    (tmp_path / "s.yaml").write_bytes(codecs.BOM_UTF8 + sweep.encode())
    assert [p.name for p in plan_sweep(tmp_path / "s.yaml", check_env=False)] == ["g_seed1"]


def test_a_sweep_whose_run_names_a_missing_data_file_is_refused_before_any_row(
    tmp_path, monkeypatch, capsys
):
    sweep = {
        "base_config": {"data.source": "synthetic", "logging.output_dir": str(tmp_path)},
        "experiments": [
            {
                "name": "g",
                "runs": [
                    {"name": "fine", "params": {}},
                    {"name": "typo", "params": {"data.source": "text", "data.path": "corpuz.txt"}},
                ],
            }
        ],
    }
    (tmp_path / "s.yaml").write_text(json.dumps(sweep))
    monkeypatch.setenv("LMPROF_SWEEP_CHILD", str(tmp_path / "never.py"))
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "s.yaml"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    # The config's mistake, named with its run, not "cannot start on this machine".
    assert "run 'typo'" in line and "'corpuz.txt' does not exist" in line, line
    assert _files(tmp_path) == {"s.yaml"}


def test_a_plain_key_given_twice_keeps_the_later_value_and_says_so(capsys):
    # The seed's config.yaml overrides its own defaults this way and must load unchanged.
    from lmprof import yamlio

    text = "training:\n  lr: 0.1\n  warmup_steps: 400\n  warmup_steps: 500\n"
    assert yamlio.parse(text, "c.yaml") == {"training": {"lr": 0.1, "warmup_steps": 500}}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lines 3 and 4" in err[0] and "'500'" in err[0]
