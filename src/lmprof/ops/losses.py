"""The losses a run can choose (`model.loss`): the LM head and the next-token cross-entropy, each
described here (ops/spec.py's type, torch-free) beside the module that runs it.

Every loss is a class built from the model's hyper-parameters, called as
`loss(h, weight, targets, accuracy) -> LossOutput`: h (N, d) the final hidden states, weight
(V, d) the LM head's, targets (N,) with IGNORE_INDEX at PAD. It returns the SUM of the per-token
losses over the real (non-PAD) targets, fp32, and, when `accuracy` is asked (a logging step,
an evaluation), how many of them the argmax got right; a loss whose count is free may return it
always (the fused loss does: under torch.compile a bool that changes the graph is a second
graph), and the caller ignores it when it did not ask. The COUNT of real targets is the
batch's `n_real_tokens`, counted on the host when the batch is cut: the trainer divides by it
(across micro-batches and ranks), so no loss computes one on the device and nothing waits.

Adding a loss: its module (a class as above), its description here (a `Loss` subclass: what it
keeps, moves and computes; `code` names the class), and its test.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, NamedTuple

from lmprof.ops.spec import DTYPE_BYTES, Cost, Op, Site, Tensor


class LossOutput(NamedTuple):
    """What a loss returns: device tensors, nothing read back."""

    sum: Any  # fp32 0-dim: the summed loss over real targets
    correct: Any = None  # int64 0-dim: argmax == target over real targets, when asked


@dataclass
class LossCost(Cost):
    """A loss's cost, with the moments the memory model reads at the loss (beyond `tensors`,
    what it keeps): `forward_live` alive when its forward returns, `forward_transient` the
    largest short-lived buffer inside it; `backward_transient` and `eval_transient` as for any
    op."""

    forward_live: int = 0
    forward_transient: int = 0


class Loss(Op):
    """The base of the losses' descriptions: the LM head's weight (tied or not) and its FLOPs
    (logits, then dh and dW: 2 N d V each, whatever the kernel)."""

    group = "loss"
    code = ""  # "module:Class" of the loss's implementation
    chunks = False  # honours model.loss_chunk_size

    def __init__(self, args: Any = None):
        self.tied = bool(getattr(args, "tie_embeddings", True)) if args is not None else True

    def params(self, args: Any) -> int:
        return 0 if self.tied else Site(args, 1, 1, "fp32").vocab * int(args.d_model)

    def head_gradient_bytes(self, s: Site) -> int:
        """The head weight's fp32 gradient, made first in the backward (tied: the embedding's)."""
        return s.vocab * s.d * 4

    def logits(self, s: Site) -> Tensor:
        """The logits as FLOPs see them (their memory is each loss's own)."""
        return Tensor("logits", 0, s.e, flops=2 * s.N * s.d * s.vocab)

    def build(self, args: Any) -> Any:
        """The loss's implementation for `args` (imported only here: its module needs torch)."""
        module, name = self.code.split(":")
        return getattr(importlib.import_module(module), name)(args)


class FusedLinearCrossEntropy(Loss):
    """ops/cross_entropy.py: the LM head and the loss in one custom op. For each block of c
    tokens (all N unless loss_chunk_size) the logits, in the autocast dtype, are overwritten by
    their gradient; dh and dW are made in the forward, so the backward only scales them."""

    name = "fused"
    code = "lmprof.ops.cross_entropy:FusedLinearCrossEntropy"
    chunks = True
    keys = ("cross_entropy_rows", "lmprof_ce")
    operators = ("lmprof::linear_cross_entropy",)

    def __init__(self, args: Any = None):
        super().__init__(args)
        self.chunk = int(getattr(args, "loss_chunk_size", 0) or 0) if args is not None else 0

    def cost(self, s: Site, x: Tensor | None) -> LossCost:
        N, d, V, e = s.N, s.d, s.vocab, s.e
        c = min(self.chunk or N, N)
        # It keeps d loss/dh and d loss/dW, in the autocast dtype; its inputs' casts are not kept.
        grads = [
            Tensor("head_grad_h", N * d * e, e, saved=True, kind="loss"),
            Tensor("head_grad_w", V * d * e, e, saved=True, kind="loss"),
        ]
        casts = (N * d * e + V * d * e) if s.autocast else 0
        # One block of logits, dW's fp32 sum over several blocks, and per row the loss (fp32)
        # and whether it is right.
        block = c * V * e + (V * d * 4 if c < N else 0) + 5 * c
        return LossCost(
            [self.logits(s), *grads],
            None,
            backward_flops=4 * N * d * V,
            # the saved dh and dW and their scaled copies; then, the saved pair freed, the
            # copies and dW cast to fp32 for the weight
            backward_transient=max(N * d * e + V * d * e, V * d * 4 if s.autocast else 0),
            eval_transient=casts + c * V * e + 5 * c,
            forward_live=casts,
            forward_transient=block,
        )

    def trace_work(self, operator: str, dims: list, types: list, group: str) -> float | None:
        if operator != "lmprof::linear_cross_entropy":
            return super().trace_work(operator, dims, types, group)
        if group != "loss":
            return None  # its GEMMs: whether it made gradients is not in the shapes
        # The row kernel's traffic: the logits read once and their gradient written over them,
        # in the hidden states' dtype (hidden (N, d) and weight (V, d) are the first inputs).
        if len(dims) < 2 or not all(isinstance(x, list) and len(x) == 2 for x in dims[:2]):
            return None
        (n, _), (v, _) = dims[0], dims[1]
        size = DTYPE_BYTES.get((types[0] if types else "").lower(), 0)
        return 2.0 * n * v * size if size else None


class PyTorchCrossEntropy(Loss):
    """ops/pytorch_loss.py, the reference: nn.Linear's logits (autocast dtype), an fp32 copy,
    F.cross_entropy (log-softmax, kept for the backward in fp32, then the NLL). Every buffer is
    tokens x vocabulary: nothing is chunked."""

    name = "pytorch"
    code = "lmprof.ops.pytorch_loss:PyTorchCrossEntropy"
    keys = ("cross_entropy", "nll_loss", "log_softmax", "logsumexp")

    def cost(self, s: Site, x: Tensor | None) -> LossCost:
        N, d, V, e = s.N, s.d, s.vocab, s.e
        nv = N * V
        t = [self.logits(s)]
        cast = s.autocast and x is not None and x.itemsize != e
        if cast:  # the head's matmul keeps autocast's copies of h and W
            t.append(Tensor("head_in", N * d * e, e, saved=True, kind="loss"))
        if s.autocast:
            t.append(Tensor("head_weight", V * d * e, e, saved=True, kind="weights"))
        t.append(Tensor("log_softmax", nv * 4, 4, saved=True, kind="loss"))
        # the logits and, under autocast, their fp32 copy, beside the log-softmax being made
        logits = nv * e + (nv * 4 if s.autocast else 0)
        return LossCost(
            t,
            None,
            saves_input=not cast,
            backward_flops=4 * N * d * V,
            # the log-softmax's backward: the NLL's gradient and its own, both fp32
            backward_transient=2 * nv * 4,
            eval_transient=logits + nv * 4 + ((N * d * e + V * d * e) if s.autocast else 0),
            forward_transient=logits,
        )


LOSSES: dict[str, type[Loss]] = {
    cls.name: cls for cls in (FusedLinearCrossEntropy, PyTorchCrossEntropy)
}
NAMES: tuple[str, ...] = tuple(LOSSES)
DEFAULT = "fused"


def loss(name: str, args: Any = None) -> Loss:
    """The description of loss `name` for `args`; a KeyError names the losses there are."""
    try:
        return LOSSES[name](args)
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(NAMES)}") from None
