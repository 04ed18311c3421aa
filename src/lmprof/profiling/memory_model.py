"""An analytic model of the peak GPU memory of one lmprof training step.

`estimate_memory(cfg, vocab_size)` predicts what `torch.cuda.max_memory_allocated()` reads after
a run of lmprof's training loop (train/loop.py: forward under autocast, scaled backward, clip,
fused AdamW step, `zero_grad(set_to_none=True)`, the next batch prefetched), and, separately,
what the caching allocator reserves and what NVML shows. Nothing is run: the model is derived
from what model.py's modules save for backward, tensor by tensor (`block_tensors`), and from the
order in which a step allocates and frees them (`step_phases`). The peak is the largest of:

- forward, at the loss: every block's saved tensors, autocast's weight copies and, inside the
  fused LM head + cross-entropy, one block of logits (all tokens unless `loss_chunk_size`), which
  the op overwrites with their gradient before computing dh and dW from it;
- backward, at the loss: every block's saved tensors, the saved dh and dW and their scaled
  copies;
- backward, at the top block and at the bottom block (live memory is linear in the block index
  in between): the blocks below still saved, the gradients already made, the block's own
  recomputation under checkpointing and the short-lived gradient buffers of its backward;
- backward, at the embedding (tied weights: the embedding's gradient is a second V x d fp32
  buffer until it is added into the LM head's), the optimizer step (all gradients) and the
  evaluation at the end of a run.

Parameters, gradients and AdamW's two states are fp32 (there is no separate master copy: the
fp32 parameters are it); autocast makes bf16/fp16 copies of the matmul weights, cached for the
forward and kept by the matmuls that saved them until their backward.

What a block saves (model.py, per block, N = B*T tokens, e = 2 under bf16/fp16 autocast else 4;
the residual stream and LayerNorm outputs stay fp32 under autocast because the parameters are
fp32 and LayerNorm autocasts to fp32):
- both LayerNorms save their fp32 input (N*d*4) and mean/rstd; the qkv and MLP-up projections
  save their input (autocast: a new e-byte copy; fp32: the LayerNorm output/block input itself);
- vanilla attention saves contiguous copies of q, k, v (the head split makes them strided), the
  softmax output (B*H*T*T*e), with dropout the mask and the dropped probabilities, and a
  contiguous copy of the attention output for the out-projection (the causal mask is a bias of
  the baddbmm, not saved; a batch with padding saves its (B, 1, T, T) mask instead);
- fused SDPA (flash, memory-efficient, cuDNN) and FA4 save the qkv projection's output (q, k, v are
  views of it), its output (the out-projection's input: same storage) and an fp32 logsumexp;
  no T x T tensor and no dropout mask (the kernel replays its RNG);
- the MLP saves the activation's input (GELU only) and output; each dropout with p > 0 saves a
  mask (1 byte per element on CUDA, the tensor's dtype on the CPU);
- autocast's weight copies (e bytes per matmul weight) are saved by the matmuls that use them.
Full checkpointing keeps each block's input (fp32) and rebuilds one block's tensors during its
backward; selective checkpointing (model.py's policy) also keeps the outputs of mm/addmm/bmm and
the CUDA SDPA kernels and rebuilds the rest. The loss (ops/cross_entropy.py): the logits of a
block of tokens, (B*T or loss_chunk_size) x V_padded in the autocast dtype, live only inside the
op; it keeps dh (B*T x d) and dW (V x d), and over several blocks sums dW in fp32.

Checked against PyTorch: on the CPU, tests/test_profiling.py counts the saved tensors
(saved_tensors_hooks) and every live storage (a dispatch mode) of real steps; on an NVIDIA H200
(torch 2.11, CUDA 13), `python benchmarks/memory_calibration.py` ran 46 GPT-2-small configurations
(T 128..2048, B 4..32, the seed's sdpa_mask in fp16, vanilla in fp16/fp32, bf16 flash/sdpa,
checkpointing, loss in blocks): every max_memory_allocated was within 1.3% of the prediction. The constants below were fitted there;
everything else is counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lmprof.attention_kernels import kernel as attention_kernel
from lmprof.attention_kernels import resolve as resolve_attention
from lmprof.model_args import ModelArgs
from lmprof.precision import PRECISIONS
from lmprof.profiling.flops import (
    SAC_SAVES_BADDBMM,
    FlopCount,
    count_params,
    flops_per_token,
)
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


def _bytes(precision: str) -> int:
    """Bytes per activation element: the autocast dtype's, else fp32's."""
    return PRECISIONS[precision].bytes


def _autocast(precision: str) -> bool:
    return PRECISIONS[precision].autocast is not None


@dataclass(frozen=True)
class Tensor:
    """One tensor a block (or the embedding/head) creates in its forward."""

    name: str
    nbytes: int
    saved: bool  # saved for backward without checkpointing
    cached: bool = False  # kept by selective checkpointing (an mm/addmm/bmm/SDPA output)
    kind: str = "act"  # act | weights (autocast's copies of the weights)


# What the memory model needs of a run: the model's own hyper-parameters (torch-free).
Shape = ModelArgs


def _attention_path(attention: str, dropout: float, device: str) -> str:
    """vanilla | fused | math: which code saves the attention's tensors."""
    if attention_kernel(attention).materialises_scores:
        return "vanilla"
    # On the CPU, SDPA with dropout takes the math path (explicit bmm, in fp32 under autocast);
    # without dropout the CPU flash kernel, which saves what the CUDA kernels save.
    if device == "cpu" and dropout > 0:
        return "math"
    return "fused"


def block_tensors(
    s: Shape, B: int, T: int, precision: str, device: str = "cuda", padded: bool = False
) -> list[Tensor]:
    """The tensors one block makes in its forward, with what is saved and what SAC keeps."""
    N, d, f, H = B * T, s.d_model, s.d_ff, s.n_heads
    e = _bytes(precision)
    autocast = _autocast(precision)
    p = s.dropout
    cuda = device != "cpu"
    path = _attention_path(s.attention, p, device)
    e_att = 4 if path == "math" else e
    BHTT = B * H * T * T
    Nd, Nf = N * d, N * f
    out: list[Tensor] = []

    def add(name: str, nbytes: int, saved: bool, cached: bool = False, kind: str = "act"):
        out.append(Tensor(name, int(nbytes), saved, cached, kind))

    def mask(name: str, numel: int, dtype_bytes: int) -> None:
        if p > 0:
            add(name, numel * (1 if cuda else dtype_bytes), True)

    pre = s.norm == "pre"
    stats = 2 * N * 4  # LayerNorm's mean and rstd, fp32
    # The block input (fp32): LayerNorm's input in pre-norm, the qkv input in fp32 post-norm.
    add("x_in", Nd * 4, saved=pre or not autocast)
    if pre:
        add("ln1_stats", stats, True)
        add("ln1_out", Nd * 4, saved=not autocast)
    if autocast:
        add("qkv_in", Nd * e, True)
    add("qkv_out", 3 * Nd * e, saved=path == "fused", cached=True)
    if path in ("vanilla", "math"):
        for name in ("q", "k", "v"):
            add(name, Nd * e_att, True)  # contiguous copies made by matmul's reshape
        # vanilla without padding: baddbmm(causal bias, q, k^T), which model.py's SAC policy
        # does not keep; with padding (and the CPU math path) a bmm, which it keeps.
        scores_cached = path == "math" or padded or SAC_SAVES_BADDBMM
        add("scores", BHTT * e_att, False, cached=scores_cached)
        add("probs", BHTT * e_att, True)
        if p > 0:
            mask("probs_mask", BHTT, e_att)
            add("probs_dropped", BHTT * e_att, True)
        if path == "vanilla" and padded:
            add("padding_mask", B * T * T, True)  # masked_fill_ saves its (B,1,T,T) mask
        add("av_out", Nd * e_att, False, cached=True)
        add("proj_in", Nd * (e if autocast else e_att), True)  # contiguous copy (or cast)
    else:
        in_policy = cuda  # the CPU flash kernel is not in model.py's save list
        add("attn_out", Nd * e, True, cached=in_policy)  # also the out-projection's input
        # auto as the kernel it becomes here (fa4 or cudnn count the same: FA4's availability,
        # which this torch-free model cannot see, changes nothing).
        kernel = attention_kernel(
            resolve_attention(
                s.attention,
                device="cuda" if cuda else "cpu",
                precision=precision,
                seq_len=T,
                dropout=p,
            )
        )
        # The memory-efficient kernel pads its logsumexp to 32 rows.
        efficient = kernel.runs_as == "mem_efficient"
        t_lse = math.ceil(T / 32) * 32 if efficient else T
        add("lse", B * H * t_lse * 4, True, cached=in_policy)
        if padded and kernel.mask != "never":
            add("attn_bias", B * T * T * e, True)
        elif kernel.mask == "always" and cuda:
            add("attn_bias", T * T * e, True)  # the causal mask as a float bias, per block
    add("proj_out", Nd * e, False, cached=True)
    mask("resid_mask1", Nd, e)
    add("sum1", Nd * 4, True)  # x + attention: LayerNorm input (ln1 post, ln2 pre)
    add("sum1_stats", stats, True)
    add("ln_mid_out", Nd * 4, saved=not autocast)  # the MLP's input LayerNorm output
    if autocast:
        add("fc_in", Nd * e, True)
    gelu = s.activation == "gelu"
    add("fc_out", Nf * e, saved=gelu, cached=True)  # GELU saves its input
    add("act_out", Nf * e, True)  # the down-projection's input (ReLU saves its output: same)
    add("mlp_out", Nd * e, False, cached=True)
    mask("resid_mask2", Nd, e)
    if not pre:
        add("sum2", Nd * 4, True)  # ln2's input
        add("sum2_stats", stats, True)
    if autocast:
        add("weights", (4 * d * d + 2 * d * f) * e, True, kind="weights")
    return out


_AFTER_ATTENTION = ("av_out", "proj_out", "fc_out", "mlp_out")


def _freed_before_attention(tensors: list[Tensor]) -> int:
    """Saved bytes a block's backward has freed by the time it reaches the attention: the MLP's
    and both residual sums' (the LayerNorm on x + attention runs its backward first)."""
    names = {
        "ln_mid_out",
        "fc_in",
        "fc_out",
        "act_out",
        "resid_mask2",
        "sum2",
        "sum2_stats",
        "sum1",
        "sum1_stats",
    }
    return sum(t.nbytes for t in tensors if t.saved and t.name in names)


@dataclass
class _Block:
    retained: int  # alive from its forward until its backward
    retained_weights: int  # of which autocast weight copies
    recompute: int  # extra during its own backward: rebuilt by checkpointing (SAC: may be < 0)
    transient: int  # the largest short-lived extra inside its backward
    grads: int  # its parameters' gradients (fp32)
    weights_cast: int  # autocast's copies of its weights (in autocast's cache during forward)


def _block(s: Shape, B: int, T: int, precision: str, device: str, padded: bool) -> _Block:
    ts = block_tensors(s, B, T, precision, device, padded)
    N, d, f = B * T, s.d_model, s.d_ff
    e = _bytes(precision)
    mode = s.checkpointing
    x_in = next(t for t in ts if t.name == "x_in")
    saved = sum(t.nbytes for t in ts if t.saved)
    weights = sum(t.nbytes for t in ts if t.kind == "weights")
    if mode == "none":
        retained, retained_w, recompute = saved, weights, 0
    else:
        # Kept: the block's input (the checkpoint holds it) and, under SAC, the cached outputs.
        retained, retained_w = x_in.nbytes, 0
        if mode == "selective":
            retained += sum(t.nbytes for t in ts if t.cached)
        # During the block's backward its saved tensors exist again (SAC hands its cached
        # outputs to the recomputed graph and drops those nothing saves), plus the input.
        recompute = x_in.nbytes + saved - (x_in.nbytes if x_in.saved else 0) - retained
    g_mlp = 4 * (2 * d * f + ((f + d) if s.bias else 0))
    g_attn = 4 * (4 * d * d + (4 * d if s.bias else 0))  # qkv and out-projection
    g_norms = 4 * 2 * d * (2 if s.bias else 1)
    grads = g_mlp + g_attn + g_norms
    # Short-lived buffers of the block's backward, on top of what it saved: the residual
    # gradient (fp32, plus its autocast-dtype copy for the branch), then either the MLP's
    # (gradient of the activation and of its input; ReLU saves its output, which is freed only
    # after its own backward; post-norm has freed ln2's input by then) or the attention's, once
    # the MLP's tensors are freed.
    e_res = N * d * 4 + (N * d * e if e == 2 else 0)
    g_down = 4 * (d * f + (d if s.bias else 0))  # the down-projection's gradients, made first
    freed_first = sum(t.nbytes for t in ts if t.name in ("sum2", "sum2_stats"))
    mlp_phase = N * f * e * (2 if s.activation == "relu" else 1) + e_res + g_down - freed_first
    path = _attention_path(s.attention, s.dropout, device)
    g_proj = 4 * (d * d + (d if s.bias else 0))  # the out-projection's gradients
    if path == "fused":
        # the kernel's dq, dk, dv and fp32 dq accumulator; then dq, dk, dv stacked into the
        # gradient of the qkv output
        attn = max(3 * N * d * e + N * d * 4, 6 * N * d * e)
    else:
        # AV's backward: the probabilities' gradient (the out-projection's input is freed by
        # then); without dropout, the softmax's backward then holds the probabilities, their
        # gradient and the scores' gradient (v's copy and the out-projection's input freed).
        e_att = 4 if path == "math" else e
        bhtt = s.n_heads * B * T * T * e_att
        attn = bhtt if s.dropout > 0 else max(bhtt, 2 * bhtt - 2 * N * d * e_att)
    attn_phase = attn + e_res + g_mlp + g_proj - _freed_before_attention(ts)
    transient = max(mlp_phase, attn_phase)
    if mode != "none":
        # The recomputed forward, at the attention's dropout: the raw scores are still alive
        # beside the probabilities, the mask and the dropped probabilities, and nothing after
        # the attention exists yet.
        scores = next((t for t in ts if t.name == "scores"), None)
        if scores is not None and not (mode == "selective" and scores.cached):
            later = _freed_before_attention(ts) + sum(
                t.nbytes for t in ts if t.saved and t.name in ("proj_in", "resid_mask1")
            )
            later += (d * d + 2 * d * f) * e if e == 2 else 0  # weight copies made later
            if mode == "selective":  # SAC still holds the later matmuls' cached outputs
                later -= sum(t.nbytes for t in ts if t.cached and t.name in _AFTER_ATTENTION)
            # v is still a view of the qkv output, whose storage is therefore still alive
            qkv = next(t for t in ts if t.name == "qkv_out")
            transient = max(transient, scores.nbytes + e_res + qkv.nbytes - later)
    return _Block(retained, retained_w, recompute, transient, grads, weights)


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


def _head_tensors(s: Shape, B: int, T: int, precision: str, device: str) -> list[Tensor]:
    """Saved by the embedding, the final norm, the LM head and the loss (not checkpointed)."""
    N, d = B * T, s.d_model
    V = s.padded_vocab_size
    e = _bytes(precision)
    out = []
    if s.pos_encoding == "learned":
        out.append(Tensor("pos_idx", T * 8, True))
    if s.dropout > 0:
        out.append(Tensor("emb_mask", N * d * (1 if device != "cpu" else 4), True))
    if s.norm == "pre":
        out.append(Tensor("lnf_in", N * d * 4, True))
        out.append(Tensor("lnf_stats", 2 * N * 4, True))
    # The fused LM head + cross-entropy (ops/cross_entropy.py) keeps d loss/dh and d loss/dW,
    # computed in its forward, in the autocast dtype; its inputs' casts are not kept.
    out.append(Tensor("head_grad_h", N * d * e, True, kind="loss"))
    out.append(Tensor("head_grad_w", V * d * e, True, kind="loss"))
    return out


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
    N, d, L = B * T, s.d_model, s.n_layers
    V = s.padded_vocab_size
    e = _bytes(precision)
    autocast = _autocast(precision)
    n_params = count_params(s)
    buffers = 0 if s.pos_encoding == "learned" else s.max_seq_len * d * 4
    blk = _block(s, B, T, precision, device, padded)
    head = _head_tensors(s, B, T, precision, device)
    head_act = sum(t.nbytes for t in head if t.kind == "act")
    head_w = sum(t.nbytes for t in head if t.kind == "weights")
    head_loss = sum(t.nbytes for t in head if t.kind == "loss")
    head_in = sum(t.nbytes for t in head if t.name in ("lnf_in", "lnf_stats"))

    shard = world_size if parallelism == "fsdp" and world_size > 1 else 1
    params = n_params * 4 // shard + buffers
    grads_all = n_params * 4 // shard
    static = {
        "parameters": params,
        "optimizer_states": 2 * n_params * 4 // shard,  # AdamW exp_avg, exp_avg_sq (fp32)
        # the step's batch and the next one, prefetched: input ids and targets (int64)
        "batch": 2 * 2 * N * 8 + (2 * N if padded else 0),
        "workspace": (CUBLAS_WORKSPACE_BYTES + ALLOCATOR_SLACK_BYTES) if device != "cpu" else 0,
        "ddp_buckets": n_params * 4 if world_size > 1 and parallelism == "ddp" else 0,
    }
    if shard > 1:  # FSDP all-gathers one block's (and the embedding's) full parameters
        static["parameters"] += (blk.grads + V * d * 4) * 2
    persistent_grads = grads_all if grad_accum > 1 else 0
    head_grads = V * d * 4 // shard  # LM head (tied: the embedding's) gradient, made first
    emb_grad_new = V * d * 4 if s.tie_embeddings else 0  # tied: added into the existing grad

    def grads(made: int) -> int:
        return max(persistent_grads, made)

    blocks_retained = L * blk.retained
    blocks_w = L * blk.retained_weights
    # Autocast's cache holds every weight copy until the forward ends, checkpointed or not.
    cache_extra = (L * blk.weights_cast - blocks_w) if autocast else 0
    # The fused LM head + cross-entropy: the casts of h and W under autocast, d loss/dh, and,
    # inside the op, one block of c tokens' logits (overwritten by their gradient), that block's
    # dW and, over several blocks, dW's fp32 sum.
    c = min(s.loss_chunk_size or N, N)
    casts = (N * d * e + V * d * e) if autocast else 0
    loss_fwd = casts + N * d * e + V * d * e  # the op's outputs: dh, dW
    loss_block = c * V * e + (V * d * 4 if c < N else 0) + 5 * c
    # Backward: the saved dh, dW and their scaled copies; then, the saved pair freed, the copies
    # and dW cast to fp32 for the weight.
    loss_bwd = max(N * d * e + V * d * e, V * d * 4 if autocast else 0)
    loss_eval = casts + c * V * e + 5 * c

    phases: dict[str, dict[str, int]] = {}
    phases["forward: loss"] = {
        **static,
        "gradients": grads(0),
        "activations": blocks_retained - blocks_w,
        "autocast_weights": blocks_w + head_w + cache_extra,
        "embedding_and_head": head_act,
        "logits_and_loss": loss_fwd,
        "transient": loss_block,
    }
    phases["backward: loss"] = {
        **static,
        "gradients": grads(0),
        "activations": blocks_retained - blocks_w,
        "autocast_weights": blocks_w + head_w,
        "embedding_and_head": head_act,
        "logits_and_loss": head_loss + loss_bwd,
    }
    head_left = head_act - head_in  # embedding mask, position ids
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
        "transient": emb_grad_new + 2 * N * d * 4,
    }
    phases["optimizer step"] = {**static, "gradients": grads_all}
    # The evaluation at the end of a run (no_grad, same batch size): no saved activations, no
    # gradients; the loss's buffers and, for vanilla attention, scores beside probabilities.
    path = _attention_path(s.attention, s.dropout, device)
    e_att = 4 if path == "math" else e
    eval_block = 2 * s.n_heads * B * T * T * e_att if path != "fused" else 4 * N * d * e
    phases["evaluation"] = {
        **static,
        "logits_and_loss": max(loss_eval, eval_block) + 2 * N * d * 4,
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
    blk = _block(s, B, T, precision, device, padded)
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


# ---------------------------------------------------------------------------------------------
# Formatting


def _size(n: float) -> str:
    if abs(n) >= GiB:
        return f"{n / GiB:8.2f} GiB"
    return f"{n / MiB:8.1f} MiB"


def _flops(n: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= scale:
            return f"{n / scale:#.3g}".rstrip(".") + f" {unit}"
    return f"{n:#.3g}".rstrip(".") + " FLOP"


_LABELS = {
    "parameters": "parameters (fp32)",
    "gradients": "gradients (fp32)",
    "optimizer_states": "optimizer states (AdamW, 2 x fp32)",
    "autocast_weights": "autocast weight copies",
    "activations": "activations saved by the blocks",
    "recompute": "one block recomputed (checkpointing)",
    "embedding_and_head": "embedding / final norm / head inputs",
    "logits_and_loss": "logits and loss buffers",
    "transient": "short-lived (loss block, backward)",
    "batch": "batches (current + prefetched)",
    "workspace": "cuBLAS workspaces, allocator rounding",
    "ddp_buckets": "DDP gradient buckets",
}


def format_estimate(est: MemoryEstimate) -> str:
    """A readable table: the breakdown at the peak, the other phases, FLOPs per token/step."""
    lines = [
        f"Predicted memory of one training step: B={est.batch_size} T={est.seq_len} "
        f"{est.precision} attention={est.attention} checkpointing={est.checkpointing}"
        + (f" x{est.world_size} {est.parallelism}" if est.world_size > 1 else ""),
        f"parameters: {est.n_params:,} (vocabulary {est.vocab_size} padded to {est.padded_vocab})",
        "",
        f"At the peak ({est.peak_phase}):",
    ]
    for key, value in est.breakdown().items():
        if value:
            lines.append(f"  {_LABELS[key]:<40} {_size(value)}")
    lines.append(f"  {'= predicted max_memory_allocated':<40} {_size(est.predicted_peak_bytes)}")
    reserve = f"caching allocator reserve (x{est.allocator_factor:.2f})"
    lines.append(f"  {reserve:<40} {_size(est.predicted_reserved_bytes)}")
    lines.append(f"  {'CUDA context (NVML only)':<40} {_size(est.cuda_context_bytes)}")
    lines.append(f"  {'= predicted nvidia-smi usage':<40} {_size(est.predicted_device_bytes)}")
    lines.append("")
    lines.append("Other moments of the step:")
    for name, total in est.phases.items():
        if name != est.peak_phase:
            lines.append(f"  {name:<40} {_size(total)}")
    lines.append(f"  {'activations per block':<40} {_size(est.activations_per_layer)}")
    if est.flops is not None:
        f = est.flops
        lines += [
            "",
            f"FLOPs per token: {_flops(f.model_flops_per_token)} model, "
            f"{_flops(f.hardware_flops_per_token)} hardware "
            f"(exact causal attention: {_flops(f.breakdown['model_causal'])})",
            f"FLOPs per step ({est.tokens_per_step:,} tokens): "
            f"{_flops(f.per_step(est.tokens_per_step))} model, "
            f"{_flops(f.hardware_per_step(est.tokens_per_step))} hardware",
            f"convention: {f.convention}",
        ]
    for note in est.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
