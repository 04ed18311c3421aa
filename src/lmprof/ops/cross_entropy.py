"""The LM head and the next-token cross-entropy, fused: fp32 math, one (tokens x vocab) buffer.

`F.cross_entropy(lm_head(h).float(), targets)` writes an fp32 copy of the logits, saves an fp32
log-softmax for the backward and makes fp32 and bf16 gradients of that size there: for GPT-2
small at batch 16, several 1.6-3.3 GB buffers and about 10 ms of memory traffic per eager step.
Here the forward already computes the gradients. For each block of `chunk_size` tokens:

    logits = h_c @ W^T                       (cuBLAS, in the autocast dtype)
    in place: logits <- softmax(logits) - onehot(targets), per row, with the row's loss,
              log-sum-exp and whether its argmax is the target (fp32 arithmetic, one kernel)
    dh_c = logits @ W;   dW += logits^T @ h_c

and the backward only scales dh and dW by the incoming gradient. The matmul FLOPs are those of
the plain forward and backward; the only large buffer is one block of logits (all tokens when
chunk_size is 0), and the log-softmax never leaves registers. In evaluation (no gradient
needed) the in-place step and the two gradient matmuls are skipped.

On CUDA the per-row step is a Triton kernel; elsewhere (or without Triton) the same arithmetic in
PyTorch. The whole op is a custom operator: torch.compile calls it as it is, and
FlopCounterMode counts its matmuls through the formula registered below.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import register_flop_formula

from lmprof.ops import IGNORE_INDEX
from lmprof.ops.losses import LossOutput

__all__ = ["IGNORE_INDEX", "FusedLinearCrossEntropy", "linear_cross_entropy"]

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU wheels of torch come without Triton
    triton = None


def linear_cross_entropy_sum(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed cross-entropy of `h @ weight.T` over targets != IGNORE_INDEX (fp32) and how
    many of them the argmax got right (int64); see `linear_cross_entropy` for the arguments."""
    if torch.is_autocast_enabled(h.device.type):
        dtype = torch.get_autocast_dtype(h.device.type)
        h, weight = h.to(dtype), weight.to(dtype)
    else:
        weight = weight.to(h.dtype)
    need_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    loss_sum, n_correct, _, _ = torch.ops.lmprof.linear_cross_entropy(
        h, weight, targets, chunk_size, need_grad
    )
    return loss_sum, n_correct


def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of `h @ weight.T` over targets != IGNORE_INDEX, and how many of them
    the argmax got right (device tensors: nothing waits for the GPU). The model calls the SUM
    (`FusedLinearCrossEntropy`) and divides by the real-token count the host knows.

    h: (N, d); weight: (V, d); targets: (N,) int64; chunk_size: tokens per block, 0 for all.
    Under autocast, h and weight are cast to the autocast dtype, as a Linear would be.
    """
    loss_sum, n_correct = linear_cross_entropy_sum(h, weight, targets, chunk_size)
    return loss_sum / (targets != IGNORE_INDEX).sum().clamp(min=1), n_correct


class FusedLinearCrossEntropy:
    """`model.loss=fused` (described in ops/losses.py): the summed loss over real targets and
    the number right. The row kernel finds each row's maximum for the softmax anyway, so the
    argmax costs no pass of its own, and the count is returned whether asked or not: a bool
    that decided it would make torch.compile build a second graph for the logging steps,
    seconds of compilation for a sum the caller may drop."""

    def __init__(self, args: Any = None):
        self.chunk_size = int(getattr(args, "loss_chunk_size", 0) or 0)

    def __call__(
        self, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, accuracy: bool = False
    ) -> LossOutput:
        loss_sum, n_correct = linear_cross_entropy_sum(h, weight, targets, self.chunk_size)
        return LossOutput(loss_sum, n_correct)


# ---- the operator -----------------------------------------------------------------------------


@torch.library.custom_op("lmprof::linear_cross_entropy", mutates_args=())
def _op(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed loss fp32, number correct int64, d loss_sum / dh, d loss_sum / dW); the last two
    are empty when need_grad is False."""
    n = h.shape[0]
    chunk = chunk_size if 0 < chunk_size < n else max(n, 1)
    rows = _rows_triton if triton is not None and h.is_cuda else _rows_torch
    loss_sum = torch.zeros((), device=h.device, dtype=torch.float32)
    n_correct = torch.zeros((), device=h.device, dtype=torch.int64)
    grad_h = torch.empty_like(h) if need_grad else h.new_empty(0)
    grad_w = weight.new_empty(0)
    acc = None  # dW over several blocks, summed in fp32
    for s in range(0, n, chunk):
        hc, tc = h[s : s + chunk], targets[s : s + chunk]
        logits = hc @ weight.t()
        losses, correct = rows(logits, tc, need_grad)  # logits now hold d loss / d logits
        loss_sum += losses.sum()
        n_correct += correct.sum()
        if need_grad:
            torch.mm(logits, weight, out=grad_h[s : s + chunk])
            gw = logits.t() @ hc
            if chunk >= n:  # one block: dW as it is
                grad_w = gw
            else:
                acc = gw.float() if acc is None else acc.add_(gw)
            del gw
        del logits  # before the next block's logits exist
    if acc is not None:
        grad_w = acc.to(weight.dtype)
    elif need_grad and n == 0:
        grad_w = torch.zeros_like(weight)
    return loss_sum, n_correct, grad_h, grad_w


@_op.register_fake
def _(h, weight, targets, chunk_size, need_grad):
    scalar = h.new_empty((), dtype=torch.float32)
    grads = (
        (torch.empty_like(h), torch.empty_like(weight))
        if need_grad
        else (h.new_empty(0), weight.new_empty(0))
    )
    return scalar, h.new_empty((), dtype=torch.int64), *grads


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[2], output[3])
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the outputs nobody uses


def _backward(ctx, grad_loss, _grad_correct, _grad_h, _grad_w):
    grad_h, grad_w = ctx.saved_tensors
    # grad_loss is a 0-dim fp32 tensor: the products keep the gradients' dtype, computed in fp32.
    return grad_h * grad_loss, grad_w * grad_loss, None, None, None


torch.library.register_autograd(
    "lmprof::linear_cross_entropy", _backward, setup_context=_setup_context
)


@register_flop_formula(torch.ops.lmprof.linear_cross_entropy)
def _flops(h_shape, w_shape, targets_shape, chunk_size, need_grad, out_shape=None, **kwargs) -> int:
    # logits = h W^T, and when gradients are made, dh = G W and dW = G^T h: 2 N d V each.
    return 2 * h_shape[0] * h_shape[1] * w_shape[0] * (3 if need_grad else 1)


# ---- per row: loss, correct, and the logits replaced by their gradient ---------------------------


def _rows_torch(logits: torch.Tensor, targets: torch.Tensor, need_grad: bool):
    x = logits.float()
    valid = targets != IGNORE_INDEX
    tsafe = targets.clamp(min=0)
    lse = torch.logsumexp(x, dim=-1)
    losses = torch.where(valid, lse - x.gather(1, tsafe[:, None]).squeeze(1), 0.0)
    correct = (x.argmax(-1) == targets) & valid
    if need_grad:
        p = (x - lse[:, None]).exp_()
        p[torch.arange(p.shape[0], device=p.device), tsafe] -= 1.0
        logits.copy_(p.mul_(valid[:, None]))
    return losses, correct


if triton is not None:

    @triton.jit
    def _cross_entropy_rows_kernel(
        logits_ptr,
        row_stride,
        targets_ptr,
        losses_ptr,
        correct_ptr,
        V,
        ignore_index,
        NEED_GRAD: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        # One program per row. Pass 1: an online log-sum-exp and argmax; pass 2 (training):
        # overwrite the row with softmax - onehot, zero for an ignored target.
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * row_stride
        cols = tl.arange(0, BLOCK)
        m = tl.full([BLOCK], float("-inf"), tl.float32)  # running max, per lane
        s = tl.zeros([BLOCK], tl.float32)  # running sum of exp(x - m), per lane
        best = tl.full([BLOCK], float("-inf"), tl.float32)
        best_col = tl.zeros([BLOCK], tl.int32)
        for start in tl.range(0, V, BLOCK):
            c = start + cols
            x = tl.load(base + c, mask=c < V, other=float("-inf")).to(tl.float32)
            new_m = tl.maximum(m, x)
            # exp(-inf - -inf) is NaN: a lane that has seen only -inf keeps s = 0.
            s = tl.where(new_m == float("-inf"), 0.0, s * tl.exp(m - new_m) + tl.exp(x - new_m))
            m = new_m
            better = x > best  # strict: the first column of a tie wins, as torch.argmax does
            best_col = tl.where(better, c, best_col)
            best = tl.where(better, x, best)
        row_max = tl.max(m, 0)
        lse = row_max + tl.log(
            tl.sum(tl.where(m == float("-inf"), 0.0, s * tl.exp(m - row_max)), 0)
        )
        top = tl.max(best, 0)
        argmax = tl.min(tl.where(best == top, best_col, V), 0)
        t = tl.load(targets_ptr + row)
        valid = t != ignore_index
        picked = tl.load(base + tl.where(valid, t, 0)).to(tl.float32)
        tl.store(losses_ptr + row, tl.where(valid, lse - picked, 0.0))
        tl.store(correct_ptr + row, valid & (argmax == t))
        if NEED_GRAD:
            keep = tl.where(valid, 1.0, 0.0)
            for start in tl.range(0, V, BLOCK):
                c = start + cols
                inside = c < V
                x = tl.load(base + c, mask=inside, other=0.0).to(tl.float32)
                g = (tl.exp(x - lse) - tl.where(c == t, 1.0, 0.0)) * keep
                tl.store(base + c, g.to(logits_ptr.dtype.element_ty), mask=inside)


def _rows_triton(logits: torch.Tensor, targets: torch.Tensor, need_grad: bool):
    n, v = logits.shape
    losses = logits.new_empty(n, dtype=torch.float32)
    correct = logits.new_empty(n, dtype=torch.bool)
    if n:
        _cross_entropy_rows_kernel[(n,)](
            logits,
            logits.stride(0),
            targets,
            losses,
            correct,
            v,
            IGNORE_INDEX,
            NEED_GRAD=need_grad,
            BLOCK=2048,
            num_warps=8,
        )
    return losses, correct
