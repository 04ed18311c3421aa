"""DDP, FSDP2, gradient accumulation, checkpoints, resume and SIGTERM, on the CPU with gloo.

Runs are tiny (d_model 32, 2 layers, sequence 16, synthetic tokens) and log every step, so whole
loss trajectories are compared. Several-process runs go through torchrun (a wrapper script that
can make a rank signal itself at a given step, deterministically); one-process runs go through
`lmprof.train.run` in this process.

Tolerances (fp32 on the CPU; the details CSVs keep 6 significant digits, about 1e-5 here):
  * 2-process DDP / FSDP2 / gradient accumulation vs one process with the same global batch:
    |loss difference| <= 1e-4 at every step (the sums run in another order, nothing else).
  * FSDP2 on one process vs no wrapper: 1e-5.
  * kill + resume vs uninterrupted, same process layout: identical CSV text (bitwise state).
"""

from __future__ import annotations

import csv
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lmprof.config import build_config
from lmprof.train import loop
from lmprof.train.checkpoint import CheckpointError, _MetadataUnpickler, list_checkpoints
from lmprof.train.run import run

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "data.source=synthetic",
    "data.vocab_size=64",
    "data.sequence_length=16",
    "model.d_model=32",
    "model.n_heads=2",
    "model.n_layers=2",
    "model.d_ff=64",
    "model.dropout=0",
    "training.max_steps=8",
    "training.warmup_steps=2",
    "training.lr=3e-3",
    "training.seed=7",
    "logging.logging_steps=1",
    "logging.progress=false",
    "logging.eval_max_batches=2",
    "system.device=cpu",
]
TOL = 1e-4

# Runs `lmprof run ARGS...`; T_SIGNAL_AT=k makes rank T_SIGNAL_RANK (all when unset) send
# itself T_SIGNAL (TERM or KILL) right after logging step k; KILL first leaves a torn CSV line,
# as a kill in the middle of a write would. T_COUNT_ALLREDUCE=path counts DDP's gradient
# all-reduces (one bucket per step for this model) into path.<rank>.
WRAPPER = r"""
import atexit, os, signal, sys
from lmprof.train import loop

at = int(os.environ.get("T_SIGNAL_AT", "0"))
only = os.environ.get("T_SIGNAL_RANK")
_log_point = loop.Trainer._log_point

def log_point(self, *args, **kwargs):
    _log_point(self, *args, **kwargs)
    if at and self.state.step == at and (only is None or int(only) == self.dist.rank):
        if os.environ["T_SIGNAL"] == "KILL":
            if self.out.metrics is not None:
                with open(self.out.metrics.path, "a") as f:
                    f.write("%d,4.1" % (at + 1))
            os.kill(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGTERM)

loop.Trainer._log_point = log_point

count = os.environ.get("T_COUNT_ALLREDUCE")
if count:
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    _wrap = loop.Trainer._wrap
    calls = [0]

    def wrap(self, model):
        model = _wrap(self, model)
        def hook(state, bucket):
            calls[0] += 1
            return allreduce_hook(state, bucket)
        model.register_comm_hook(None, hook)
        rank = self.dist.rank
        atexit.register(lambda: open(f"{count}.{rank}", "w").write(str(calls[0])))
        return model

    loop.Trainer._wrap = wrap

from lmprof.cli import main
sys.exit(main(["run", *sys.argv[1:]]))
"""


# ---------------------------------------------------------------------------------------------
# helpers


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra or {})
    return env


def launch(tmp: Path, args: list[str], nproc: int = 0, expect: str = "ok", **env: str) -> None:
    """`lmprof run` in a child (under torchrun when nproc > 0) via the wrapper; `expect` ok,
    failed (torchrun's status when a rank exits non-zero, e.g. 130) or killed."""
    wrapper = tmp / "wrapper.py"
    wrapper.write_text(WRAPPER)
    head = [sys.executable]
    if nproc:
        head += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run(
        [*head, str(wrapper), *args],
        env=_env(env),
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=300,
    )
    rc = proc.returncode
    got = "ok" if rc == 0 else "killed" if rc == -signal.SIGKILL else "failed"
    if got != expect:
        text = (proc.stdout + proc.stderr).splitlines()
        tail = "\n".join(line for line in text if "DEBUG" not in line and "dcp_logger" not in line)
        raise AssertionError(f"expected {expect}, rc {rc}:\n{tail[-6000:]}")


def run_here(args: list[str]) -> int:
    return run(build_config(overrides=args))


def metrics(out: Path, name: str) -> list[dict[str, str]]:
    with open(out / "results" / "details" / f"{name}_metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def losses(out: Path, name: str) -> list[float]:
    rows = metrics(out, name)
    assert [int(r["step"]) for r in rows] == list(range(1, len(rows) + 1)), "steps not 1..N"
    return [float(r["loss"]) for r in rows]


def last_row(out: Path, name: str) -> dict[str, str]:
    with open(out / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["run_name"] == name]
    assert rows, f"no results row for {name}"
    return rows[-1]


def close(a: list[float], b: list[float], tol: float) -> float:
    assert len(a) == len(b), (a, b)
    worst = max(abs(x - y) for x, y in zip(a, b, strict=True))
    assert worst <= tol, f"max |diff| {worst:.3g} > {tol}: {a} vs {b}"
    return worst


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[float]:
    """One process, batch 4: the trajectory the distributed variants must reproduce."""
    out = tmp_path_factory.mktemp("ref")
    assert run_here([*TINY, "batch_size=4", f"output_dir={out}", "run_name=ref"]) == 0
    row = last_row(out, "ref")
    assert row["status"] == "ok" and row["ddp_gpus"] == "1"
    return losses(out, "ref")


# ---------------------------------------------------------------------------------------------
# equivalences


@pytest.mark.slow
def test_ddp_two_ranks_match_one_process(tmp_path, reference):
    launch(tmp_path, [*TINY, "batch_size=2", "output_dir=.", "run_name=ddp"], nproc=2)
    row = last_row(tmp_path, "ddp")
    assert row["status"] == "ok", row["status_detail"]
    assert row["ddp_gpus"] == "2" and row["parallelism"] == "ddp"
    # Both ranks' tokens: 8 steps x 2 ranks x 2 rows x 16 tokens.
    assert int(row["tokens_seen"]) == 8 * 2 * 2 * 16
    assert int(metrics(tmp_path, "ddp")[-1]["tokens_seen"]) == 8 * 2 * 2 * 16
    assert float(row["steady_tokens_per_sec_per_gpu"]) > 0
    close(losses(tmp_path, "ddp"), reference, TOL)


def test_grad_accum_matches_larger_batch(tmp_path, reference):
    args = [*TINY, "batch_size=2", "grad_accum_steps=2", f"output_dir={tmp_path}", "run_name=acc"]
    assert run_here(args) == 0
    assert int(last_row(tmp_path, "acc")["tokens_seen"]) == 8 * 4 * 16
    close(losses(tmp_path, "acc"), reference, TOL)


def test_fsdp_one_process_matches_no_wrapper(tmp_path, reference):
    args = [*TINY, "batch_size=4", "parallelism=fsdp", f"output_dir={tmp_path}"]
    assert run_here([*args, "run_name=fsdp1"]) == 0
    assert last_row(tmp_path, "fsdp1")["parallelism"] == "fsdp"
    close(losses(tmp_path, "fsdp1"), reference, 1e-5)
    # bf16 through FSDP's MixedPrecisionPolicy (no autocast): runs, learns the same thing.
    assert run_here([*args, "precision=bf16", "run_name=fsdp1bf16"]) == 0
    assert last_row(tmp_path, "fsdp1bf16")["status"] == "ok"
    close(losses(tmp_path, "fsdp1bf16"), reference, 0.05)


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_two_ranks_sigterm_then_resume(tmp_path, reference, parallelism):
    """Batch 1 x 2 micro-steps x 2 ranks: SIGTERM reaches one rank only; both stop after the
    same step with a (sharded, for FSDP) checkpoint; the resumed run completes the reference
    curve, each step logged once. DDP: one gradient all-reduce per step (no_sync works)."""
    args = [
        *TINY,
        "batch_size=1",
        "grad_accum_steps=2",
        f"parallelism={parallelism}",
        "checkpoint.interval=100",  # on, never due: the SIGTERM's checkpoint is the one
        "checkpoint.resume=auto",
        "output_dir=.",
        "run_name=pre",
    ]
    rank = "1" if parallelism == "ddp" else "0"
    launch(
        tmp_path,
        args,
        nproc=2,
        expect="failed",
        T_SIGNAL_AT="3",
        T_SIGNAL="TERM",
        T_SIGNAL_RANK=rank,
    )
    row = last_row(tmp_path, "pre")
    assert row["status"] == "interrupted"
    # The signal lands after step 3's check, so step 4 is the one finished and saved.
    assert row["status_detail"] == "SIGTERM: checkpoint at step 4"
    assert row["steps_done"] == "4"
    ckpts = list_checkpoints(tmp_path / "checkpoints" / "pre")
    assert [s for s, _ in ckpts] == [4]
    assert {p.name for p in ckpts[0][1].iterdir()} >= {"rank_0.json", "rank_1.json", ".metadata"}

    count = tmp_path / "allreduce"
    env = {"T_COUNT_ALLREDUCE": str(count)} if parallelism == "ddp" else {}
    launch(tmp_path, args, nproc=2, **env)
    row = last_row(tmp_path, "pre")
    assert row["status"] == "ok", row["status_detail"]
    assert row["ddp_gpus"] == "2" and row["steps_done"] == "8"
    assert int(row["tokens_seen"]) == 8 * 4 * 16
    close(losses(tmp_path, "pre"), reference, TOL)
    if parallelism == "ddp":
        for r in (0, 1):
            assert Path(f"{count}.{r}").read_text() == "4"  # steps 5..8, not 8


# ---------------------------------------------------------------------------------------------
# checkpoints, kill and resume


def test_sigkill_then_resume_continues_the_same_curve(tmp_path):
    # Dropout on, so the restored RNG state matters; interval 3 with keep 1.
    args = [
        *TINY,
        "batch_size=4",
        "model.dropout=0.1",
        "training.max_steps=10",
        "checkpoint.interval=3",
        "checkpoint.keep=1",
        "checkpoint.resume=auto",
    ]
    # Every run in a child with the same thread count: CPU kernels may round differently with
    # another number of threads, and bitwise equality is the point here.
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    ref.mkdir()
    launch(ref, [*args, "output_dir=.", "run_name=r"])
    assert [s for s, _ in list_checkpoints(ref / "checkpoints" / "r")] == [9]

    # Killed after logging step 5 (checkpoint at 3, rows 4-5 and a torn line after it).
    cut.mkdir()
    launch(
        cut,
        [*args, "output_dir=.", "run_name=r"],
        expect="killed",
        T_SIGNAL_AT="5",
        T_SIGNAL="KILL",
    )
    assert not (cut / "results.csv").exists()
    assert [s for s, _ in list_checkpoints(cut / "checkpoints" / "r")] == [3]

    launch(cut, [*args, "output_dir=.", "run_name=r"])
    got, want = metrics(cut, "r"), metrics(ref, "r")
    assert [r["step"] for r in got] == [str(s) for s in range(1, 11)]
    cols = ("step", "loss", "accuracy", "lr", "tokens_seen")
    assert [[r[c] for c in cols] for r in got] == [[r[c] for c in cols] for r in want]
    a, b = last_row(cut, "r"), last_row(ref, "r")
    for col in ("status", "steps_done", "tokens_seen", "final_train_loss", "eval_loss"):
        assert a[col] == b[col], col
    # The resumed run averages the steps before the kill as read back from the CSV (6 digits).
    assert float(a["avg_perplexity"]) == pytest.approx(float(b["avg_perplexity"]), rel=1e-6)


def _sigterm_after_step_2(monkeypatch):
    original = loop.Trainer._log_point

    def log_point(self, *a, **k):
        original(self, *a, **k)
        if self.state.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # after step 2's check: step 3 stops

    monkeypatch.setattr(loop.Trainer, "_log_point", log_point)


def test_sigterm_writes_checkpoint_and_records_interrupted(tmp_path, monkeypatch):
    _sigterm_after_step_2(monkeypatch)
    before = signal.getsignal(signal.SIGTERM)
    # Checkpointing on, none due before the end: the SIGTERM's own checkpoint is the only one.
    args = [
        *TINY,
        "batch_size=4",
        "checkpoint.interval=100",
        f"output_dir={tmp_path}",
        "run_name=t",
    ]
    assert run_here(args) == 130
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back
    row = last_row(tmp_path, "t")
    assert (row["status"], row["status_detail"]) == ("interrupted", "SIGTERM: checkpoint at step 3")
    assert row["steps_done"] == "3"
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints" / "t")] == [3]
    assert not list((tmp_path / "checkpoints" / "t").glob(".tmp_*"))


def test_sigterm_with_checkpointing_off_stops_and_writes_no_checkpoint(tmp_path, monkeypatch):
    _sigterm_after_step_2(monkeypatch)
    assert run_here([*TINY, "batch_size=4", f"output_dir={tmp_path}", "run_name=t"]) == 130
    row = last_row(tmp_path, "t")
    assert (row["status"], row["steps_done"]) == ("interrupted", "3")
    assert not (tmp_path / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------
# loading runs no code


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _checkpointed_run(tmp_path: Path) -> tuple[list[str], Path]:
    args = [
        *TINY,
        "batch_size=4",
        "training.max_steps=4",
        "checkpoint.interval=2",
        "checkpoint.resume=auto",
        f"output_dir={tmp_path}",
        "run_name=p",
    ]
    assert run_here(args) == 0
    return args, tmp_path / "checkpoints" / "p" / "step_4"


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_planted_pickle_payloads_are_refused(tmp_path):
    args, ckpt = _checkpointed_run(tmp_path)
    marker = tmp_path / "pwned"
    good_metadata = (ckpt / ".metadata").read_bytes()

    # 1. A payload in DCP's .metadata (which DCP itself would pickle.load).
    (ckpt / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match="refused"), open(ckpt / ".metadata", "rb") as f:
        _MetadataUnpickler(f).load()
    assert run_here(args) == 1
    row = last_row(tmp_path, "p")
    assert row["status"] == "failed" and "refused" in row["status_detail"]
    assert not marker.exists()

    # 2. A payload as a non-tensor entry (DCP would torch.load(weights_only=False) it).
    import torch
    import torch.distributed.checkpoint as dcp

    with open(ckpt / ".metadata", "wb") as f:
        f.write(good_metadata)
    with open(ckpt / ".metadata", "rb") as f:
        entries = _MetadataUnpickler(f).load().state_dict_metadata
    # Every entry the trainer expects, one of them a pickled object instead of a tensor.
    state = {k: torch.zeros(md.size) for k, md in entries.items()}
    state["model.tok_emb.weight"] = _Payload(marker)
    dcp.save(state, checkpoint_id=tmp_path / "evil", no_dist=True)
    for p in (tmp_path / "evil").iterdir():
        (ckpt / p.name).write_bytes(p.read_bytes())  # replaces .metadata and __0_0.distcp
    assert run_here(args) == 1
    row = last_row(tmp_path, "p")
    assert row["status"] == "failed" and "refused" in row["status_detail"], row["status_detail"]
    assert not marker.exists()
    assert torch.get_default_dtype() == torch.float32


def test_resume_refuses_another_config(tmp_path):
    args, _ = _checkpointed_run(tmp_path)
    # The name is the earlier configuration's (lmprof.identity): refused before any work, so the
    # checkpoint is never read and no row is added.
    from lmprof.errors import UserError

    with pytest.raises(UserError, match="by a different configuration"):
        run_here([*args, "training.lr=1e-3"])
    row = last_row(tmp_path, "p")
    assert row["status"] == "ok"
