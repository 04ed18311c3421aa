"""Checkpoints: save a run every checkpoint.interval steps and on SIGTERM, resume it exactly.

SIGTERM (Slurm's pre-emption, a sweep that died) stops a run within a step or an evaluation
batch, in any phase: during setup at once; in training at the end of the step (the ranks agree
on it at least every STOP_AGREE_STEPS steps); in an evaluation or the test split at the next
batch (`poll`); during a checkpoint write once it is complete. With checkpointing on, the
run's state at that step is saved first; the run records itself `interrupted`.

Layout, one folder per checkpoint, written whole or not at all:

    <output_dir>/<checkpoint.dir>/<run_name>/step_<N>/
        .metadata, __<rank>_0.distcp   model and optimizer tensors (torch.distributed.checkpoint)
        trainer.json                   step, run identity, world size, the optimizer's lr (rank 0)
        rank_<r>.json                  rank r's trainer state_dict (counters, scheduler, RNG...)

Every rank writes into `.tmp_step_<N>`; when all have finished, rank 0 renames it to `step_<N>`
(`io.replace_dir`; the names are `paths.py`'s), so a folder with that name is always complete,
and prunes all but the newest checkpoint.keep. DCP writes its shard files itself, inside the
temp folder; the JSON files go through `io.atomic_write_text`.
One code path serves one process, DDP and FSDP2: DCP writes each rank's shards (DDP's replicated
tensors once) and reshards on load.

Loading never runs code from the files. DCP itself does unpickle: its `.metadata` with plain
`pickle.load`, and non-tensor entries with `torch.load(weights_only=False)`. So only tensors go
through DCP (everything else is JSON), the reader (`dcp_io.py`) unpickles `.metadata` with an
allow-list of DCP's own metadata classes, and refuses any non-tensor entry; tensors are read by
DCP with `torch.load(weights_only=True)`.

Resume (checkpoint.resume=auto) continues from the newest complete checkpoint of this run name if
it was written by the same model/data/training config and world size; the data iterator is
deterministic given its start step, so the resumed run sees exactly the batches the original
would have. Rows of the details CSVs after the checkpoint's step (written before the kill) are
dropped and the rest kept, so the curve continues without duplicated or missing steps.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from lmprof.config import RunConfig
from lmprof.io import atomic_write_text, replace_dir
from lmprof.paths import (
    CHECKPOINT_MAIN,
    CHECKPOINT_TMP_PREFIX,
    RunPaths,
    checkpoint_dir,
    checkpoint_rank_state,
    checkpoint_tmp_dir,
    list_checkpoints,
)
from lmprof.train.dcp_io import (
    CheckpointError,
    _MetadataUnpickler,
    plain_errors,
    safe_reader,
    single_process_quiet,
)
from lmprof.train.distributed import DistInfo

# Callers and tests import these from here.
__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "Preempted",
    "_MetadataUnpickler",
    "continue_csv",
    "list_checkpoints",
    "trim_csv",
]

log = logging.getLogger("lmprof")

# Several ranks agree on a SIGTERM on logging and checkpoint steps, and at least this often:
# a run logging every 250 steps still stops within seconds, at one CPU collective per 10 steps.
STOP_AGREE_STEPS = 10
FORMAT_VERSION = 2  # 2: the trainer's state is its own state_dict, one per rank


class Stateful(Protocol):
    """What the checkpointer saves besides the model and optimizer tensors: a JSON-able
    state_dict (non-tensor state never goes through pickle)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Preempted(Exception):
    """SIGTERM arrived: the step finished, a checkpoint was written, the run stops."""


# ---------------------------------------------------------------------------------------------
# Finding checkpoints


def checkpoint_root(cfg: RunConfig) -> Path:
    return RunPaths.of(cfg).checkpoints_dir


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def resume_identity(cfg: RunConfig) -> str:
    """What must match for a resumed run to continue the same curve: the model, the data, the
    training recipe and the precision (not compile, checkpointing or DDP vs FSDP)."""
    d = cfg.to_dict()
    d["data"].pop("cache_dir", None)
    key = {s: d[s] for s in ("model", "data", "training")} | {"precision": d["system"]["precision"]}
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# JSON files


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return data


# ---------------------------------------------------------------------------------------------
# Details CSVs on resume


def trim_csv(path: Path, max_step: int) -> list[dict[str, str]]:
    """Keep the header and the whole rows with step <= max_step (drops rows logged after the
    checkpoint and a line torn by a kill); returns the kept rows."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return []
    header, kept = rows[0], []
    for r in rows[1:]:
        if len(r) != len(header):
            continue
        try:
            step = int(r[0])
        except ValueError:
            continue
        if step <= max_step:
            kept.append(r)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *kept])
    atomic_write_text(path, buf.getvalue())
    return [dict(zip(header, r, strict=True)) for r in kept]


def _numbers(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        try:
            out[k] = int(v) if k == "step" else float(v)
        except ValueError:
            out[k] = v
    return out


def continue_csv(path: Path, step: int) -> list[dict[str, Any]]:
    """A details CSV cut back to `step` (see trim_csv), its kept rows read back as numbers."""
    return [_numbers(r) for r in trim_csv(path, step)]


# ---------------------------------------------------------------------------------------------
# The manager


class CheckpointManager:
    """Checkpoints and pre-emption. `attach(model, optimizer, trainer, on_resume)` once the
    pieces exist (restores the newest checkpoint when resuming), then the loop calls `due(step)`
    every step (Python ints and one CPU collective on several ranks, no device sync) and
    `save(step)` when due. It knows the trainer only through its state_dict."""

    def __init__(self, cfg: RunConfig, dist_info: DistInfo):
        self.cfg, self.dist = cfg, dist_info
        self.root = checkpoint_root(cfg)
        self.interval = cfg.checkpoint.interval
        self.keep = cfg.checkpoint.keep
        self.stop_requested = False  # set by the SIGTERM handler
        self._stepping = False  # the loop has asked `due` once: a stop waits for the step
        self.stopping = False  # all ranks agreed to stop
        self._fresh = True  # nothing of this process saved or loaded yet
        self._saved_step: int | None = None  # the step of the newest checkpoint written here
        self._group = None
        self._model: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._trainer: Stateful | None = None
        self._flag = torch.zeros(1, dtype=torch.int32)
        if dist_info.world_size > 1 and dist.is_initialized():
            # The stop flag is agreed on every step over gloo with a CPU tensor: a host
            # round trip, never a device sync (the default group may be NCCL).
            cpu_backend = "gloo" in str(dist.get_backend())
            self._group = None if cpu_backend else dist.new_group(backend="gloo")
        self.resume_from = self._find_resume_point() if cfg.checkpoint.resume == "auto" else None
        self._old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    @property
    def resuming(self) -> bool:
        return self.resume_from is not None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.stop_requested = True
        if not self._stepping:
            # Before the first step there is nothing to checkpoint, and setup (a data build, a
            # model of many layers) may never reach a step: stop now, as `interrupted`.
            raise Preempted("SIGTERM during setup, before the first step")

    def close(self) -> None:
        """Put back the SIGTERM handler that was there before."""
        if self._old_handler is not None:
            signal.signal(signal.SIGTERM, self._old_handler)
            self._old_handler = None

    # -- collectives -----------------------------------------------------------------------

    @property
    def _multi(self) -> bool:
        return self.dist.world_size > 1 and dist.is_initialized()

    def _barrier(self) -> None:
        if self._multi:
            dist.barrier(group=self._group)

    def _find_resume_point(self) -> Path | None:
        found = list_checkpoints(self.root) if self.dist.is_main else []
        step = torch.tensor([found[-1][0] if found else -1], dtype=torch.int64)
        if self._multi:
            # Rank 0 decides, so every rank loads the same step even if a filesystem lags.
            dist.broadcast(step, src=0, group=self._group)
        n = int(step[0])
        return checkpoint_dir(self.root, n) if n >= 0 else None

    # -- the loop's hooks ------------------------------------------------------------------

    def due(self, step: int) -> bool:
        """Whether to checkpoint after `step`: every `interval` steps, or to stop (SIGTERM on
        any rank)."""
        self._stepping = True
        stop = self.stop_requested
        # Ranks agree on a stop on logging steps (which sync anyway), checkpoint steps and every
        # STOP_AGREE_STEPS: a collective every step would hold every rank's host thread to the
        # slowest one.
        agree = (
            step % self.cfg.logging.logging_steps == 0
            or step % STOP_AGREE_STEPS == 0
            or (self.interval and step % self.interval == 0)
        )
        if self._multi and not agree:
            return False
        stop = self._agreed(stop)
        self.stopping = stop
        return stop or (self.interval > 0 and step % self.interval == 0)

    def save(self, step: int) -> Path | None:
        """Write the checkpoint of the step just finished; after SIGTERM, raise Preempted.
        With checkpointing off (checkpoint.interval=0) a SIGTERM stops the run and writes
        nothing: files the user did not ask for, and no resume to use them."""
        if self.interval <= 0:
            if self.stopping:
                raise Preempted(f"SIGTERM at step {step} (no checkpoint: checkpoint.interval=0)")
            return None
        path = self._write(step)
        log.info("checkpoint: step %d -> %s", step, path)
        if self.stopping or self._agreed(self.stop_requested):
            # Stopping, or a SIGTERM came while it was written: that checkpoint is the one.
            raise Preempted(f"SIGTERM: checkpoint at step {step}")
        return path

    def poll(self, step: int, phase: str) -> None:
        """A stop point outside the training step (each evaluation batch; `phase` says which):
        after a SIGTERM, save the checkpoint of `step` when checkpointing is on (evaluation
        changes no state), then raise Preempted. A Python bool per call: no collective, no
        device sync; each rank stops on its own signal (torchrun and Slurm signal every rank)."""
        if not self.stop_requested:
            return
        self.stopping = True
        where = f"SIGTERM during {phase} at step {step}"
        if self.interval <= 0:
            raise Preempted(f"{where} (no checkpoint: checkpoint.interval=0)")
        if self._saved_step != step:
            log.info("checkpoint: step %d -> %s", step, self._write(step))
        raise Preempted(f"{where}: checkpoint at step {step}")

    def _agreed(self, flag: bool) -> bool:
        """`flag` on any rank (one CPU collective on several ranks)."""
        if not self._multi:
            return flag
        self._flag[0] = int(flag)
        dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(self._flag[0])

    def attach(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        trainer: Stateful,
        on_resume: Callable[[int], None] | None = None,
    ) -> None:
        """What to save: the unwrapped model (FSDP2-sharded or not) and its optimizer, whose
        tensors go through DCP, and the trainer's JSON state. When resuming, restore the newest
        checkpoint into them, then call `on_resume(step)` on every rank."""
        self._model, self._optimizer, self._trainer = model, optimizer, trainer
        if self.resume_from is not None:
            step = self._load(self.resume_from)
            if on_resume is not None:
                on_resume(step)

    # -- writing ---------------------------------------------------------------------------

    def _write(self, step: int) -> Path:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import FileSystemWriter
        from torch.distributed.checkpoint.state_dict import get_state_dict

        tmp, final = checkpoint_tmp_dir(self.root, step), checkpoint_dir(self.root, step)
        if self.dist.is_main:
            if self._fresh and not self.resuming:
                self._clear_stale()
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._fresh = False
        self._barrier()
        model_sd, optim_sd = get_state_dict(self._model, self._optimizer)
        tensors = {"model": model_sd, "optim": optim_sd["state"]}
        with single_process_quiet(), plain_errors("saving " + str(tmp)):
            dcp.save(
                tensors,
                storage_writer=FileSystemWriter(tmp),
                process_group=self._group,
                no_dist=not dist.is_initialized(),
            )
        rank_state = self._trainer.state_dict()
        atomic_write_text(checkpoint_rank_state(tmp, self.dist.rank), json.dumps(rank_state))
        if self.dist.is_main:
            main_state = {
                "format": FORMAT_VERSION,
                "step": step,
                "world_size": self.dist.world_size,
                "identity": resume_identity(self.cfg),
                "config_hash": self.cfg.hash(),
                # DCP carries the optimizer's tensors only; its param groups come from the live
                # optimizer on load, so their lr (which the first resumed step uses) is kept here.
                "lr": [g["lr"] for g in self._optimizer.param_groups],
            }
            atomic_write_text(tmp / CHECKPOINT_MAIN, json.dumps(main_state, indent=1))
        self._barrier()
        if self.dist.is_main:
            replace_dir(tmp, final)
            self._prune()
        self._barrier()
        self._saved_step = step
        return final

    def _clear_stale(self) -> None:
        """A fresh run replaces what an earlier run of this name left (else the newest-first
        pruning would delete the new checkpoints and keep the stale ones)."""
        stale = list_checkpoints(self.root)
        if stale:
            log.warning(
                "checkpoint: removing %d checkpoint(s) of an earlier run in %s "
                "(checkpoint.resume=none)",
                len(stale),
                self.root,
            )
        for _, p in stale:
            shutil.rmtree(p, ignore_errors=True)
        if self.root.is_dir():
            for p in self.root.glob(f"{CHECKPOINT_TMP_PREFIX}*"):
                shutil.rmtree(p, ignore_errors=True)

    def _prune(self) -> None:
        found = list_checkpoints(self.root)
        for _, p in found[: max(len(found) - self.keep, 0)]:
            shutil.rmtree(p, ignore_errors=True)

    # -- reading ---------------------------------------------------------------------------

    def _load(self, path: Path) -> int:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        main = _read_json(path / CHECKPOINT_MAIN)
        if main.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: unknown checkpoint format {main.get('format')!r}")
        if main.get("identity") != resume_identity(self.cfg):
            raise CheckpointError(
                f"{path} was written by another config (model, data, training or precision "
                "differ): delete it or set checkpoint.resume=none"
            )
        if main.get("world_size") != self.dist.world_size:
            raise CheckpointError(
                f"{path} was written by {main.get('world_size')} process(es), this run has "
                f"{self.dist.world_size}: resume with the same number"
            )
        mine = _read_json(checkpoint_rank_state(path, self.dist.rank))
        # get_state_dict gives the live tensors (and initialises empty optimizer state with a
        # zero-lr step), so DCP loads in place, each rank its own shards.
        model_sd, optim_sd = get_state_dict(self._model, self._optimizer)
        tensors = {"model": model_sd, "optim": optim_sd["state"]}
        with single_process_quiet(), plain_errors(str(path)):
            dcp.load(
                tensors,
                storage_reader=safe_reader(path),
                process_group=self._group,
                no_dist=not dist.is_initialized(),
            )
        optim_sd = {"state": tensors["optim"], "param_groups": optim_sd["param_groups"]}
        set_state_dict(
            self._model,
            self._optimizer,
            model_state_dict=tensors["model"],
            optim_state_dict=optim_sd,
        )
        for group, lr in zip(self._optimizer.param_groups, main["lr"], strict=True):
            group["lr"] = lr
        self._trainer.load_state_dict(mine)
        self._fresh = False
        step = int(main["step"])
        log.info("resumed from %s (step %d)", path, step)
        return step
