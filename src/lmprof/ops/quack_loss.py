"""`model.loss=quack` and `model.loss=quack_chunked`: quack-kernels' (0.6.5) cross-entropy kernels
behind lmprof's loss interface (described in ops/losses.py). Both need CUDA and quack's CuTe-DSL
stack (`pip install 'lmprof[quack]'`); where quack does not import, `unavailable_reason` is the
one line the preflight (environment.check_environment) refuses the run with.

- quack: logits = h @ W^T (cuBLAS, the autocast dtype), then quack's cross-entropy kernels on
  them. quack's own `cross_entropy` is an autograd.Function over two CuTe ops; here its two
  halves (`cross_entropy_fwd`, `cross_entropy_bwd`, the functions that Function calls) are
  lmprof custom ops with an autograd formula, so a compiled model stays one graph and calls
  quack as it runs eagerly (issue 29: quack traced inside a compiled function ran slower).
- quack_chunked: quack's `chunked_linear_cross_entropy` as it is: the LM head's GEMM and the loss
  fused, a block of `loss_chunk_size` tokens at a time, dh and dW made in the forward. On SM90 in
  bf16 it takes quack's scaled-exp pipeline, already ONE custom op
  (`quack::lce_scaled_exp_fwd`), so it is not wrapped again.

Neither returns the argmax: the count right (asked on logging steps) is one extra pass over the
logits (quack) or one extra no-grad head GEMM per block (quack_chunked).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from lmprof.ops import IGNORE_INDEX, import_problem
from lmprof.ops.losses import LossOutput

INSTALL_HINT = "pip install 'lmprof[quack]'"
# quack's own default block: 4096 x 50304 bf16 logits are 412 MB, a multiple of 128 keeps its
# SM90 scaled-exp path eligible (linear_cross_entropy.py: scaled_exp_lce_supported).
DEFAULT_CHUNK = 4096
ROW_MULTIPLE = 8  # its TMA GEMMs' alignment: tokens and chunk a multiple of 8


@functools.cache
def _import_error() -> str | None:
    """Why quack's loss modules do not import, or None (imported once, then cached)."""
    return import_problem("quack.cross_entropy", "quack.linear_cross_entropy")


def unavailable_reason() -> str | None:
    """Why the quack losses cannot run here, or None; one line naming what to do."""
    from lmprof.ops.losses import LOSSES

    others = " or ".join(n for n, cls in LOSSES.items() if cls.availability is None)
    err = _import_error()
    if err is not None:
        return (
            f"losses quack and quack_chunked need the quack-kernels package ({INSTALL_HINT}, "
            f"CUDA only; else use loss {others}); importing quack failed: {err}"
        )
    if not torch.cuda.is_available():
        return f"losses quack and quack_chunked need a CUDA GPU (use loss {others})"
    return None


# ---- quack: cuBLAS logits, quack's cross-entropy kernels ---------------------------------------


class QuackCrossEntropy:
    """`model.loss=quack`: the summed loss over real targets (quack writes 0 for an ignored
    row and zeroes its gradient) and, when asked, the number right."""

    def __init__(self, args: Any = None):
        pass  # nothing to choose: the logits are tokens x vocabulary

    def __call__(
        self, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, accuracy: bool = False
    ) -> LossOutput:
        logits = F.linear(h, weight)
        rows, _lse = torch.ops.lmprof.quack_cross_entropy(logits, targets)
        # A PAD target (IGNORE_INDEX) is never an argmax, so it is never counted right.
        correct = (logits.detach().argmax(-1) == targets).sum() if accuracy else None
        return LossOutput(rows.sum(), correct)


@torch.library.custom_op("lmprof::quack_cross_entropy", mutates_args=())
def _forward(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-row loss, per-row log-sum-exp), both fp32 (N,): quack's forward kernel."""
    from quack.cross_entropy import cross_entropy_fwd

    return cross_entropy_fwd(logits, targets, ignore_index=IGNORE_INDEX, return_lse=True)


@_forward.register_fake
def _(logits, targets):
    n = logits.shape[0]
    return logits.new_empty(n, dtype=torch.float32), logits.new_empty(n, dtype=torch.float32)


@torch.library.custom_op("lmprof::quack_cross_entropy_backward", mutates_args=())
def _backward_op(
    logits: torch.Tensor, targets: torch.Tensor, grad: torch.Tensor, lse: torch.Tensor
) -> torch.Tensor:
    """d loss / d logits, a new buffer: an op's output may not alias its input, and quack itself
    drops its in-place backward under torch.compile (cross_entropy.py, cross_entropy_bwd)."""
    from quack.cross_entropy import cross_entropy_bwd

    return cross_entropy_bwd(logits, targets, grad.contiguous(), lse, ignore_index=IGNORE_INDEX)


@_backward_op.register_fake
def _(logits, targets, grad, lse):
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output):
    logits, targets = inputs
    ctx.save_for_backward(logits, targets, output[1])  # what quack's CrossEntropyFunction keeps


def _backward(ctx, grad_rows, _grad_lse):
    logits, targets, lse = ctx.saved_tensors
    grad = torch.ops.lmprof.quack_cross_entropy_backward(logits, targets, grad_rows.float(), lse)
    return grad, None


torch.library.register_autograd(
    "lmprof::quack_cross_entropy", _backward, setup_context=_setup_context
)


# ---- quack_chunked: quack's fused head GEMM + loss --------------------------------------------


class QuackChunkedLinearCrossEntropy:
    """`model.loss=quack_chunked`: quack's chunked_linear_cross_entropy, reduction "sum" over
    the targets != IGNORE_INDEX. A token count that is not a multiple of 8 is padded with
    ignored rows (zero hidden states), which add nothing to the loss or the gradients."""

    def __init__(self, args: Any = None):
        self.chunk_size = int(getattr(args, "loss_chunk_size", 0) or 0) or DEFAULT_CHUNK

    def __call__(
        self, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, accuracy: bool = False
    ) -> LossOutput:
        from quack.linear_cross_entropy import chunked_linear_cross_entropy

        if not torch.is_autocast_enabled(h.device.type):
            weight = weight.to(h.dtype)  # under autocast quack casts both itself
        pad = -h.shape[0] % ROW_MULTIPLE
        if pad:
            h = F.pad(h, (0, 0, 0, pad))
            targets = F.pad(targets, (0, pad), value=IGNORE_INDEX)
        loss = chunked_linear_cross_entropy(
            h,
            weight,
            targets,
            chunk_size=self.chunk_size,
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        correct = self._right(h, weight, targets) if accuracy else None
        return LossOutput(loss, correct)

    @torch.no_grad()
    def _right(self, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
        """Argmax == target over the real targets, a block of logits at a time (quack returns
        no logits): the head's GEMM once more, on logging steps only."""
        correct = torch.zeros((), dtype=torch.int64, device=h.device)
        for s in range(0, h.shape[0], self.chunk_size):
            logits = F.linear(h[s : s + self.chunk_size], weight)
            correct += (logits.argmax(-1) == targets[s : s + self.chunk_size]).sum()
        return correct
