"""An analytic model of the peak GPU memory of one lmprof training step.

`estimate_memory(cfg, vocab_size)` predicts what `torch.cuda.max_memory_allocated()` reads after
a run of lmprof's training loop (train/loop.py: forward under autocast, scaled backward, clip,
fused AdamW step, `zero_grad(set_to_none=True)`, the next batch prefetched), and, separately,
what the caching allocator reserves and what NVML shows. Nothing is run. What each op makes and
keeps for the backward, tensor by tensor, is its description's (model_ops.py,
attention_kernels.py, ops/losses.py); this module knows only the order in which a step
allocates and frees them (`step_phases`). The peak is the largest of:

- forward, at the loss: every block's saved tensors, autocast's weight copies and what the loss
  holds inside (the fused LM head + cross-entropy: one block of logits, all tokens unless
  `loss_chunk_size`, which it overwrites with their gradient before computing dh and dW);
- backward, at the loss: every block's saved tensors, what the loss kept and its backward's
  buffers;
- backward, at the top block and at the bottom block (live memory is linear in the block index
  in between): the blocks below still saved, the gradients already made, the block's own
  recomputation under checkpointing and the short-lived gradient buffers of its backward;
- backward, at the embedding (tied weights: the embedding's gradient is a second V x d fp32
  buffer until it is added into the LM head's), the optimizer step (all gradients) and the
  evaluation at the end of a run.

Parameters, gradients and AdamW's two states are fp32 (there is no separate master copy: the
fp32 parameters are it); autocast makes bf16/fp16 copies of the matmul weights, cached for the
forward and kept by the matmuls that saved them until their backward.

Inside a block's backward the candidate moments are the ops with short-lived buffers of their
own (the MLP's activation, the attention): there, the op's buffers, the residual stream's
gradient and the gradients of the matmul weights after it are alive, and the tensors kept by the
ops after its sub-block's residual add are freed (the norms' few-KB gradients are not counted).
Full checkpointing keeps each block's input (the residual stream) and rebuilds one block's tensors during its
backward; selective checkpointing keeps the outputs of the operators in
model_ops.SELECTIVE_SAVES (model.py's policy) and rebuilds the rest; an op whose forward has a
moment of its own (vanilla attention's raw scores beside its probabilities) adds it then.

Checked against PyTorch: on the CPU, tests/test_profiling.py counts the saved tensors
(saved_tensors_hooks) and every live storage (a dispatch mode) of real steps; on an NVIDIA H200
(torch 2.11, CUDA 13), `python benchmarks/memory_calibration.py` ran 46 GPT-2-small configurations
(T 128..2048, B 4..32, the seed's sdpa_mask in fp16, vanilla in fp16/fp32, bf16 flash/sdpa,
checkpointing, loss in blocks): every max_memory_allocated was within 1.3% of the prediction.
The constants below were fitted there; everything else is counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmprof.model_args import ModelArgs
from lmprof.model_ops import (
    Residual,
    block_ops,
    count_params,
    embedding_ops,
    head_ops,
    selective_keeps,
)
from lmprof.ops.spec import Ran, Site, Tensor, run
from lmprof.profiling.flops import FlopCount, flops_per_token
from lmprof.results import ColumnGroup

MiB = 1024**2
GiB = 1024**3

# cuBLAS/cuBLASLt workspaces come from PyTorch's caching allocator (counted by
# max_memory_allocated): on Hopper 32 MiB per (handle, stream), one for the forward thread and
# one for the autograd engine's device thread. Measured on an H200: 64-70 MiB stay allocated
# after the first step beyond parameters, optimizer states and batches.
CUBLAS_WORKSPACE_BYTES = 64 * MiB
# The caching allocator hands out a cached block whole when the rest would be under 1 MiB, and
# rounds every request up to 512 bytes, so max_memory_allocated reads a little above the bytes
# counted here. Fitted on 38 H200 runs (GPT-2 small, T 128..2048, B 4..32, fp16/fp32/bf16,
# vanilla/flash/sdpa, checkpointing, chunked loss): measured - counted was 3 to 48 MiB, median
# 19 MiB.
ALLOCATOR_SLACK_BYTES = 16 * MiB
# max_memory_reserved / max_memory_allocated over the same runs: median 1.058, range 1.01 to
# 1.21 (fragmentation and the allocator's 2 MiB / 20 MiB segment sizes).
ALLOCATOR_FACTOR = 1.06
# The CUDA context (module images, cuBLAS/cuDNN handles) is not PyTorch's allocation: NVML
# (nvidia-smi) shows it, max_memory_allocated does not. Measured on the H200 (torch 2.11, CUDA
# 13.0, driver 580) as NVML's used bytes minus memory_reserved(): 1366 to 1390 MiB. It differs
# by GPU, driver and CUDA version (typically 0.3 to 1.5 GiB).
CUDA_CONTEXT_BYTES = 1370 * MiB


PREDICTION_COLUMNS = ColumnGroup(
    "prediction",
    "the memory model's predicted peak and the phase it falls in, before the run starts",
    ("predicted_peak_mem_gb", "predicted_peak_phase"),
)


# What the memory model needs of a run: the model's own hyper-parameters (torch-free).
Shape = ModelArgs


@dataclass
class _Block:
    retained: int  # alive from its forward until its backward
    retained_weights: int  # of which autocast weight copies
    recompute: int  # extra during its own backward: rebuilt by checkpointing (SAC: may be < 0)
    transient: int  # the largest short-lived extra inside its backward
    grads: int  # its parameters' gradients (fp32)
    weights_cast: int  # autocast's copies of its weights (in autocast's cache during forward)
    evaluation: int  # the largest short-lived bytes of its forward under no_grad


def _block(s: Shape, site: Site) -> _Block:
    x_in = Tensor("x_in", site.N * site.d * site.stream, site.stream)  # the block's input
    ran = run(block_ops(s), site, x_in)
    ts = [x_in, *(t for r in ran for t in r.cost.tensors)]
    mode = s.checkpointing
    saved = sum(t.nbytes for t in ts if t.saved)
    weights = sum(t.nbytes for t in ts if t.kind == "weights")
    if mode == "none":
        retained, retained_w, recompute = saved, weights, 0
    else:
        # Kept: the block's input (the checkpoint holds it) and, under SAC, the kept outputs.
        retained, retained_w = x_in.nbytes, 0
        if mode == "selective":
            retained += sum(t.nbytes for t in ts if selective_keeps(t))
        # During the block's backward its saved tensors exist again (SAC hands its kept
        # outputs to the recomputed graph and drops those nothing saves), plus the input.
        recompute = x_in.nbytes + saved - (x_in.nbytes if x_in.saved else 0) - retained
    stream = next(r.op for r in ran if isinstance(r.op, Residual)).stream_gradient(site)
    moments = [_backward_moment(s, ran, i, stream) for i in range(len(ran))]
    if mode != "none":
        moments += [_recomputed_moment(ran, i, stream, mode) for i in range(len(ran))]
    transient = max(m for m in moments if m is not None)
    grads = sum(4 * r.op.params(s) for r in ran)
    evaluation = max(r.cost.eval_transient for r in ran)
    return _Block(retained, retained_w, recompute, transient, grads, weights, evaluation)


def _backward_moment(s: Shape, ran: list[Ran], i: int, stream: int) -> int | None:
    """Live bytes beyond the saved ones at op i's backward, when it has buffers of its own: those
    buffers, the stream's gradient and the gradients of the matmul weights after it, less what
    the ops after its sub-block's residual add kept (freed by then)."""
    c = ran[i].cost
    if not c.backward_transient:
        return None
    close = next(j for j in range(i, len(ran)) if isinstance(ran[j].op, Residual))
    made = sum(4 * r.op.params(s) for r in ran[i + 1 :] if r.op.group == "matmul")
    freed = sum(
        t.nbytes
        for r in ran
        for t in r.cost.tensors
        if t.saved and t.kind == "act" and t.kept_from is not None and t.kept_from > close
    )
    return c.backward_transient + stream + made - freed


def _recomputed_moment(ran: list[Ran], i: int, stream: int, mode: str) -> int | None:
    """Op i's own forward moment as checkpointing re-runs it: what is alive there though nothing
    saves it, and the stream's gradient, less what the recomputation has not made yet (under
    SAC: less what it hands over instead of making)."""
    c = ran[i].cost
    if c.peak is None:
        return None
    if mode == "selective" and all(selective_keeps(t) for t in c.alive_at_peak):
        return None  # the moment's tensors are handed over, not made again
    after = [*c.tensors[c.peak :], *(t for r in ran[i + 1 :] for t in r.cost.tensors)]
    later = sum(t.nbytes for t in after if t.saved)
    if mode == "selective":
        later -= sum(t.nbytes for t in after if selective_keeps(t))
    return sum(t.nbytes for t in c.alive_at_peak) + stream - later


@dataclass
class MemoryEstimate:
    """Predicted memory of one training step, in bytes. `breakdown()` is the composition at the
    peak; `phases` the total at each candidate moment."""

    batch_size: int
    seq_len: int
    precision: str
    attention: str
    checkpointing: str
    world_size: int
    parallelism: str
    device: str
    n_params: int
    vocab_size: int
    padded_vocab: int
    parameters: int = 0
    gradients: int = 0
    optimizer_states: int = 0
    autocast_weights: int = 0
    activations: int = 0
    recompute: int = 0
    embedding_and_head: int = 0
    logits_and_loss: int = 0
    transient: int = 0
    batch: int = 0
    workspace: int = 0
    ddp_buckets: int = 0
    activations_per_layer: int = 0
    saved_after_forward: int = 0  # what the forward leaves saved for backward, all of it
    predicted_peak_bytes: int = 0
    peak_phase: str = ""
    phases: dict[str, int] = field(default_factory=dict)
    allocator_factor: float = ALLOCATOR_FACTOR
    predicted_reserved_bytes: int = 0
    cuda_context_bytes: int = CUDA_CONTEXT_BYTES
    predicted_device_bytes: int = 0
    flops: FlopCount | None = None
    tokens_per_step: int = 0
    notes: list[str] = field(default_factory=list)

    COMPONENTS = (
        "parameters",
        "gradients",
        "optimizer_states",
        "autocast_weights",
        "activations",
        "recompute",
        "embedding_and_head",
        "logits_and_loss",
        "transient",
        "batch",
        "workspace",
        "ddp_buckets",
    )

    def breakdown(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.COMPONENTS}


def step_phases(
    s: Shape,
    B: int,
    T: int,
    precision: str,
    *,
    device: str = "cuda",
    padded: bool = False,
    grad_accum: int = 1,
    world_size: int = 1,
    parallelism: str = "ddp",
) -> tuple[dict[str, dict[str, int]], int]:
    """Live bytes by component at each candidate peak of a training step, and the bytes the
    forward leaves saved for backward (everything it allocates that is still alive when it
    returns: blocks, embedding, head, loss)."""
    site = Site(s, B, T, precision, device, padded)
    N, d, L, V = site.N, site.d, s.n_layers, site.vocab
    n_params = count_params(s)
    blk = _block(s, site)
    # Before the blocks: the embedding and its dropout; after them: the final norm and the loss,
    # reading the last block's output.
    before = run(embedding_ops(s), site, None)
    h = Tensor("blocks_out", N * d * site.stream, site.stream)
    after = run(head_ops(s), site, h)
    loss = after[-1]
    head = [h, *(t for r in before + after for t in r.cost.tensors)]
    head_act = sum(t.nbytes for t in head if t.saved and t.kind == "act")
    head_w = sum(t.nbytes for t in head if t.saved and t.kind == "weights")
    head_loss = sum(t.nbytes for t in head if t.saved and t.kind == "loss")
    # What the embedding keeps (the final norm's tensors are freed when the blocks' backward
    # starts)
    head_left = sum(t.nbytes for r in before for t in r.cost.tensors if t.saved)
    buffers = sum(r.op.buffers(s) for r in before)

    shard = world_size if parallelism == "fsdp" and world_size > 1 else 1
    params = n_params * 4 // shard + buffers
    grads_all = n_params * 4 // shard
    static = {
        "parameters": params,
        "optimizer_states": 2 * n_params * 4 // shard,  # AdamW exp_avg, exp_avg_sq (fp32)
        # the step's batch and the next one, prefetched: input ids and targets (int64)
        "batch": 2 * 2 * N * 8 + (2 * N if padded else 0),
        "workspace": (CUBLAS_WORKSPACE_BYTES + ALLOCATOR_SLACK_BYTES) if site.cuda else 0,
        "ddp_buckets": n_params * 4 if world_size > 1 and parallelism == "ddp" else 0,
    }
    if shard > 1:  # FSDP all-gathers one block's (and the embedding's) full parameters
        static["parameters"] += (blk.grads + V * d * 4) * 2
    persistent_grads = grads_all if grad_accum > 1 else 0
    head_grads = loss.op.head_gradient_bytes(site) // shard  # made first in the backward

    def grads(made: int) -> int:
        return max(persistent_grads, made)

    blocks_retained = L * blk.retained
    blocks_w = L * blk.retained_weights
    # Autocast's cache holds every weight copy until the forward ends, checkpointed or not.
    cache_extra = (L * blk.weights_cast - blocks_w) if site.autocast else 0

    phases: dict[str, dict[str, int]] = {}
    phases["forward: loss"] = {
        **static,
        "gradients": grads(0),
        "activations": blocks_retained - blocks_w,
        "autocast_weights": blocks_w + head_w + cache_extra,
        "embedding_and_head": head_act,
        "logits_and_loss": head_loss + loss.cost.forward_live,
        "transient": loss.cost.forward_transient,
    }
    phases["backward: loss"] = {
        **static,
        "gradients": grads(0),
        "activations": blocks_retained - blocks_w,
        "autocast_weights": blocks_w + head_w,
        "embedding_and_head": head_act,
        "logits_and_loss": head_loss + loss.cost.backward_transient,
    }
    for name, below, made in (
        ("backward: top block", L - 1, head_grads),
        ("backward: bottom block", 0, head_grads + (L - 1) * blk.grads),
    ):
        phases[name] = {
            **static,
            "gradients": grads(made),
            "activations": (below + 1) * blk.retained - (below + 1) * blk.retained_weights,
            "autocast_weights": (below + 1) * blk.retained_weights,
            "recompute": blk.recompute,
            "embedding_and_head": head_left,
            "transient": blk.transient,
        }
    phases["backward: embedding"] = {
        **static,
        "gradients": grads_all,
        "transient": sum(r.cost.backward_transient for r in before),
    }
    phases["optimizer step"] = {**static, "gradients": grads_all}
    # The evaluation at the end of a run (no_grad, same batch size): no saved activations, no
    # gradients; the loss's buffers or a block's largest (vanilla: scores beside probabilities).
    phases["evaluation"] = {
        **static,
        "logits_and_loss": max(loss.cost.eval_transient, blk.evaluation) + 2 * N * d * 4,
    }
    return phases, blocks_retained + head_act + head_w + head_loss


def estimate_memory(
    cfg: Any,
    vocab_size: int,
    world_size: int = 1,
    *,
    device: str = "cuda",
    padded: bool | None = None,
) -> MemoryEstimate:
    """Predicted peak memory of a training step of `cfg` (a RunConfig) with `vocab_size` ids.

    `predicted_peak_bytes` is what torch.cuda.max_memory_allocated() reads on one process;
    `predicted_reserved_bytes` the caching allocator's reservation; `predicted_device_bytes`
    what NVML (nvidia-smi) shows: reserved plus the CUDA context.
    """
    s = Shape.from_config(cfg, vocab_size)
    B, T = cfg.training.batch_size, cfg.seq_len
    precision = cfg.system.precision
    if padded is None:
        padded = cfg.data.batching == "padded"
    parallelism = cfg.system.parallelism if world_size > 1 else "none"
    phases, saved = step_phases(
        s,
        B,
        T,
        precision,
        device=device,
        padded=padded,
        grad_accum=cfg.training.grad_accum_steps,
        world_size=world_size,
        parallelism=parallelism,
    )
    totals = {name: sum(parts.values()) for name, parts in phases.items()}
    peak_phase = max(totals, key=lambda k: totals[k])
    est = MemoryEstimate(
        batch_size=B,
        seq_len=T,
        precision=precision,
        attention=s.attention,
        checkpointing=s.checkpointing,
        world_size=world_size,
        parallelism=parallelism,
        device=device,
        n_params=count_params(s),
        vocab_size=vocab_size,
        padded_vocab=s.padded_vocab_size,
    )
    for key, value in phases[peak_phase].items():
        setattr(est, key, value)
    blk = _block(s, Site(s, B, T, precision, device, padded))
    est.activations_per_layer = blk.retained
    est.peak_phase = peak_phase
    est.phases = totals
    est.saved_after_forward = saved
    est.predicted_peak_bytes = totals[peak_phase]
    est.predicted_reserved_bytes = int(est.predicted_peak_bytes * ALLOCATOR_FACTOR)
    est.predicted_device_bytes = est.predicted_reserved_bytes + CUDA_CONTEXT_BYTES
    est.flops = flops_per_token(s, T, device=device, padded=padded)
    est.tokens_per_step = B * T * cfg.training.grad_accum_steps
    if padded:
        est.notes.append("padded batching: counts the attention masks of a batch with padding")
    if parallelism == "fsdp":
        est.notes.append("FSDP: sharded states plus one gathered block; approximate")
    if cfg.system.compile:
        est.notes.append(
            "torch.compile is not modelled: its partitioner usually saves less "
            "(recomputes pointwise ops), so the activations are an upper bound"
        )
    if cfg.system.device == "cpu" and device != "cpu":
        est.notes.append("system.device=cpu, but this predicts a CUDA GPU's allocator")
    return est
