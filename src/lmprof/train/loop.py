"""The training loop: build the pieces, step, log, evaluate.

The step itself reads like pseudocode: forward, backward, clip, optimizer step. It never waits
for the GPU: losses and correct-prediction counts accumulate on the device and are read once per
logging step, step times come from CUDA events read at the same moment, and token counts are
host integers computed by the data loader.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from lmprof.config import CUDAGRAPH_MODES, RunConfig
from lmprof.data import Batch, build_data
from lmprof.model import ModelArgs, Transformer
from lmprof.precision import PRECISIONS, autocast_dtype
from lmprof.train.distributed import DistInfo, all_reduce_sum
from lmprof.train.instruments import Instruments
from lmprof.train.optim import build_optimizer, build_scheduler
from lmprof.train.outputs import RunOutputs
from lmprof.train.timing import StepTimer, percentile

log = logging.getLogger("lmprof")


class Diverged(Exception):
    """The loss stayed non-finite for longer than training.diverge_patience steps."""


@dataclass
class TrainState:
    step: int = 0
    real_tokens: int = 0  # non-PAD targets trained on, this rank
    processed_tokens: int = 0  # B*T per micro-batch, PAD included, this rank
    train_time_s: float = 0.0  # wall clock in the training loop, evaluation excluded
    compile_time_s: float = 0.0
    first_nonfinite_step: int | None = None
    logged: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)


def set_precision_flags(precision: str) -> None:
    """fp32 means IEEE fp32 matmuls; tf32 opts in to the tensor-core format explicitly."""
    tf32 = PRECISIONS[precision].tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


class Trainer:
    def __init__(self, cfg: RunConfig, dist: DistInfo, outputs: RunOutputs):
        self.cfg, self.dist, self.out = cfg, dist, outputs
        self.device = dist.device
        self.state = TrainState()
        torch.manual_seed(cfg.training.seed + dist.rank)
        set_precision_flags(cfg.system.precision)

        self.data = build_data(cfg, log=log.info)
        self.args = ModelArgs.from_config(cfg, self.data.vocab_size)
        with torch.device(self.device):
            torch.manual_seed(cfg.training.seed)  # same initial weights on every rank
            self.raw_model = Transformer(self.args)
        torch.manual_seed(cfg.training.seed + dist.rank)  # but each rank its own dropout masks
        self.n_params = self.raw_model.num_params()
        self.fsdp = cfg.system.parallelism == "fsdp"  # FSDP2 even on one process (train/fsdp.py)
        self.model = self._wrap(self.raw_model)
        self.optimizer = build_optimizer(self.raw_model, cfg.training, self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg.training)
        self.autocast_dtype = autocast_dtype(cfg.system.precision)
        # CUDA graphs (compile modes reduce-overhead, max-autotune) reuse their output buffers.
        self.cudagraphs = cfg.system.compile and cfg.system.compile_mode in CUDAGRAPH_MODES
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=PRECISIONS[cfg.system.precision].grad_scaler
        )
        self.timer = StepTimer(self.device)
        self.instruments = Instruments(cfg, self.device, dist.is_main)
        self.checkpoints = None  # a CheckpointManager attaches itself (train/checkpoint.py)

    def _wrap(self, model: nn.Module) -> nn.Module:
        system = self.cfg.system
        mode = None if system.compile_mode == "default" else system.compile_mode
        if self.fsdp:
            from lmprof.train.fsdp import shard_model

            model = shard_model(model, self.dist, system.precision)
            return torch.compile(model, mode=mode) if system.compile else model
        if system.compile:
            model = torch.compile(model, mode=mode)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DDP(model, device_ids=ids)
        return model

    def autocast(self):
        if self.autocast_dtype is None or self.fsdp:  # FSDP casts the parameters itself
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # -----------------------------------------------------------------------------------------

    def batches(self, start_step: int = 0):
        """Training batches on the device, the next one already copied while a step runs."""
        tr, d = self.cfg.training, self.dist
        it = self.data.train_batches(
            tr.batch_size,
            rank=d.rank,
            world_size=d.world_size,
            seed=tr.seed,
            start_step=start_step * tr.grad_accum_steps,
        )
        nxt = next(it).to(self.device)
        while True:
            cur, nxt = nxt, next(it).to(self.device)
            yield cur

    def train_step(self, batches) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over grad_accum_steps micro-batches; returns device tensors."""
        accum, st, phase = self.cfg.training.grad_accum_steps, self.state, self.instruments.phase
        loss_sum = correct = None  # device tensors; no fill kernels for the common accum == 1
        for micro in range(accum):
            with phase("data"):
                batch: Batch = next(batches)
            st.real_tokens += batch.n_real_tokens
            st.processed_tokens += batch.n_tokens
            last = micro == accum - 1
            with self._grad_sync(last):
                if self.cudagraphs:
                    torch.compiler.cudagraph_mark_step_begin()
                with phase("forward"), self.autocast():
                    loss, n_correct = self.model(
                        batch.input_ids, batch.targets, batch.attention_mask
                    )
                if self.cudagraphs:  # the next replay overwrites the graph's outputs
                    loss, n_correct = loss.clone(), n_correct.clone()
                with phase("backward"):
                    self.scaler.scale(loss / accum).backward()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            correct = n_correct if correct is None else correct + n_correct
        with phase("optimizer"):
            if self.cfg.training.max_grad_norm > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.training.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
        return (loss_sum / accum if accum > 1 else loss_sum), correct

    def _grad_sync(self, last: bool):
        """Gradient accumulation: all-reduce (DDP) or reduce-scatter (FSDP2) on the last
        micro-step only."""
        if self.fsdp:
            if self.cfg.training.grad_accum_steps > 1:
                from lmprof.train.fsdp import set_gradient_sync

                set_gradient_sync(self.raw_model, last)
            return contextlib.nullcontext()
        if self.dist.enabled and not last:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def fit(self) -> TrainState:
        cfg, st = self.cfg, self.state
        max_steps, log_every = cfg.training.max_steps, cfg.logging.logging_steps
        batches = self.batches(st.step)
        self.model.train()
        interval_loss = torch.zeros((), device=self.device)
        interval_correct = torch.zeros((), device=self.device, dtype=torch.long)
        interval_steps, interval_real = 0, 0
        progress = self.out.progress_bar(max_steps, initial=st.step)
        t_start = time.perf_counter()
        while st.step < max_steps:
            real_before = st.real_tokens
            self.instruments.step_begin(st.step)
            self.timer.start()
            loss, correct = self.train_step(batches)
            self.timer.stop()
            st.step += 1
            self.instruments.step_end(st.step)
            interval_loss += loss
            interval_correct += correct
            interval_steps += 1
            interval_real += st.real_tokens - real_before
            if st.step == 1:
                self.timer.collect()
                st.compile_time_s = time.perf_counter() - t_start
            ckpt = self.checkpoints is not None and self.checkpoints.due(st.step)
            if st.step % log_every == 0 or st.step == max_steps or ckpt:
                st.train_time_s += time.perf_counter() - t_start
                self._log_point(
                    interval_loss, interval_correct, interval_steps, interval_real, progress
                )
                interval_loss.zero_()
                interval_correct.zero_()
                interval_steps, interval_real = 0, 0
                if (
                    self.cfg.logging.eval_interval
                    and st.step % self.cfg.logging.eval_interval == 0
                    and st.step < max_steps
                ):
                    self.evaluate()
                if ckpt:  # after a log point, so the details CSVs cover each step once
                    self.checkpoints.save(self)  # raises Preempted after a SIGTERM
                t_start = time.perf_counter()
            elif progress is not None:
                progress.update(1)
        if progress is not None:
            progress.close()
        return st

    def _log_point(self, loss_sum, correct_sum, n_steps, n_real, progress) -> None:
        st, cfg = self.state, self.cfg
        step_ms = self.timer.collect()
        self.instruments.collect()
        # One device-to-host transfer for everything the log line needs, summed over ranks.
        loss_host, correct_host = torch.stack([loss_sum.double(), correct_sum.double()]).tolist()
        loss_total, correct_total, real_total = all_reduce_sum(
            [loss_host, correct_host, float(n_real)], self.dist
        )
        loss = loss_total / (n_steps * self.dist.world_size)
        self._check_divergence(loss)
        recent = step_ms[-n_steps:]
        step_time = sum(recent) / len(recent)
        point = {
            "step": st.step,
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "accuracy": correct_total / max(real_total, 1),
            "lr": self.scheduler.get_last_lr()[0],
            "tokens_seen": int(all_reduce_sum([float(st.real_tokens)], self.dist)[0]),
            "step_time_ms": step_time,
            "tokens_per_sec": real_total / n_steps / (step_time / 1e3),
            "elapsed_sec": st.train_time_s,
        }
        st.logged.append(point)
        self.out.log_metrics(point)
        if progress is not None:
            progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{point['tokens_per_sec']:.3g}")
            progress.update(1)
        elif self.dist.is_main:
            log.info(
                "step %d/%d loss %.4f ppl %.2f acc %.3f lr %.2e %.1f ms/step %.0f tok/s",
                st.step,
                cfg.training.max_steps,
                loss,
                point["perplexity"],
                point["accuracy"],
                point["lr"],
                step_time,
                point["tokens_per_sec"],
            )

    def _check_divergence(self, loss: float) -> None:
        st = self.state
        if math.isfinite(loss):
            st.first_nonfinite_step = None
            return
        if st.first_nonfinite_step is None:
            st.first_nonfinite_step = st.step
        if (
            st.step - st.first_nonfinite_step >= self.cfg.training.diverge_patience
            or st.step >= self.cfg.training.max_steps
        ):
            why = "loss non-finite"
            if self.scaler.is_enabled():
                why += f" ({self.cfg.system.precision} overflow; loss scale {self.scaler.get_scale():.3g})"
            raise Diverged(f"{why} since step {st.first_nonfinite_step}")

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Loss, perplexity and accuracy averaged per token over the whole validation split."""
        st, cfg = self.state, self.cfg
        ins = self.instruments
        phase, ins.state_phase = ins.state_phase, "eval"
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        n_tokens = 0
        for batch in self.data.val_batches(
            cfg.training.batch_size,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            max_batches=cfg.logging.eval_max_batches,
        ):
            batch = batch.to(self.device)
            with self.autocast():
                loss, n_correct = self.model(batch.input_ids, batch.targets, batch.attention_mask)
            loss_sum += loss.double() * batch.n_real_tokens
            correct += n_correct
            n_tokens += batch.n_real_tokens
        total_loss, total_correct, total_tokens = all_reduce_sum(
            [*torch.stack([loss_sum, correct.double()]).tolist(), float(n_tokens)], self.dist
        )
        self.model.train()
        ins.state_phase = phase
        eval_loss = total_loss / max(total_tokens, 1)
        point = {
            "step": st.step,
            "tokens_seen": st.real_tokens * self.dist.world_size,
            "elapsed_sec": st.train_time_s,
            "eval_loss": eval_loss,
            "eval_perplexity": math.exp(min(eval_loss, 50.0)),
            "eval_accuracy": total_correct / max(total_tokens, 1),
            "eval_tokens": int(total_tokens),
        }
        st.evals.append(point)
        self.out.log_eval(point)
        if self.dist.is_main:
            log.info(
                "eval at step %d: loss %.4f ppl %.2f acc %.3f over %d tokens",
                st.step,
                eval_loss,
                point["eval_perplexity"],
                point["eval_accuracy"],
                total_tokens,
            )
        return point

    def steady_state(self) -> dict:
        """Step-time percentiles and tokens/s over the steps after the timing warm-up."""
        st, cfg = self.state, self.cfg
        times = self.timer.collect()
        skip = min(cfg.logging.timing_warmup_steps, max(len(times) - 1, 0))
        steady = times[skip:]
        p50 = percentile(steady, 50)
        tokens_per_step_real = st.real_tokens / max(st.step, 1)  # this rank
        tokens_per_step_proc = st.processed_tokens / max(st.step, 1)
        world = self.dist.world_size
        per_gpu = tokens_per_step_real / (p50 / 1e3) if steady else float("nan")
        return {
            "step_time_p50_ms": p50,
            "step_time_p90_ms": percentile(steady, 90),
            "steady_tokens_per_sec_per_gpu": per_gpu,
            "steady_tokens_per_sec": per_gpu * world,
            "processed_tokens_per_sec": tokens_per_step_proc / (p50 / 1e3) * world,
            # The first step's wall time holds the compilation; one steady step of it is work.
            "compile_time_sec": max(0.0, st.compile_time_s - p50 / 1e3)
            if cfg.system.compile
            else 0.0,
            "steady_steps": len(steady),
        }
