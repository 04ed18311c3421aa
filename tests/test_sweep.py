"""Sweeps: the seed's format expanded faithfully, runs isolated, every attempt one row, resume.

Most runner tests use a fake child (a small script that writes a row like `lmprof run` does and
misbehaves on cue, by run name); a few run the real `lmprof run` on a tiny synthetic model.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from lmprof.cli import main as lmprof_main
from lmprof.errors import ConfigError, UserError
from lmprof.results import read_rows
from lmprof.status import STATUSES
from lmprof.sweep.plan import expand_sweep, plan_sweep
from lmprof.sweep.runner import classify, decide, format_plan, run_sweep

REPO = Path(__file__).resolve().parents[1]
SEED = REPO.parent / "shared" / "seed" / "config.yaml"

FAKE_CHILD = textwrap.dedent("""
    import os, resource, sys, time
    from pathlib import Path
    from lmprof.config import load_config
    from lmprof.results import append_row

    cfg = load_config(sys.argv[1])
    name, out = cfg.logging.run_name, Path(cfg.logging.output_dir)
    with open(out / "calls.txt", "a") as f:
        f.write(name + "\\n")
    (out / f"{name}.pid").write_text(str(os.getpid()))
    print("fake child running", name, flush=True)
    if "hog" in name:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            sys.exit("no memory limit was set")  # never allocate without the cap
        block = bytearray(soft)  # more than the whole address space: MemoryError
    if "boom" in name:
        raise RuntimeError("boom: the model exploded")
    if "usererr" in name:
        print("lmprof: error: data.path 'nowhere.txt' does not exist", file=sys.stderr)
        sys.exit(2)
    if "slow" in name:
        time.sleep(float(os.environ.get("FAKE_SLEEP", "60")))
    append_row(out / "results.csv", {
        "run_name": name, "tag": cfg.logging.tag, "status": "ok", "config_hash": cfg.hash(),
        "seed": cfg.training.seed, "repeat": cfg.logging.repeat, "attempt": cfg.logging.attempt,
        "throughput": 1234.5, "eval_perplexity": 42.0,
    })
""")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake child in place of `lmprof run`, and an output folder for the sweep."""
    script = tmp_path / "fake_child.py"
    script.write_text(FAKE_CHILD)
    monkeypatch.setenv("LMPROF_SWEEP_CHILD", str(script))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    return out


def sweep_file(
    tmp_path: Path, experiments: list, base: dict | None = None, name="sweep.yaml"
) -> Path:
    base = {
        "logging.output_dir": str(tmp_path / "out"),
        "data.source": "synthetic",
        "logging.progress": False,
        **(base or {}),
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"base_config": base, "experiments": experiments}))
    return path


def calls(out: Path) -> list[str]:
    p = out / "calls.txt"
    return p.read_text().split() if p.exists() else []


def rows_by_name(out: Path) -> dict[str, list[dict[str, str]]]:
    by: dict[str, list[dict[str, str]]] = {}
    for r in read_rows(out / "results.csv"):
        by.setdefault(r["run_name"], []).append(r)
    return by


def assert_table_intact(path: Path) -> None:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        for line in reader:
            assert len(line) == len(header), f"torn row: {line}"
    assert not list(path.parent.glob(".results.csv.*.tmp"))


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Expansion


def test_params_grid_is_the_cartesian_product_with_fixed_params_between_base_and_swept():
    doc = {
        "base_config": {
            "batch_size": 4,
            "learning_rate": "3e-4",
            "max_steps": 10,
            "model_config": {"d_model": 64, "nhead": 4},
        },
        "experiments": [
            {
                "name": "grid",
                "tag": "g",
                "params": {"sequence_length": [32, 64], "batch_size": [2, 8]},
                "fixed_params": {"batch_size": 16, "learning_rate": 0.01, "sequence_length": 999},
            }
        ],
    }
    plans = expand_sweep(doc)
    assert [p.name for p in plans] == [
        "g_sequencelength32_batchsize2",
        "g_sequencelength32_batchsize8",
        "g_sequencelength64_batchsize2",
        "g_sequencelength64_batchsize8",
    ]
    first = plans[0].cfg
    assert (first.seq_len, first.training.batch_size) == (32, 2)  # swept beat fixed
    assert first.training.lr == pytest.approx(0.01)  # fixed beat base
    assert first.training.max_steps == 10 and first.model.d_model == 64  # base kept
    assert first.logging.run_name == plans[0].name and first.logging.tag == "g"
    assert plans[0].changes == {
        "data.sequence_length": 32,
        "training.batch_size": 2,
        "training.lr": 0.01,
    }
    assert len({p.config_hash for p in plans}) == 4


def test_runs_merge_nested_mappings_key_by_key_and_keep_their_names():
    doc = {
        "base_config": {
            "model_config": {"d_model": 64, "nhead": 4, "num_layers": 2},
            "sequence_length": 128,
        },
        "experiments": [
            {
                "name": "sizes",
                "tag": "model_size",
                "runs": [
                    {"name": "deep", "params": {"model_config": {"num_layers": 6}}},
                    {"name": "wide", "params": {"model_config": {"d_model": 128}}, "num_gpus": 2},
                ],
            }
        ],
    }
    deep, wide = expand_sweep(doc)
    assert deep.name == "deep" and wide.name == "wide"
    assert (deep.cfg.model.d_model, deep.cfg.model.n_heads, deep.cfg.model.n_layers) == (64, 4, 6)
    assert (wide.cfg.model.d_model, wide.cfg.model.n_layers) == (128, 2)
    assert (deep.num_gpus, wide.num_gpus) == (1, 2)
    assert deep.cfg.seq_len == 128 and wide.cfg.logging.tag == "model_size"


def test_extensions_tag_lists_dotted_keys_seeds_repeats_and_group_gpus():
    doc = {
        "base_config": {"model.d_model": 32, "model.n_heads": 2},
        "experiments": [
            {
                "name": "a",
                "tag": ["speed", "attention"],
                "num_gpus": 2,
                "params": {"model.attention": ["sdpa", "vanilla"]},
                "seeds": [1, 2],
            },
            {"name": "b", "tag": "rep", "runs": [{"name": "r", "params": {}, "repeat": 2}]},
        ],
    }
    plans = expand_sweep(doc)
    # Interleaved: round k runs every configuration's k-th seed or repeat (a b a b).
    assert [p.name for p in plans] == [
        "speed_attentionsdpa_seed1",
        "speed_attentionvanilla_seed1",
        "r_rep1",
        "speed_attentionsdpa_seed2",
        "speed_attentionvanilla_seed2",
        "r_rep2",
    ]
    assert [p.round for p in plans] == [1, 1, 1, 2, 2, 2]
    assert plans[3].cfg.training.seed == 2 and plans[0].num_gpus == 2
    assert [p.cfg.logging.repeat for p in plans if p.name.startswith("r_")] == [1, 2]
    assert plans[0].cfg.logging.tag == "speed" and plans[0].tags == ("speed", "attention")
    from lmprof.sweep.plan import select

    assert [p.name for p in select(plans, ["attention"])][:1] == ["speed_attentionsdpa_seed1"]
    assert [p.name for p in select(plans, ["rep"])] == ["r_rep1", "r_rep2"]
    assert select(plans, ["rep"])[0].index == 1
    with pytest.raises(UserError, match="no run has tag 'nope'"):
        select(plans, ["nope"])


def test_the_seed_sweep_file_plans_unchanged():
    if not SEED.exists():
        pytest.skip("the seed assignment is not next to the repository")
    text = SEED.read_text()
    plans = plan_sweep(SEED)
    names = [p.name for p in plans]
    assert names == [
        *(f"seq_len_sequencelength{n}" for n in (128, 256, 512, 1024, 2048)),
        *(f"bs_fp32_batchsize{n}" for n in (4, 8, 16, 32)),
        *(f"bs_fp16_batchsize{n}" for n in (4, 8, 16, 32)),
        "vanilla_baseline",
        "vanilla_gradient_checkpointing",
        "opt_flash_attention",
        "model_large_124M",
    ]
    by = {p.name: p.cfg for p in plans}
    base = by["model_large_124M"]
    assert (base.model.d_model, base.model.n_heads, base.model.n_layers, base.model.d_ff) == (
        768,
        12,
        12,
        3072,
    )
    # duplicate keys: the last wins (linear schedule, 500 warmup steps, 8000 steps)
    assert base.training.schedule == "linear" and base.training.warmup_steps == 500
    assert base.training.lr == pytest.approx(3e-4) and base.system.precision == "fp16"
    assert by["bs_fp32_batchsize32"].system.precision == "fp32"
    assert by["bs_fp32_batchsize32"].training.max_steps == 50
    assert by["opt_flash_attention"].model.attention == "flash"
    assert by["vanilla_gradient_checkpointing"].system.gradient_checkpointing == "full"
    assert {p.tag for p in plans} == {"seq_len", "bs_fp32", "bs_fp16", "vanilla_opts", "model_size"}
    assert SEED.read_text() == text


def test_shipped_sweeps_plan_and_cover_the_assignment():
    assert (REPO / "config.yaml").resolve() == (REPO / "configs" / "assignment.yaml").resolve()
    plans = plan_sweep(REPO / "config.yaml", check_env=False)
    tags = {t for p in plans for t in p.tags}
    expected = {
        "seq_len",
        "bs_fp32",
        "bs_fp16",
        "opts",
        "vanilla_opts",
        "model_size",
        "ddp",
        "attention",
        "precision",
    }
    assert expected <= tags
    cfg = plans[0].cfg
    assert (
        cfg.model.d_model,
        cfg.model.n_layers,
        cfg.model.n_heads,
        cfg.model.d_ff,
        cfg.model.dropout,
    ) == (768, 12, 12, 3072, 0.1)
    assert (cfg.data.source, cfg.data.tokenizer, cfg.data.hf_dataset, cfg.data.hf_config) == (
        "hf",
        "gpt2",
        "wikitext",
        "wikitext-103-raw-v1",
    )
    assert cfg.training.lr == pytest.approx(3e-4) and cfg.training.max_grad_norm == 1.0
    by_tag = lambda t: [p for p in plans if t in p.tags]  # noqa: E731
    assert sorted(p.cfg.seq_len for p in by_tag("seq_len")) == [128, 256, 512, 1024, 2048]
    assert {p.cfg.model.attention for p in by_tag("attention")} == {
        "vanilla",
        "sdpa_mask",
        "sdpa",
        "flash",
        "mem_efficient",
        "cudnn",
    }
    assert {p.cfg.system.precision for p in by_tag("precision")} == {"fp32", "tf32", "fp16", "bf16"}
    assert [p.num_gpus for p in by_tag("ddp")] == [1, 2, 4, 8]
    assert len(by_tag("model_size")) >= 4

    import torch

    quick = plan_sweep(REPO / "configs" / "quick.yaml")
    assert expected <= {t for p in quick for t in p.tags}
    for p in quick:
        assert p.cfg.data.source == "stdlib" and p.cfg.model.d_model <= 128
        gpu_only = p.cfg.system.precision == "fp16" or p.cfg.model.attention in (
            "flash",
            "mem_efficient",
            "cudnn",
        )
        if torch.cuda.is_available():  # then only the GPU count can stop a run
            gpu_only = p.num_gpus > torch.cuda.device_count()
        if not gpu_only:
            assert p.unrunnable is None, p.name
        if p.cfg.model.attention in ("flash", "mem_efficient", "cudnn"):
            assert p.cfg.system.precision in ("fp16", "bf16"), p.name  # the kernels need it


def test_an_invalid_run_anywhere_stops_the_sweep_before_anything_starts(tmp_path, fake, capsys):
    path = sweep_file(
        tmp_path,
        [
            {"name": "fine", "tag": "t", "params": {"batch_size": [1, 2]}},
            {
                "name": "last",
                "tag": "u",
                "runs": [
                    {"name": "ok_run", "params": {}},
                    {"name": "typo_run", "params": {"batchsize": 4}},
                ],
            },
        ],
    )
    with pytest.raises(ConfigError) as err:
        plan_sweep(path)
    assert "typo_run" in str(err.value) and "batchsize" in str(err.value)
    assert lmprof_main(["sweep", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "typo_run" in lines[0] and "batch_size" in lines[0]
    assert calls(fake) == [] and not (fake / "results.csv").exists()


@pytest.mark.parametrize(
    "group, message",
    [
        ({"name": "g", "tag": "t", "params": {"batch_size": 4}}, "non-empty list"),
        ({"name": "g", "tag": "t", "parms": {"batch_size": [4]}}, "unknown key 'parms'"),
        ({"name": "g", "tag": "t", "runs": [{"name": "x", "params": {}}, {"name": "x"}]}, "twice"),
    ],
)
def test_malformed_sweep_files_are_one_line_errors(tmp_path, group, message):
    with pytest.raises(UserError, match=message):
        plan_sweep(sweep_file(tmp_path, [group]))


def test_overrides_apply_to_every_run_but_not_to_names(tmp_path):
    path = sweep_file(
        tmp_path,
        [
            {
                "name": "g",
                "tag": "t",
                "params": {"batch_size": [1, 2]},
                "fixed_params": {"max_steps": 100},
            }
        ],
    )
    plans = plan_sweep(path, overrides=["training.max_steps=7"])
    assert [p.cfg.training.max_steps for p in plans] == [7, 7]
    with pytest.raises(UserError, match="set by the sweep"):
        plan_sweep(path, overrides=["run_name=x"])


def test_base_file_is_a_preset_under_base_config_and_the_later_layers(tmp_path):
    (tmp_path / "presets").mkdir()
    preset = {"model": {"d_model": 96, "n_heads": 6, "n_layers": 3}, "training": {"lr": 0.01}}
    (tmp_path / "presets" / "p.yaml").write_text(yaml.safe_dump(preset))
    path = sweep_file(tmp_path, [{"name": "g", "tag": "t", "params": {"model.n_layers": [1, 2]}}])
    doc = yaml.safe_load(path.read_text())
    doc["base_file"] = "presets/p.yaml"  # relative to the sweep file, not to the working folder
    doc["base_config"]["training.lr"] = 0.002
    path.write_text(yaml.safe_dump(doc))
    plans = plan_sweep(path, check_env=False)
    # base_file < base_config < the swept key: each layer wins for its own keys only.
    assert [(p.cfg.model.d_model, p.cfg.model.n_heads) for p in plans] == [(96, 6), (96, 6)]
    assert [p.cfg.model.n_layers for p in plans] == [1, 2]
    assert [p.cfg.training.lr for p in plans] == [0.002, 0.002]
    assert plans[0].changes == {"model.n_layers": 1}  # listed against base_file + base_config


def test_the_llama_budget_sweep_builds_on_the_tinyllama_preset():
    plans = plan_sweep(REPO / "configs" / "llama_budget.yaml", check_env=False)
    m = plans[0].cfg.model
    assert (m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff) == (2048, 22, 32, 4, 5632)
    assert (m.norm_type, m.pos_encoding, m.activation, m.tie_embeddings) == (
        "rmsnorm",
        "rope",
        "swiglu",
        False,
    )
    budget = [p for p in plans if "llama_budget" in p.tags]
    assert sorted({p.cfg.seq_len for p in budget}) == [2048, 4096, 8192, 16384, 32768]
    assert {p.cfg.system.gradient_checkpointing for p in budget} == {"none", "full"}
    assert {p.cfg.model.attention for p in plans} == {"cudnn", "flash", "fa4"}
    assert all(p.cfg.training.max_steps <= 5 and p.cfg.system.precision == "bf16" for p in plans)


@pytest.mark.parametrize(
    "base_file, message",
    [
        ("absent.yaml", "base_file 'absent.yaml' is not a file"),
        (["a.yaml"], "base_file must be the path of a run config"),
        ("sweep.yaml", "base_file 'sweep.yaml' is a sweep file"),
    ],
)
def test_a_bad_base_file_is_one_line(tmp_path, capsys, base_file, message):
    path = sweep_file(tmp_path, [{"name": "g", "tag": "t", "params": {"batch_size": [1]}}])
    doc = yaml.safe_load(path.read_text())
    doc["base_file"] = base_file
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match=re.escape(message)):
        plan_sweep(path)
    assert lmprof_main(["sweep", str(path), "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


# ---------------------------------------------------------------------------------------------
# Running (fake child)


def test_dry_run_starts_nothing_and_flags_what_this_machine_cannot_run(tmp_path, fake, capsys):
    path = sweep_file(
        tmp_path,
        [
            {"name": "g", "tag": "t", "params": {"batch_size": [1, 2]}},
            {"name": "h", "tag": "gpu", "runs": [{"name": "half", "params": {"fp16": True}}]},
        ],
    )
    assert lmprof_main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "t_batchsize1" in out and "t_batchsize2" in out and "half" in out
    assert "batch_size=2" in out
    import torch

    if not torch.cuda.is_available():
        assert "not runnable here" in out and "fp16 needs a CUDA GPU" in out
    assert calls(fake) == [] and not (fake / "results.csv").exists()
    assert not (fake / "logs").exists()

    # `--tags t max_steps=7`: argparse hands the override to --tags; it must still apply
    assert lmprof_main(["sweep", str(path), "--tags", "t", "max_steps=7", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "t_batchsize1" in out and "half" not in out and "max_steps=7" in out


def test_every_status_is_recorded_once_and_a_rerun_resumes(tmp_path, fake, capsys):
    path = sweep_file(
        tmp_path,
        [
            {
                "name": "mixed",
                "tag": "mix",
                "runs": [
                    # Each its own configuration (lr): a name does not make a run another.
                    {"name": "first", "params": {"lr": 1e-3}},
                    {"name": "hog", "params": {"lr": 2e-3, "system.memory_limit_gb": 1}},
                    {"name": "boom", "params": {"lr": 3e-3}},
                    {"name": "usererr", "params": {"lr": 4e-3}},
                    {"name": "slow", "params": {"lr": 5e-3, "system.timeout_s": 1}},
                    {"name": "half", "params": {"lr": 6e-3, "fp16": True, "system.device": "cpu"}},
                    {"name": "last", "params": {"lr": 7e-3}},
                ],
            }
        ],
    )
    report = run_sweep(plan_sweep(path))
    status = {o.plan.name: o.status for o in report.outcomes}
    assert status == {
        "first": "ok",
        "hog": "oom",
        "boom": "failed",
        "usererr": "failed",
        "slow": "timeout",
        "half": "skipped",
        "last": "ok",
    }
    assert report.exit_code == 1
    rows = rows_by_name(fake)
    assert {n: [r["status"] for r in rs] for n, rs in rows.items()} == {
        n: [s] for n, s in status.items()
    }
    assert all(r["status"] in STATUSES for rs in rows.values() for r in rs)
    assert "boom: the model exploded" in rows["boom"][0]["status_detail"]
    assert (
        rows["usererr"][0]["status_detail"]
        == "lmprof: error: data.path 'nowhere.txt' does not exist"
    )
    assert "fp16" in rows["half"][0]["status_detail"]
    assert rows["boom"][0]["config_hash"] and rows["boom"][0]["sequence_length"]
    assert "fake child running boom" in (fake / "logs" / "boom.log").read_text()
    assert (
        yaml.safe_load((fake / "results" / "details" / "boom_config.yaml").read_text())["logging"][
            "run_name"
        ]
        == "boom"
    )
    assert not alive(int((fake / "slow.pid").read_text()))  # the timeout killed it
    assert "half" not in calls(fake)
    assert_table_intact(fake / "results.csv")
    printed = capsys.readouterr().out
    assert "[1/7] first" in printed and "Summary" in printed and "1.2k tok/s" in printed

    plan_text = format_plan(plan_sweep(path))
    assert "skip: done (ok)" in plan_text and "failed earlier" not in plan_text
    assert "skip: done (oom)" in plan_text and "skip: timeout earlier" in plan_text

    before = calls(fake)
    again = run_sweep(plan_sweep(path))  # done (ok, oom) and timed-out runs are not rerun
    assert sorted(calls(fake)[len(before) :]) == ["boom", "usererr"]  # failed ones are
    assert again.exit_code == 1
    # the same `skipped` row is not repeated; the two retries add theirs
    assert len(read_rows(fake / "results.csv")) == 9

    before = calls(fake)
    retried = run_sweep(plan_sweep(path), retry_failed=True)
    assert sorted(calls(fake)[len(before) :]) == ["boom", "slow", "usererr"]
    assert retried.exit_code == 1

    n = len(calls(fake))
    run_sweep(plan_sweep(path, tags=["mix"]), force=True)
    assert sorted(calls(fake)[n:]) == ["boom", "first", "hog", "last", "slow", "usererr"]


def test_sigkill_of_the_sweep_mid_run_then_rerun_completes_without_duplicates(tmp_path, fake):
    path = sweep_file(
        tmp_path,
        [
            {
                "name": "k",
                "tag": "k",
                "runs": [
                    {"name": "before", "params": {"lr": 1e-3}},
                    {"name": "slow", "params": {"lr": 2e-3}},
                    {"name": "after", "params": {"lr": 3e-3}},
                ],
            }
        ],
    )
    cmd = [sys.executable, str(REPO / "run_experiments.py"), "--config", str(path)]
    env = dict(os.environ, FAKE_SLEEP="60")
    sweep = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (fake / "slow.pid").exists())
    child = int((fake / "slow.pid").read_text())
    sweep.send_signal(signal.SIGKILL)
    sweep.wait(timeout=10)
    wait_for(lambda: not alive(child), timeout=10)  # the run does not outlive the sweep

    env["FAKE_SLEEP"] = "0"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert calls(fake) == ["before", "slow", "slow", "after"]
    rows = rows_by_name(fake)
    assert {n: [r["status"] for r in rs] for n, rs in rows.items()} == {
        "before": ["ok"],
        "slow": ["ok"],
        "after": ["ok"],
    }
    assert_table_intact(fake / "results.csv")


def test_ctrl_c_stops_the_run_records_interrupted_and_exits_130(tmp_path, fake):
    path = sweep_file(
        tmp_path,
        [
            {
                "name": "c",
                "tag": "c",
                "runs": [
                    {"name": "before", "params": {"lr": 1e-3}},
                    {"name": "slow", "params": {"lr": 2e-3}},
                    {"name": "after", "params": {"lr": 3e-3}},
                ],
            }
        ],
    )
    cmd = [sys.executable, str(REPO / "run_experiments.py"), "--config", str(path)]
    env = dict(os.environ, FAKE_SLEEP="60")
    sweep = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wait_for(lambda: (fake / "slow.pid").exists())
    sweep.send_signal(signal.SIGINT)
    out, _ = sweep.communicate(timeout=30)
    assert sweep.returncode == 130, out
    rows = rows_by_name(fake)
    assert [r["status"] for r in rows["slow"]] == ["interrupted"] and "after" not in rows
    assert "interrupted" in out and "rerun the same command to resume" in out
    assert_table_intact(fake / "results.csv")

    env["FAKE_SLEEP"] = "0"  # an interrupted run is resumed by the plain rerun
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=60).returncode == 0
    assert calls(fake) == ["before", "slow", "slow", "after"]


def test_classify_children_that_wrote_no_row():
    assert classify(-9, "exited", "", oom_killed=True) == (
        "oom",
        "killed by the kernel's out-of-memory killer",
    )
    status, detail = classify(-9, "exited", "step 3\n", oom_killed=False)
    assert status == "failed" and "SIGKILL" in detail
    assert classify(1, "exited", "Traceback\nMemoryError\n", False)[0] == "oom"
    assert classify(1, "exited", "Traceback\nValueError: x\n", False) == (
        "failed",
        "exit code 1: ValueError: x",
    )
    assert classify(0, "timeout", "", False, 5)[0] == "timeout"
    assert classify(-2, "interrupted", "", False)[0] == "interrupted"


def test_decide_resume_rules(tmp_path):
    (plan,) = expand_sweep({"experiments": [{"name": "g", "runs": [{"name": "x"}]}]})
    row = lambda s: {"status": s}  # noqa: E731
    assert decide(plan, [])[0] == "run"
    assert decide(plan, [row("failed"), row("ok")])[0] == "done"
    assert decide(plan, [row("oom")])[0] == "done"
    assert decide(plan, [row("ok")], force=True)[0] == "run"
    assert decide(plan, [row("failed")])[0] == "run"
    assert decide(plan, [row("diverged")])[0] == "kept"
    assert decide(plan, [row("timeout")])[0] == "kept"
    assert decide(plan, [row("timeout")], retry_failed=True)[0] == "run"
    assert decide(plan, [row("interrupted")])[0] == "run"
    plan.unrunnable = "no GPU"
    assert decide(plan, [])[0] == "skip"


# ---------------------------------------------------------------------------------------------
# Real runs: `lmprof run` in a child process on a tiny synthetic model


TINY = {
    "model.d_model": 32,
    "model.n_layers": 1,
    "model.n_heads": 2,
    "max_steps": 3,
    "batch_size": 2,
    "sequence_length": 16,
    "num_warmup_steps": 1,
    "logging_steps": 1,
    "logging.eval_max_batches": 2,
    "system.device": "cpu",
}


def test_real_runs_ok_host_oom_and_a_runtime_failure(tmp_path, monkeypatch):
    monkeypatch.delenv("LMPROF_SWEEP_CHILD", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    path = sweep_file(
        tmp_path,
        [
            {
                "name": "real",
                "tag": "real",
                "runs": [
                    {"name": "tiny_ok", "params": {}},
                    # Big activations under a 1.5 GB address-space cap: a real host out-of-memory.
                    {
                        "name": "tiny_oom",
                        "params": {
                            "batch_size": 64,
                            "sequence_length": 512,
                            "model.d_model": 64,
                            "system.memory_limit_gb": 1.5,
                        },
                    },
                ],
            }
        ],
        base=TINY,
    )
    report = run_sweep(plan_sweep(path))
    status = {o.plan.name: o.status for o in report.outcomes}
    assert status == {"tiny_ok": "ok", "tiny_oom": "oom"}
    rows = rows_by_name(out)
    assert {n: len(rs) for n, rs in rows.items()} == {n: 1 for n in status}
    ok = rows["tiny_ok"][0]
    assert float(ok["throughput"]) > 0 and float(ok["eval_perplexity"]) > 0
    plans = {p.name: p for p in plan_sweep(path)}
    assert ok["config_hash"] == plans["tiny_ok"].config_hash  # the child agrees on identity
    log = (out / "logs" / "tiny_ok.log").read_text()
    # our header survives (the child did not reopen the file) and the child's output follows
    assert log.startswith("# lmprof sweep") and "ended: ok" in log
    assert report.exit_code == 0  # ok and oom: the sweep did all it could

    again = run_sweep(plan_sweep(path))
    assert [o.note for o in again.outcomes][:2] == ["done earlier", "done earlier"]
    assert len(read_rows(out / "results.csv")) == 2


def test_an_override_is_checked_only_against_the_selected_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    quick = str(REPO / "configs" / "quick.yaml")
    # precision=fp32 is invalid for opts_flash_attention (FlashAttention needs half precision),
    # a run --tags seq_len leaves out.
    argv = ["sweep", quick, "--tags", "seq_len", "precision=fp32", "--dry-run"]
    assert lmprof_main(argv) == 0
    out = capsys.readouterr().out
    assert "seq_len_sequencelength32" in out and "opts_flash_attention" not in out
    # Selected, the same run still refuses it, naming itself.
    assert lmprof_main(["sweep", quick, "--tags", "opts", "precision=fp32", "--dry-run"]) == 2
    assert "opts_flash_attention" in capsys.readouterr().err


def test_a_failed_run_reruns_by_itself_and_the_summary_gives_its_whole_reason(
    tmp_path, fake, capsys
):
    reason = "data.path '" + "x" * 120 + ".txt' does not exist"
    child = Path(os.environ["LMPROF_SWEEP_CHILD"])
    child.write_text(
        child.read_text().replace("'nowhere.txt' does not exist", reason.replace("'", "\\'"))
    )
    path = sweep_file(
        tmp_path,
        [{"name": "g", "runs": [{"name": "usererr", "params": {"lr": 1e-3}}, {"name": "fine"}]}],
    )
    assert run_sweep(plan_sweep(path)).exit_code == 1
    summary = capsys.readouterr().out.split("Summary", 1)[1]
    assert reason in summary
    run_sweep(plan_sweep(path))
    assert calls(fake) == ["usererr", "fine", "usererr"]


def test_what_cannot_start_here_is_skipped_with_its_reason_before_the_first_run(
    tmp_path, fake, capsys, monkeypatch
):
    import io

    import torch

    from lmprof import environment

    if torch.cuda.is_available():
        pytest.skip("a CPU host's limits")
    real = environment.has_package
    monkeypatch.setattr(
        environment, "has_package", lambda n: n not in ("tiktoken", "transformers") and real(n)
    )
    path = sweep_file(
        tmp_path,
        [
            {
                "name": "g",
                "runs": [
                    {"name": "first"},
                    {"name": "many", "num_gpus": 1000},
                    {"name": "gpt2", "params": {"data.source": "stdlib", "tokenizer": "gpt2"}},
                ],
            }
        ],
    )
    assert lmprof_main(["sweep", str(path), "--dry-run"]) == 0
    plan_text = capsys.readouterr().out
    assert plan_text.count("not runnable here") == 2
    assert "CPU" in plan_text and "tiktoken" in plan_text

    out = io.StringIO()
    report = run_sweep(plan_sweep(path), out=out)
    printed = out.getvalue()
    assert {o.plan.name: o.status for o in report.outcomes} == {
        "first": "ok",
        "many": "skipped",
        "gpt2": "skipped",
    }
    assert report.exit_code == 0 and calls(fake) == ["first"]
    # Both said before the first run starts, each with its reason.
    before_first = printed.split("[1/3] first started", 1)[0]
    for name, why in (("many", "1000"), ("gpt2", "tiktoken")):
        line = next(ln for ln in before_first.splitlines() if f" {name} " in ln)
        assert "skipped" in line and why in line
    rows = rows_by_name(fake)
    assert "tiktoken" in rows["gpt2"][0]["status_detail"]


PROGRESS_CHILD = textwrap.dedent("""
    import sys, time
    from lmprof.config import load_config
    from lmprof.paths import RunPaths
    from lmprof.results import append_row

    cfg = load_config(sys.argv[1])
    paths = RunPaths.of(cfg)
    paths.metrics_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.metrics_csv, "w") as f:
        f.write("step,loss,perplexity,accuracy,lr,tokens_seen,step_time_ms,tokens_per_sec\\n")
        f.write("2,3.5,33,0.1,0.001,64,10,6400\\n")
        f.flush()
        time.sleep(1.2)
    append_row(paths.results_csv, {"run_name": cfg.logging.run_name, "status": "ok",
                                   "config_hash": cfg.hash(), "seed": cfg.training.seed,
                                   "repeat": cfg.logging.repeat, "throughput": 10.0})
""")


@pytest.mark.parametrize("tty", [False, True])
def test_progress_shows_the_running_step_and_the_sweeps_eta(tmp_path, monkeypatch, tty):
    import io

    script = tmp_path / "progress_child.py"
    script.write_text(PROGRESS_CHILD)
    monkeypatch.setenv("LMPROF_SWEEP_CHILD", str(script))
    monkeypatch.setenv("COLUMNS", "200")  # the status line is cut at the terminal's width
    (tmp_path / "out").mkdir()
    path = sweep_file(
        tmp_path, [{"name": "g", "runs": [{"name": "a"}, {"name": "b", "params": {"lr": 1e-3}}]}]
    )

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return tty

    out = Terminal()
    report = run_sweep(plan_sweep(path), out=out, progress_every_s=0.3)
    assert [o.status for o in report.outcomes] == ["ok", "ok"]
    text = out.getvalue()
    shown = [ln for ln in text.replace("\r", "\n").splitlines() if "step 2/" in ln]
    assert shown and all("loss 3.500" in ln and "6.4k tok/s" in ln for ln in shown)
    first = [ln for ln in shown if "[1/2]" in ln]
    second = [ln for ln in shown if "[2/2]" in ln]
    assert first and "0/2 runs done" in first[0]
    # While b runs, a's time is the ETA's basis: a duration, not a guess from b's own steps.
    assert second and "1/2 runs done" in second[-1] and re.search(r"ETA \d+:\d\d", second[-1])
    if tty:
        assert "\r\033[K" in text
    else:
        assert "\033" not in text and "\r" not in text
        assert "[1/2] a started" in text and "[2/2] b started" in text


def test_prerequisites_know_tokenizer_files_packages_and_built_caches(tmp_path, monkeypatch):
    from lmprof import environment
    from lmprof.config import build_config
    from lmprof.data.cache import MANIFEST, cache_path
    from lmprof.data.sources import make_source
    from lmprof.data.tokenizers import tokenizer_spec

    monkeypatch.setattr(environment, "has_package", lambda name: False)
    cache = str(tmp_path / "cache")
    gpt2 = build_config({"data.source": "stdlib", "tokenizer": "gpt2", "data.cache_dir": cache})
    assert "tiktoken" in environment.check_prerequisites(gpt2)
    hf = build_config({"data.source": "hf", "tokenizer": "byte", "data.cache_dir": cache})
    assert "datasets" in environment.check_prerequisites(hf)
    missing = build_config({"tokenizer": "file", "data.tokenizer_path": str(tmp_path / "t.json")})
    with pytest.raises(UserError, match="t.json"):  # the config's mistake, not the machine's
        environment.check_prerequisites(missing)
    # A token cache built earlier (on a machine with tiktoken) is all the run reads.
    d = gpt2.data
    built = cache_path(
        cache, make_source(d), tokenizer_spec(d.tokenizer, d.vocab_size), d.val_fraction
    )
    built.mkdir(parents=True)
    (built / MANIFEST).write_text("{}")
    assert environment.check_prerequisites(gpt2) is None
