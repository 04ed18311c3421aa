"""find-max on the CPU: a host memory cap stands in for the GPU's memory."""

from __future__ import annotations

import csv

from lmprof.cli import main


def test_find_max_batch_size_under_a_host_memory_cap(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "find-max",
            "data.source=synthetic",
            "n_layers=1",
            "d_model=32",
            "n_heads=2",
            "d_ff=64",
            "sequence_length=64",
            "vocab_size=256",
            "system.memory_limit_gb=3",
            "run_name=fm",
            "--vary",
            "batch_size",
            "--limit",
            "65536",
            "--steps",
            "1",
            "--max-probes",
            "5",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    with open(tmp_path / "results/find_max/fm/fm.csv") as f:
        rows = list(csv.DictReader(f))
    statuses = {r["status"] for r in rows}
    # The search saw both sides of the boundary, in isolated processes, and survived the OOMs.
    assert {"ok", "oom"} <= statuses
    best = max(int(r["batch_size"]) for r in rows if r["status"] == "ok")
    smallest_oom = min(int(r["batch_size"]) for r in rows if r["status"] == "oom")
    assert best < smallest_oom
    assert f"largest that fits at sequence_length=64: {best}" in out
    assert len(rows) <= 5


def test_find_max_without_a_gpu_or_cap_is_one_line(tmp_path, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        return
    monkeypatch.chdir(tmp_path)
    assert main(["find-max", "data.source=synthetic", "--vary", "batch_size"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA GPU" in err[0]
