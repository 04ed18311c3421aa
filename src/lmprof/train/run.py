"""One run from a config to its results row, whatever happens in between.

Every run that starts ends with exactly one row in results.csv: `ok`, `oom` (with the phase and
the peak reached), `diverged`, `failed` (one-line summary; the log keeps the traceback) or
`interrupted`. A user's mistake found before any work raises UserError and writes nothing.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import traceback

import torch

from lmprof import clock
from lmprof.columns import config_row, now
from lmprof.config import RunConfig
from lmprof.environment import check_environment, environment_info
from lmprof.errors import EnvironmentMismatch, OutputError, UserError
from lmprof.identity import settle
from lmprof.paths import RunPaths
from lmprof.precision import PRECISIONS, torch_dtype
from lmprof.preflight import check_outputs, predicted_oom
from lmprof.results import ColumnGroup, append_row
from lmprof.status import (
    DIVERGED,
    EXIT_CODES,
    FAILED,
    INTERRUPTED,
    OK,
    OOM,
    USER_ERROR,
    is_oom,
)
from lmprof.train.checkpoint import CheckpointError, CheckpointManager, Preempted
from lmprof.train.distributed import (
    DistInfo,
    all_reduce_sum,
    init_distributed,
    resolve_device,
    shutdown,
)
from lmprof.train.loop import Diverged, Trainer
from lmprof.train.outputs import RunOutputs, discard_log, format_run_summary, setup_logging

log = logging.getLogger("lmprof")


SUMMARY_COLUMNS = ColumnGroup(
    "summary",
    "what the run did and how well it learned: train/run.py, from the trainer's state",
    (
        "total_params_m",
        "attention_kernel",
        "vocab_size",
        "steps_done",
        "tokens_seen",
        "training_time_sec",
        "throughput",
        "final_train_loss",
        "avg_perplexity",
        "avg_accuracy",
        "eval_loss",
        "eval_perplexity",
        "eval_accuracy",
        # The test split, evaluated once at the end when the source has one (Trainer.test_row).
        "test_loss",
        "test_ppl",
        "test_accuracy",
        "test_tokens",
        "peak_gpu_mem_gb",
        "peak_gpu_reserved_gb",
        "peak_host_mem_gb",
        # The whole process (lmprof/clock.py): start to the first step (imports, data, model),
        # time in evaluations, and start to this row, beside the steady time at the median step.
        "startup_sec",
        "eval_time_sec",
        "wall_time_sec",
        "steady_time_sec",
    ),
)


def _memory_row(device: torch.device) -> dict:
    import resource

    gib = 1024**3
    # ru_maxrss is in KiB on Linux: the process's peak resident memory, the CPU's counterpart.
    host = {"peak_host_mem_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}
    if device.type != "cuda":
        return host
    return host | {
        "peak_gpu_mem_gb": torch.cuda.max_memory_allocated(device) / gib,
        "peak_gpu_reserved_gb": torch.cuda.max_memory_reserved(device) / gib,
    }


def _summary_row(trainer: Trainer, eval_point: dict | None) -> dict:
    st, dist = trainer.state, trainer.dist
    total_real = all_reduce_sum([float(st.real_tokens)], dist)[0]
    logged = st.logged
    row = {
        "total_params_m": trainer.n_params / 1e6,
        # What `attention=auto` became (the config's `attention` column keeps what was asked).
        "attention_kernel": trainer.raw_model.args.attention,
        "vocab_size": trainer.args.padded_vocab_size,
        "steps_done": st.step,
        "tokens_seen": int(total_real),
        "training_time_sec": st.train_time_s,
        # The seed's throughput: real tokens over all ranks per second of training, end to end.
        "throughput": total_real / st.train_time_s if st.train_time_s > 0 else float("nan"),
        "final_train_loss": logged[-1]["loss"] if logged else float("nan"),
        "avg_perplexity": sum(p["perplexity"] for p in logged) / len(logged)
        if logged
        else float("nan"),
        # Accuracy is measured at log points; one forced by a stop (SIGTERM) has none.
        "avg_accuracy": _mean_finite(p["accuracy"] for p in logged),
    }
    row.update(trainer.steady_state())
    row["eval_time_sec"] = st.eval_time_s
    # What the steps would take at the steady step time: the floor the wall time is read against.
    row["steady_time_sec"] = st.step * row["step_time_p50_ms"] / 1e3
    row.update(_flops_row(trainer, row))
    if eval_point:
        row.update({k: eval_point[k] for k in ("eval_loss", "eval_perplexity", "eval_accuracy")})
    return row


def _mean_finite(values) -> float:
    kept = [v for v in values if math.isfinite(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def _energy_row(trainer: Trainer, steady_tokens_per_sec: float | None) -> dict:
    """The run's energy and cost columns (called on every rank after training: one all-reduce);
    the steady tokens/s is the summary row's, so the steady window is summarised once. Read
    here, from the trainer: lmprof.profiling takes plain values and never imports lmprof.train."""
    from lmprof.profiling.energy import EnergyMeter, cost_columns, resolve_gpu_hour_usd

    cfg, st, dist = trainer.cfg, trainer.state, trainer.dist
    meter: EnergyMeter | None = getattr(trainer.instruments, "energy", None)
    row: dict = {}
    if meter is not None:
        warm = min(cfg.logging.timing_warmup_steps, st.step)
        window_tokens = st.real_tokens / max(st.step, 1) * (st.step - warm)
        row = meter.columns(window_tokens, lambda xs: all_reduce_sum(xs, dist))
    cuda = trainer.device.type == "cuda"
    name = torch.cuda.get_device_name(trainer.device) if cuda else ""
    usd = resolve_gpu_hour_usd(cfg.cost.gpu_hour_usd, name)
    return row | cost_columns(usd, dist.world_size, steady_tokens_per_sec, st.train_time_s)


def _flops_row(trainer: Trainer, row: dict) -> dict:
    """MFU (model FLOPs), HFU (with recompute) and achieved TFLOP/s per GPU, from the steady
    state's processed tokens (PAD included: the GPU does that work)."""
    from lmprof.profiling.flops import flops_per_token, mfu
    from lmprof.profiling.peaks import matmul_precision, measure_peak_flops, peak_flops

    cfg, device = trainer.cfg, trainer.device
    fc = flops_per_token(trainer.args, cfg.seq_len, device=device.type)
    per_gpu = row["processed_tokens_per_sec"] / trainer.dist.world_size
    out = {
        "model_flops_per_token": fc.model_flops_per_token,
        "achieved_tflops": per_gpu * fc.model_flops_per_token / 1e12,
        "matmul_precision": matmul_precision(cfg.system.precision),
    }
    if device.type != "cuda":
        return out
    if cfg.profile.peak == "measured":
        dtype = torch_dtype(PRECISIONS[cfg.system.precision].dtype)
        peak, out["peak_source"] = measure_peak_flops(device, dtype), "measured"
    else:
        peak = peak_flops(torch.cuda.get_device_name(device), out["matmul_precision"])
        out["peak_source"] = "table" if peak else "unknown GPU"
    if peak:
        out["peak_tflops"] = peak / 1e12
        out["mfu"] = mfu(per_gpu, fc.model_flops_per_token, peak)
        out["hfu"] = per_gpu * fc.hardware_flops_per_token / peak
    return out


def _predicted_memory_row(cfg: RunConfig, vocab_size: int, world_size: int) -> dict:
    from lmprof.profiling.memory_model import estimate_memory

    est = estimate_memory(cfg, vocab_size, world_size)
    gib = 1024**3
    return {
        "predicted_peak_mem_gb": est.predicted_peak_bytes / gib,
        "predicted_peak_phase": est.peak_phase,
    }


def _refuse_predicted_oom(cfg: RunConfig) -> int | None:
    """The exit code of a run the memory model says cannot fit, its row written; None: start it.

    Recorded as `oom`, not `skipped`: `skipped` says this machine lacks what the config needs
    (fp16 on a CPU) and a rerun retries it; this run would have ended in `oom` minutes later,
    the answer the analysis, find-max and the resume policy (a rerun skips `oom`) want. The
    detail starts with "out of memory predicted" so it is never mistaken for a measured one.
    """
    if cfg.system.allow_predicted_oom:
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg, local_rank)
    try:
        found = predicted_oom(cfg, device.type)
    except Exception as exc:  # noqa: BLE001 -- the prediction is advice: never a reason to fail
        log.debug("no memory prediction: %s", exc)
        return None
    if found is None:
        return None
    need, line = found
    if int(os.environ.get("RANK", "0")) == 0:
        at = now()
        row = config_row(cfg) | environment_info(device)
        row |= {
            "predicted_peak_mem_gb": need / 1024**3,
            "steps_done": 0,
            "status": OOM,
            "status_detail": line,
            "started_at": at,
            "finished_at": at,
        }
        append_row(RunPaths.of(cfg).results_csv, _finite(row))
    print(f"lmprof: {cfg.logging.run_name}: {line}", file=sys.stderr)
    return EXIT_CODES[OOM]


def _attention_label(asked: str, runs: str) -> str:
    """The attention for the log line: the kernel, or "auto -> fa4" when auto was resolved."""
    return runs if asked == runs else f"{asked} -> {runs}"


def run(cfg: RunConfig) -> int:
    """Train one run and append its row; returns the process exit code."""
    reason = check_environment(cfg)
    if reason:
        raise EnvironmentMismatch(reason)
    settle(cfg)
    # Before any work: outputs that cannot be written, and memory that cannot suffice, cost
    # one line here instead of a run (and, for a few million layers, a minute of model build).
    check_outputs([RunPaths.of(cfg)])
    refused = _refuse_predicted_oom(cfg)
    if refused is not None:
        return refused
    dist: DistInfo = init_distributed(cfg)
    setup_logging(cfg, dist.is_main)
    row = config_row(cfg) | environment_info(dist.device) | {"started_at": now()}
    row["ddp_gpus"] = dist.world_size
    status, detail, trainer, outputs = FAILED, "", None, None
    ckpt: CheckpointManager | None = None
    # A mistake found once the run started (an incompatible checkpoint, a full disk): the row
    # says `failed` with it, and the console gets it as one line, not a traceback.
    late_error: str | None = None
    try:
        log.info("run %s: %s", cfg.logging.run_name, cfg.hash())
        ckpt = CheckpointManager(cfg, dist)  # the resume point, the SIGTERM handler
        outputs = RunOutputs(cfg, dist.is_main, resuming=ckpt.resuming)
        trainer = Trainer(cfg, dist, outputs)
        outputs.open()
        row |= _predicted_memory_row(cfg, trainer.data.vocab_size, dist.world_size)
        # Restores the newest checkpoint when resuming.
        ckpt.attach(
            trainer.raw_model, trainer.optimizer, trainer, on_resume=trainer.continue_details
        )
        log.info(
            "model: %.2fM parameters on %s, precision %s, attention %s",
            trainer.n_params / 1e6,
            dist.device,
            cfg.system.precision,
            _attention_label(cfg.model.attention, trainer.raw_model.args.attention),
        )
        if cfg.logging.debug_flash:
            from lmprof.train.debug_flash import log_attention_table

            log_attention_table(trainer)
        row["startup_sec"] = clock.since_process_start()
        trainer.fit(checkpoints=ckpt)
        eval_point = trainer.evaluate()
        row |= _summary_row(trainer, eval_point) | trainer.test_row()
        row |= _energy_row(trainer, row.get("steady_tokens_per_sec"))
        status = OK
    except (OutputError, CheckpointError) as exc:
        status, detail = FAILED, str(exc)
        late_error = detail
        log.error("run failed: %s", detail)
    except UserError:
        status = USER_ERROR  # found during setup (a missing data path, ...): no row, exit 2
        raise
    except Diverged as exc:
        status, detail = DIVERGED, str(exc)
    except Preempted as exc:
        status, detail = INTERRUPTED, str(exc)
    except KeyboardInterrupt:
        status, detail = INTERRUPTED, "stopped by the user"
    except BaseException as exc:  # noqa: BLE001 -- every failure must end in a row
        if is_oom(exc):
            phase = trainer.instruments.state_phase if trainer else "setup"
            status, detail = OOM, f"out of memory during {phase}"
        else:
            status, detail = (
                FAILED,
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            )
            log.error("run failed:\n%s", traceback.format_exc())
    finally:
        if status != OK and trainer is not None:
            row.setdefault("steps_done", trainer.state.step)
            row.setdefault("total_params_m", trainer.n_params / 1e6)
        row |= _memory_row(dist.device)
        if trainer is not None:
            trainer.instruments.close(oom=status == OOM)
            row |= trainer.instruments.summary()
        row |= {"status": status, "status_detail": detail, "finished_at": now()}
        row["wall_time_sec"] = clock.since_process_start()
        if dist.is_main and status != USER_ERROR:
            try:
                append_row(RunPaths.of(cfg).results_csv, _finite(row))
            except OutputError as exc:  # the disk filled up: earlier rows stay as they were
                late_error = f"{detail}; the row was not written: {exc}" if late_error else str(exc)
                status = FAILED
            else:
                log.info("%s", format_run_summary(row, RunPaths.of(cfg)))
        if outputs is not None:
            outputs.finish(row)
        if status == USER_ERROR:
            discard_log(cfg)
        if ckpt is not None:  # only now: torchrun SIGTERMs the others when one rank exits
            ckpt.close()
        shutdown(clean=status == OK)
    if late_error and dist.is_main:
        print(f"lmprof: error: {late_error}", file=sys.stderr)
    return EXIT_CODES[status]


def _finite(row: dict) -> dict:
    return {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
