"""One run from a config to its results row, whatever happens in between.

Every run that starts ends with exactly one row in results.csv: `ok`, `oom` (with the phase and
the peak reached), `diverged`, `failed` (one-line summary; the log keeps the traceback) or
`interrupted`. A user's mistake found before any work raises UserError and writes nothing.
"""

from __future__ import annotations

import datetime
import logging
import math
import traceback

import torch

from lmprof import attention_kernels
from lmprof.config import RunConfig
from lmprof.environment import check_environment, environment_info
from lmprof.errors import EnvironmentMismatch, UserError
from lmprof.paths import RunPaths
from lmprof.precision import PRECISIONS, torch_dtype
from lmprof.results import append_row
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
from lmprof.train.checkpoint import CheckpointManager, Preempted
from lmprof.train.distributed import DistInfo, all_reduce_sum, init_distributed, shutdown
from lmprof.train.loop import Diverged, Trainer
from lmprof.train.outputs import RunOutputs, discard_log, format_run_summary, setup_logging

log = logging.getLogger("lmprof")


def config_row(cfg: RunConfig) -> dict:
    """The columns that come from the config alone (so a failed run still has them)."""
    m, s = cfg.model, cfg.system
    return {
        "run_name": cfg.logging.run_name,
        "tag": cfg.logging.tag,
        "sequence_length": cfg.seq_len,
        "batch_size": cfg.training.batch_size,
        "fp16": s.precision == "fp16",
        "grad_checkpoint": s.gradient_checkpointing != "none",
        "checkpointing": s.gradient_checkpointing,
        "flash_attention": attention_kernels.kernel(m.attention).seed_flash,
        "ddp_gpus": s.num_gpus,
        "precision": s.precision,
        "attention": m.attention,
        "compile": s.compile,
        "compile_mode": s.compile_mode if s.compile else "",
        "parallelism": s.parallelism,
        "grad_accum_steps": cfg.training.grad_accum_steps,
        "max_steps": cfg.training.max_steps,
        "n_layers": m.n_layers,
        "d_model": m.d_model,
        "n_heads": m.n_heads,
        "d_ff": m.d_ff,
        "norm": m.norm,
        "pos_encoding": m.pos_encoding,
        "data_source": cfg.data.source,
        "tokenizer": cfg.data.tokenizer,
        "batching": cfg.data.batching,
        "config_hash": cfg.hash(),
    }


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


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
        "avg_accuracy": sum(p["accuracy"] for p in logged) / len(logged)
        if logged
        else float("nan"),
    }
    row.update(trainer.steady_state())
    row.update(_flops_row(trainer, row))
    if eval_point:
        row.update({k: eval_point[k] for k in ("eval_loss", "eval_perplexity", "eval_accuracy")})
    return row


def _energy_row(trainer: Trainer) -> dict:
    from lmprof.profiling.energy import energy_row

    return energy_row(trainer)


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


def run(cfg: RunConfig) -> int:
    """Train one run and append its row; returns the process exit code."""
    reason = check_environment(cfg)
    if reason:
        raise EnvironmentMismatch(reason)
    dist: DistInfo = init_distributed(cfg)
    setup_logging(cfg, dist.is_main)
    row = config_row(cfg) | environment_info(dist.device) | {"started_at": _now()}
    row["ddp_gpus"] = dist.world_size
    status, detail, trainer = FAILED, "", None
    ckpt: CheckpointManager | None = None
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
            cfg.model.attention,
        )
        if cfg.logging.debug_flash:
            from lmprof.train.debug_flash import log_attention_table

            log_attention_table(trainer)
        trainer.fit(checkpoints=ckpt)
        eval_point = trainer.evaluate()
        row |= _summary_row(trainer, eval_point)
        row |= _energy_row(trainer)
        status = OK
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
        row |= {"status": status, "status_detail": detail, "finished_at": _now()}
        if dist.is_main and status != USER_ERROR:
            append_row(RunPaths.of(cfg).results_csv, _finite(row))
            log.info("%s", format_run_summary(row, RunPaths.of(cfg)))
        if status == USER_ERROR:
            discard_log(cfg)
        if ckpt is not None:  # only now: torchrun SIGTERMs the others when one rank exits
            ckpt.close()
        shutdown(clean=status == OK)
    return EXIT_CODES[status]


def _finite(row: dict) -> dict:
    return {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
