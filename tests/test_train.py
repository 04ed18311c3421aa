"""A whole run on the CPU: both CSVs with the documented columns, a row that says what happened,
and the optimised paths computing what the plain one does."""

from __future__ import annotations

import csv
import time

import pytest
import torch
from tiny import TINY

from lmprof.cli import main
from lmprof.columns import EVAL_COLUMNS, METRICS_COLUMNS
from lmprof.results import SEED_COLUMNS, producer_of


def _read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_tiny_run_writes_both_csvs_the_log_and_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", *TINY, "run_name=tiny"]) == 0
    (row,) = _read(tmp_path / "results.csv")
    for col in SEED_COLUMNS:
        assert col in row, col
    assert row["status"] == "ok" and row["run_name"] == "tiny" and row["ddp_gpus"] == "1"
    assert int(row["tokens_seen"]) == 6 * 4 * 16
    assert float(row["throughput"]) > 0 and float(row["steady_tokens_per_sec"]) > 0
    # The schema is written down once: every cell a run writes belongs to a declared group.
    assert [c for c in row if producer_of(c) is None] == []
    assert float(row["eval_perplexity"]) > 1
    # The whole process's time holds its parts; the steady time is the steps at the median.
    wall, startup = float(row["wall_time_sec"]), float(row["startup_sec"])
    train, evals = float(row["training_time_sec"]), float(row["eval_time_sec"])
    assert min(startup, train, evals) > 0 and startup + train + evals <= wall
    # results.csv keeps six decimals of a second
    assert float(row["steady_time_sec"]) == pytest.approx(
        6 * float(row["step_time_p50_ms"]) / 1e3, abs=1e-6
    )
    metrics = _read(tmp_path / "results/details/tiny_metrics.csv")
    assert list(metrics[0].keys()) == list(METRICS_COLUMNS)
    assert [int(m["step"]) for m in metrics] == [2, 4, 6]
    evals = _read(tmp_path / "results/details/tiny_eval.csv")
    assert list(evals[0].keys()) == list(EVAL_COLUMNS) and int(evals[-1]["step"]) == 6
    assert (tmp_path / "results/details/tiny_config.yaml").exists()
    log = (tmp_path / "logs/tiny.log").read_text()
    assert "ended: ok" in log and f"time: {wall:.1f} s end to end" in log


def test_waiting_for_queued_steps_at_a_log_point_is_training_time(tmp_path, monkeypatch):
    """A host ahead of the GPU (CUDA graphs) waits at the meter's read for the queued steps:
    that wait is training, not "the rest" of the run. Here the read sleeps 0.2 s, three times."""
    from lmprof.train import state

    take = state.LossMeter.take

    def slow_take(self, dist):
        time.sleep(0.2)
        return take(self, dist)

    monkeypatch.setattr(state.LossMeter, "take", slow_take)
    monkeypatch.chdir(tmp_path)
    assert main(["run", *TINY, "run_name=lag"]) == 0  # logging steps 2, 4, 6
    (row,) = _read(tmp_path / "results.csv")
    assert float(row["training_time_sec"]) >= 0.6


def test_the_end_to_end_time_counts_from_the_process_start():
    """Time spent before lmprof is imported (the interpreter, other imports) counts: the clock
    reads the process's start, not the first import."""
    import subprocess
    import sys

    code = (
        "import time; time.sleep(0.6); from lmprof import clock; print(clock.since_process_start())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 0.6 <= float(out.stdout) < 60


def test_exit_now_keeps_what_a_normal_exit_does_that_matters(tmp_path):
    """The quick exit after a command: its code, a non-daemon thread's work, the atexit
    handlers and buffered output all survive (a pipe buffers stdout)."""
    import subprocess
    import sys

    done = tmp_path / "thread_done"
    code = (
        "import atexit, threading, time\n"
        "from lmprof.cli import exit_now\n"
        "def work():\n"
        "    time.sleep(0.3)\n"
        f"    open({str(done)!r}, 'w').write('yes')\n"
        "threading.Thread(target=work).start()\n"
        "atexit.register(print, 'handler ran')\n"
        "print('buffered', end=' ')\n"
        "exit_now(3)\n"
        "print('never')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 3 and out.stdout == "buffered handler ran\n", out.stderr
    assert done.read_text() == "yes"


def test_a_non_finite_loss_ends_as_diverged_with_a_row(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "run",
            *TINY,
            "run_name=boom",
            "lr=1e30",
            "max_grad_norm=0",
            "training.diverge_patience=2",
            "max_steps=12",
        ]
    )
    (row,) = _read(tmp_path / "results.csv")
    assert code == 4 and row["status"] == "diverged"
    assert "non-finite" in row["status_detail"]


def test_a_failure_during_training_is_a_failed_row_not_a_crash(tmp_path, monkeypatch):
    from lmprof.train import loop

    def broken(self, batches, accuracy=False):
        raise ValueError("injected")

    monkeypatch.setattr(loop.Trainer, "train_step", broken)
    monkeypatch.chdir(tmp_path)
    assert main(["run", *TINY, "run_name=bad"]) == 1
    (row,) = _read(tmp_path / "results.csv")
    assert row["status"] == "failed" and row["status_detail"] == "ValueError: injected"


@pytest.mark.slow
@pytest.mark.parametrize(
    "scope, checkpointing", [("model", "none"), ("region", "none"), ("region", "full")]
)
def test_compiled_model_computes_the_same_loss_and_gradients(scope, checkpointing):
    """torch.compile (inductor, CPU) against eager in fp32: loss within 1e-5, grads within 1e-4.
    region: both layers run one compiled region (inside the checkpoint, when asked); with
    inductor's buffer reuse on, the first layer's gradients came out wrong by orders of
    magnitude (torch 2.13)."""
    from lmprof.model import ModelArgs, Transformer
    from lmprof.train.config import SystemConfig
    from lmprof.train.loop import _compile

    torch.manual_seed(0)
    torch._dynamo.reset()
    args = ModelArgs(
        vocab_size=97,
        d_model=32,
        n_heads=4,
        n_layers=2,
        d_ff=64,
        dropout=0.0,
        max_seq_len=16,
        checkpointing=checkpointing,
    )
    eager = Transformer(args)
    compiled_src = Transformer(args)
    compiled_src.load_state_dict(eager.state_dict())
    compiled = _compile(compiled_src, SystemConfig(compile=True, compile_scope=scope))
    x = torch.randint(0, 97, (2, 16))
    t = torch.randint(0, 97, (2, 16))
    results = []
    for model, params in ((eager, eager), (compiled, compiled_src)):
        loss, _ = model(x, t)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in params.parameters()]))
    torch._dynamo.reset()
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_padded_batches_count_real_and_processed_tokens_apart(tmp_path, monkeypatch):
    """The seed's padded batching: PAD is processed but never counted as a trained token."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):  # documents of very different lengths, so rows get padded
        (corpus / f"doc{i}.txt").write_text("short doc. " * (1 + i % 7) + "x" * (i % 3))
    monkeypatch.chdir(tmp_path)
    args = [a for a in TINY if not a.startswith(("data.source", "vocab_size"))]
    assert (
        main(
            [
                "run",
                *args,
                "data.source=text",
                f"data.path={corpus}",
                "tokenizer=byte",
                "batching=padded",
                "sequence_length=64",
                "run_name=pad",
            ]
        )
        == 0
    )
    (row,) = _read(tmp_path / "results.csv")
    real, processed = float(row["steady_tokens_per_sec"]), float(row["processed_tokens_per_sec"])
    assert processed > real > 0
    assert int(row["tokens_seen"]) < 6 * 4 * 64


def test_a_mistake_found_during_setup_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no_such_corpus"
    assert main(["run", "data.source=text", f"data.path={missing}", "run_name=oops"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    assert not (tmp_path / "results.csv").exists()
    assert not (tmp_path / "logs" / "oops.log").exists()
    assert not list(tmp_path.glob("results/details/oops*"))


def test_on_a_terminal_the_log_still_has_every_step_line_and_the_run_ends_with_a_summary(
    tmp_path, monkeypatch, capsys
):
    import io
    import re
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.chdir(tmp_path)
    bar = Terminal()
    monkeypatch.setattr(sys, "stderr", bar)
    args = [a for a in TINY if a != "progress=false"]
    assert main(["run", *args, "run_name=tty"]) == 0
    console = capsys.readouterr().out
    log = (tmp_path / "logs/tty.log").read_text()
    step = re.compile(r"step (\d+)/6 loss")
    assert [int(m) for m in step.findall(log)] == [2, 4, 6]
    assert not step.findall(console)  # the bar shows them on the console
    assert "6/6" in bar.getvalue()  # the bar ran
    for text in (log, console):
        summary = text[text.index("ended: ok") :]
        (row,) = _read(tmp_path / "results.csv")
        assert f"{float(row['eval_loss']):.4f}" in summary  # eval loss
        assert "tokens/s" in summary and "MFU" in summary and "peak memory" in summary
        assert "results.csv" in summary and "logs/tty.log" in summary


def test_run_with_several_gpus_outside_torchrun_starts_the_ranks(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    # The sweep's launcher runs this script in place of `-m lmprof run` (as in the sweep tests).
    rank = tmp_path / "rank.py"
    rank.write_text(
        "import os, sys\n"
        "from lmprof.config import load_config\n"
        "cfg = load_config(sys.argv[1])\n"
        "open(f'rank{os.environ[\"RANK\"]}', 'w').write("
        "os.environ['WORLD_SIZE'] + ' ' + cfg.logging.run_name)\n"
    )
    monkeypatch.setenv("LMPROF_SWEEP_CHILD", str(rank))
    assert main(["run", *TINY, "num_gpus=2", "run_name=two"]) == 0
    assert {(tmp_path / f"rank{r}").read_text() for r in (0, 1)} == {"2 two"}

    capsys.readouterr()
    if not torch.cuda.is_available():  # more ranks than cores: refused, nothing started
        assert main(["run", *TINY, "num_gpus=1000", "run_name=many"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "1000" in err[0] and not (tmp_path / "rank2").exists()


@pytest.mark.parametrize(
    "scope, eval_compiled, graphs",
    [("model", False, 1), ("model", True, 2), ("region", False, 1), ("blocks", False, 1)],
)
def test_a_compiled_run_compiles_one_training_graph_and_evaluates_eagerly(
    tmp_path, monkeypatch, scope, eval_compiled, graphs
):
    """Logging steps (accuracy asked) and the others share one graph; evaluation, a no-grad
    forward, is a graph of its own only with logging.eval_compiled; compile_scope=blocks
    compiles one block's graph that both layers reuse. Each graph costs seconds of compilation
    on a GPU host, so a second or third one shows in the whole run's time."""
    from torch._dynamo.testing import CompileCounterWithBackend

    # Counts the graphs torch.compile hands to its backend; aot_eager, because a region's
    # invoke_subgraph runs only under AOTAutograd's tracing.
    counter = CompileCounterWithBackend("aot_eager")
    real_compile = torch.compile  # nn.Module.compile calls it too

    def compile_counted(model, *args, **kwargs):
        kwargs.pop("options", None)  # inductor's: the counter is the backend here
        return real_compile(model, *args, **{**kwargs, "mode": None, "backend": counter})

    monkeypatch.setattr(torch, "compile", compile_counted)
    torch._dynamo.reset()
    monkeypatch.chdir(tmp_path)
    args = ["system.compile=true", "eval_interval=2", f"logging.eval_compiled={eval_compiled}"]
    args += ["n_layers=2", f"system.compile_scope={scope}"]
    assert main(["run", *TINY, *args, "run_name=c"]) == 0
    torch._dynamo.reset()
    assert counter.frame_count == graphs
    assert [int(r["step"]) for r in _read(tmp_path / "results/details/c_eval.csv")] == [2, 4, 6]
