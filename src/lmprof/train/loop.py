"""The training loop: build the pieces, step, log, evaluate.

The step itself reads like pseudocode: forward, backward, clip, optimizer step. It never waits
for the GPU: the losses are SUMS over real (non-PAD) targets, divided by the step's real-token
count, which the data loader counted on the host (over ranks: one integer all-reduce, on the
device); losses and correct-prediction counts accumulate on the device and are read once per
logging step, and step times come from CUDA events read at the same moment. The argmax's
accuracy is asked only of the step that ends at a log point, and of evaluation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lmprof.config import CUDAGRAPH_MODES, RunConfig
from lmprof.data import Batch, build_data
from lmprof.data.prefetch import PinnedAhead
from lmprof.model import ModelArgs, Transformer
from lmprof.precision import PRECISIONS, autocast_dtype
from lmprof.train.distributed import DistInfo, all_reduce_count, all_reduce_sum
from lmprof.train.instruments import Instruments
from lmprof.train.optim import build_optimizer, build_scheduler, clip_in_step, clips_in_step
from lmprof.train.outputs import CONSOLE, RunOutputs
from lmprof.train.state import LossMeter, TrainState
from lmprof.train.timing import StepTimer, steady_noise

log = logging.getLogger("lmprof")


class Diverged(Exception):
    """The loss stayed non-finite for longer than training.diverge_patience steps."""


class Checkpoints(Protocol):
    """What fit needs of a checkpointer (train/checkpoint.py's CheckpointManager)."""

    def due(self, step: int) -> bool: ...

    def save(self, step: int) -> Path | None: ...

    def poll(self, step: int, phase: str) -> None: ...


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
        if self.data.has_test:
            # A test split too small for the ranks: one line now, not after training.
            self.data.eval_batches("test", 1, rank=dist.rank, world_size=dist.world_size)
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
        self.params = list(self.model.parameters())
        self.clip_in_step = clips_in_step(self.optimizer, self.scaler.is_enabled(), self.fsdp)
        self.timer = StepTimer(self.device)
        self.instruments = Instruments(cfg, self.device, dist.is_main)
        self.instruments.optimizer_bytes_per_step = _optimizer_bytes(
            self.optimizer, cfg, self.clip_in_step
        )
        # Where a stop request is checked outside the step (each evaluation batch): fit's.
        self.checkpoints: Checkpoints | None = None

    # -- resumable state ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return self.state.to_dict(self.scheduler, self.scaler, self.device)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.load(state, self.scheduler, self.scaler, self.device)

    def continue_details(self, step: int) -> None:
        """On resume: drop detail rows past the checkpoint, and take the kept ones back into the
        state so the summary row's averages cover the whole run."""
        from lmprof.train.checkpoint import continue_csv

        out = self.out
        if not self.dist.is_main:
            return
        if out.metrics is not None:
            self.state.logged = continue_csv(out.metrics.path, step)
        if out.evals is not None:
            self.state.evals = continue_csv(out.evals.path, step)

    def _wrap(self, model: nn.Module) -> nn.Module:
        system = self.cfg.system
        whole = system.compile and system.compile_scope != "blocks"
        if system.compile and not whole:  # in place: the model's forward calls them compiled
            for block in model.blocks:
                block.compile(**_compile_args(system))
        if self.fsdp:
            from lmprof.train.fsdp import shard_model

            model = shard_model(model, self.dist, system.precision)
            return _compile(model, system) if whole else model
        if whole:
            model = _compile(model, system)
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
        """Training batches on the device, the next one already copied while a step runs. On
        CUDA a thread cuts and pins them ahead (data/prefetch.py): the training thread only
        starts each copy."""
        tr, d = self.cfg.training, self.dist
        it = self.data.train_batches(
            tr.batch_size,
            rank=d.rank,
            world_size=d.world_size,
            seed=tr.seed,
            start_step=start_step * tr.grad_accum_steps,
        )
        ahead = PinnedAhead(it) if self.device.type == "cuda" else None
        try:
            it = ahead or it
            nxt = next(it).to(self.device)
            while True:
                cur, nxt = nxt, next(it).to(self.device)
                yield cur
        finally:
            if ahead is not None:
                ahead.close()

    def train_step(self, batches, accuracy: bool = False):
        """One optimizer step over grad_accum_steps micro-batches: (the summed loss, the number
        right or None when `accuracy` is not asked), device tensors."""
        accum, st, phase = self.cfg.training.grad_accum_steps, self.state, self.instruments.phase
        with phase("data"):
            micro_batches: list[Batch] = [next(batches) for _ in range(accum)]
        n_real = sum(b.n_real_tokens for b in micro_batches)
        st.real_tokens += n_real
        st.processed_tokens += sum(b.n_tokens for b in micro_batches)
        # The gradient of the loss per real token of the whole step: every micro-batch weighted
        # by its real tokens, every rank by its own (DDP and FSDP average over ranks, hence
        # the world size).
        count = all_reduce_count(n_real, self.dist)
        scale = self.dist.world_size / (
            max(count, 1) if isinstance(count, int) else count.clamp(min=1)
        )
        loss_sum = correct = None  # device tensors; no fill kernels for the common accum == 1
        for micro, batch in enumerate(micro_batches):
            with self._grad_sync(micro == accum - 1):
                if self.cudagraphs:
                    torch.compiler.cudagraph_mark_step_begin()
                with phase("forward"), self.autocast():
                    loss, n_correct = self.model(
                        batch.input_ids, batch.targets, batch.attention_mask, accuracy
                    )
                if not accuracy:  # a loss may count anyway (see ops/losses.py)
                    n_correct = None
                if self.cudagraphs:  # the next replay overwrites the graph's outputs
                    loss = loss.clone()
                    n_correct = None if n_correct is None else n_correct.clone()
                with phase("backward"):
                    self.scaler.scale(loss * scale).backward()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            if n_correct is not None:
                correct = n_correct if correct is None else correct + n_correct
        with phase("optimizer"):
            max_norm = self.cfg.training.max_grad_norm
            if max_norm > 0 and self.clip_in_step:
                clip_in_step(self.optimizer, self.params, max_norm)
            else:
                if max_norm > 0:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.params, max_norm)
                self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
        return loss_sum, correct

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

    def fit(self, checkpoints: Checkpoints | None = None) -> TrainState:
        """Train up to training.max_steps from the state's step (0, or a restored checkpoint's)."""
        st, max_steps = self.state, self.cfg.training.max_steps
        self.checkpoints = checkpoints
        batches = self.batches(st.step)
        self.model.train()
        meter = LossMeter(self.device)
        interval = getattr(checkpoints, "interval", 0) or 0
        progress = self.out.progress_bar(max_steps, initial=st.step)
        t_start = time.perf_counter()
        while st.step < max_steps:
            # Accuracy on the steps that end at a log point (a checkpoint step is one).
            nxt = st.step + 1
            self._step(batches, meter, self._log_due(nxt) or (interval and nxt % interval == 0))
            if st.step == 1:
                st.compile_time_s = time.perf_counter() - t_start
            ckpt = checkpoints is not None and checkpoints.due(st.step)
            # A checkpoint step is always a log point, so the details CSVs cover each step once.
            if self._log_due(st.step) or ckpt:
                # Reading the meter waits for the steps still queued on the device (a host
                # ahead of the GPU, as under CUDA graphs, queues many): training time too.
                taken = meter.take(self.dist)
                st.train_time_s += time.perf_counter() - t_start
                self._log_point(taken, progress)
                if self._eval_due(st.step):
                    self.evaluate()
                if ckpt:
                    checkpoints.save(st.step)  # raises Preempted after a SIGTERM
                t_start = time.perf_counter()  # evaluation and saving are not training time
            elif progress is not None:
                progress.update(1)
        if progress is not None:
            progress.close()
        return st

    def _step(self, batches, meter: LossMeter, accuracy: bool) -> None:
        """One timed optimizer step, its loss and counts added to `meter` on the device."""
        st = self.state
        real_before = st.real_tokens
        self.instruments.step_begin(st.step)
        self.timer.start()
        loss, correct = self.train_step(batches, accuracy)
        self.timer.stop()
        st.step += 1
        self.instruments.step_end(st.step)
        meter.add(loss, correct, st.real_tokens - real_before)
        if st.step == 1:
            self.timer.collect()  # the first step's wall time holds the compilation

    def _log_due(self, step: int) -> bool:
        return step % self.cfg.logging.logging_steps == 0 or step == self.cfg.training.max_steps

    def _eval_due(self, step: int) -> bool:
        # Not after the last step: the caller evaluates the final model once, for the row.
        every = self.cfg.logging.eval_interval
        return bool(every) and step % every == 0 and step < self.cfg.training.max_steps

    def _log_point(self, taken: tuple[float, float, int, int], progress) -> None:
        """Log the steps since the last point; `taken` is LossMeter.take's reading of them."""
        st, cfg = self.state, self.cfg
        loss, accuracy, n_steps, real_total = taken
        step_ms = self.timer.collect()
        self.instruments.collect()
        self._check_divergence(loss)
        recent = step_ms[-n_steps:]
        step_time = sum(recent) / len(recent)
        point = {
            "step": st.step,
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "accuracy": accuracy,
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
        if self.dist.is_main:
            # The log file always has the step line; the console has it only without the bar.
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
                extra={CONSOLE: progress is None},
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

    def test_row(self) -> dict:
        """The test split's columns (test_loss, test_ppl, ...), evaluated once, over the whole
        split (eval_max_batches does not apply: the figure is the one to report); {} when the
        data has no test split."""
        if not self.data.has_test:
            return {}
        loss, ppl, acc, n = self._eval_pass("test", max_batches=0, what="the test split")
        if self.dist.is_main:
            log.info("test: loss %.4f ppl %.2f acc %.3f over %d tokens", loss, ppl, acc, n)
        row = {"test_loss": loss, "test_ppl": ppl, "test_accuracy": acc, "test_tokens": n}
        self.out.log_test(self.state.step, row)
        return row

    @torch.no_grad()
    def _eval_pass(
        self, split: str, max_batches: int, what: str = "evaluation"
    ) -> tuple[float, float, float, int]:
        """(loss, perplexity, accuracy, tokens) per token over `split`, all ranks together. A
        stop request (SIGTERM) is honoured at the next batch: an evaluation can take minutes."""
        cfg, ins = self.cfg, self.instruments
        t0 = time.perf_counter()
        phase, ins.state_phase = ins.state_phase, "eval"
        self.model.eval()
        # Compiled, a no-grad forward is a graph of its own, compiled at the first evaluation
        # (seconds); eagerly, the same weights compile nothing (logging.eval_compiled).
        eager = not (cfg.system.compile and cfg.logging.eval_compiled)
        stance = torch.compiler.set_stance("force_eager") if eager else contextlib.nullcontext()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        n_tokens = 0
        for batch in self.data.eval_batches(
            split,
            cfg.training.batch_size,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            max_batches=max_batches,
        ):
            if self.checkpoints is not None:
                self.checkpoints.poll(self.state.step, what)
            batch = batch.to(self.device)
            with self.autocast(), stance:
                loss, n_correct = self.model(
                    batch.input_ids, batch.targets, batch.attention_mask, accuracy=True
                )
            loss_sum += loss.double()
            correct += n_correct
            n_tokens += batch.n_real_tokens
        total_loss, total_correct, total_tokens = all_reduce_sum(
            [*torch.stack([loss_sum, correct.double()]).tolist(), float(n_tokens)], self.dist
        )
        self.model.train()
        ins.state_phase = phase
        self.state.eval_time_s += time.perf_counter() - t0  # .tolist() above waited for it
        loss = total_loss / max(total_tokens, 1)
        ppl = math.exp(min(loss, 50.0))
        return loss, ppl, total_correct / max(total_tokens, 1), int(total_tokens)

    def evaluate(self) -> dict:
        """Loss, perplexity and accuracy averaged per token over the whole validation split."""
        st = self.state
        eval_loss, ppl, acc, total_tokens = self._eval_pass(
            "val", self.cfg.logging.eval_max_batches
        )
        point = {
            "step": st.step,
            "tokens_seen": st.real_tokens * self.dist.world_size,
            "elapsed_sec": st.train_time_s,
            "eval_loss": eval_loss,
            "eval_perplexity": ppl,
            "eval_accuracy": acc,
            "eval_tokens": total_tokens,
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
        summary = steady_noise(steady, cfg.logging.run_name, say=self.dist.is_main)
        p50 = summary.p50
        tokens_per_step_real = st.real_tokens / max(st.step, 1)  # this rank
        tokens_per_step_proc = st.processed_tokens / max(st.step, 1)
        world = self.dist.world_size
        per_gpu = tokens_per_step_real / (p50 / 1e3) if steady else float("nan")
        return {
            "step_time_p50_ms": p50,
            "step_time_p90_ms": summary.p90,
            **summary.row(),
            "steady_tokens_per_sec_per_gpu": per_gpu,
            "steady_tokens_per_sec": per_gpu * world,
            "processed_tokens_per_sec": tokens_per_step_proc / (p50 / 1e3) * world,
            # The first step's wall time holds the compilation; one steady step of it is work.
            "compile_time_sec": max(0.0, st.compile_time_s - p50 / 1e3)
            if cfg.system.compile
            else 0.0,
            "steady_steps": len(steady),
        }


def _optimizer_bytes(optimizer: torch.optim.Optimizer, cfg: RunConfig, in_step: bool) -> float:
    """This rank's AdamW traffic a step (a DTensor parameter counts its local shard)."""
    from lmprof.ops.catalog import AdamW

    params = [p for group in optimizer.param_groups for p in group["params"]]
    n = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in params)
    return AdamW.bytes_per_step(n, clipping=cfg.training.max_grad_norm > 0, in_step=in_step)


def _compile(model: nn.Module, system) -> nn.Module:
    """torch.compile of the whole model in system.compile_mode; the region scope also has the
    model run its blocks as one nested compile region."""
    model.compile_region = system.compile_scope == "region"
    return torch.compile(model, **_compile_args(system))


def _compile_args(system) -> dict[str, Any]:
    """torch.compile's arguments for system.compile_mode. The region scope also turns off
    inductor's buffer reuse: with it, the region's code called again for the next layer can
    overwrite a buffer an earlier layer's backward still reads, and the gradients come out
    wrong (torch 2.13 on a CPU; test_train pins it)."""
    if system.compile_scope != "region":
        return {"mode": None if system.compile_mode == "default" else system.compile_mode}
    from torch._inductor import list_mode_options

    return {"options": {**list_mode_options(system.compile_mode), "allow_buffer_reuse": False}}
