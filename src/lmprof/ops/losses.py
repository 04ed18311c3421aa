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
keeps, moves and computes; `code` names the class; `availability` and `cuda_only` where it needs
an optional package or a GPU: the preflight refuses it in one line), and its test.
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
    chunk_multiple = 1  # model.loss_chunk_size must be a multiple of this
    cuda_only = False  # runs on CUDA only (the preflight refuses it on a CPU)

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

    def linear_saves(self, s: Site, x: Tensor | None) -> tuple[list[Tensor], bool]:
        """What a plain cuBLAS head (F.linear) keeps for its backward beyond the logits: under
        autocast its copy of W and, when h is not already in the autocast dtype, its copy of h;
        and whether that copy is made (else it keeps h itself: `saves_input`)."""
        cast = s.autocast and x is not None and x.itemsize != s.e
        t = [Tensor("head_in", s.N * s.d * s.e, s.e, saved=True, kind="loss")] if cast else []
        if s.autocast:
            t.append(Tensor("head_weight", s.vocab * s.d * s.e, s.e, saved=True, kind="weights"))
        return t, cast

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
        saves, cast = self.linear_saves(s, x)
        t = [self.logits(s), *saves]
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


class QuackCrossEntropy(Loss):
    """ops/quack_loss.py: cuBLAS logits in the autocast dtype, then quack 0.6.5's cross-entropy
    kernels (two lmprof custom ops around quack's `cross_entropy_fwd` / `cross_entropy_bwd`).
    What it keeps, from quack/cross_entropy.py: `CrossEntropyFunction.forward` saves
    (x, target, lse, weight) (`ctx.save_for_backward`, line 696), so the whole logits stay
    alive until the backward, with an fp32 log-sum-exp per row; `cross_entropy_fwd` (line
    368) writes an fp32 loss per row, no fp32 copy of the logits and no log-softmax. Its
    backward (`cross_entropy_bwd`, line 632) writes d loss/d logits into a NEW buffer of the
    logits' size: the in-place variant is off under torch.compile (line 641) and a custom op's
    output may not alias its input, so here it is never in place. F.linear keeps what it keeps
    (`linear_saves`)."""

    name = "quack"
    code = "lmprof.ops.quack_loss:QuackCrossEntropy"
    availability = "lmprof.ops.quack_loss:unavailable_reason"
    cuda_only = True
    keys = ("crossentropy",)  # quack's CuTe kernels: CrossEntropy, CrossEntropyBackward
    operators = ("lmprof::quack_cross_entropy", "lmprof::quack_cross_entropy_backward")

    def cost(self, s: Site, x: Tensor | None) -> LossCost:
        N, d, V, e = s.N, s.d, s.vocab, s.e
        saves, cast = self.linear_saves(s, x)
        t = [
            self.logits(s),
            *saves,
            Tensor("quack_logits", N * V * e, e, saved=True, kind="loss"),
            Tensor("quack_lse", N * 4, 4, saved=True, kind="loss"),
        ]
        casts = (N * d * e + V * d * e) if s.autocast else 0
        return LossCost(
            t,
            None,
            saves_input=not cast,
            backward_flops=4 * N * d * V,
            # d loss/d logits beside the saved logits, and the per-row incoming gradient
            backward_transient=N * V * e + N * 4,
            eval_transient=casts + N * V * e + 2 * N * 4,
            forward_transient=N * 4,  # the per-row losses before their sum
        )

    def trace_work(self, operator: str, dims: list, types: list, group: str) -> float | None:
        if operator not in self.operators:
            return super().trace_work(operator, dims, types, group)
        # The forward reads the logits once; the backward reads them and writes their gradient
        # (the per-row vectors are noise beside N x V).
        if group != "loss" or not dims or not (isinstance(dims[0], list) and len(dims[0]) == 2):
            return None
        n, v = dims[0]
        size = DTYPE_BYTES.get((types[0] if types else "").lower(), 0)
        passes = 2 if operator.endswith("_backward") else 1
        return float(passes * n * v * size) if size else None


class QuackChunkedLinearCrossEntropy(Loss):
    """ops/quack_loss.py: quack 0.6.5's `chunked_linear_cross_entropy`, the head's GEMM and the
    loss fused per block of c = loss_chunk_size tokens (0: 4096, quack's default), dh and dW
    made in the forward. Counted here is the path an SM90 GPU takes in bf16 (V % 128 == 0 and
    c % 128 == 0; quack/linear_cross_entropy.py, `scaled_exp_lce_supported`), the H100's and
    H200's: `ScaledExpLinearCrossEntropyFunction.forward` saves only (dx, dw), dx (N, d) in the
    autocast dtype and dw (V, d) fp32, and its backward scales both in place (`dx.mul_`,
    `dw.mul_(dloss).to(weight dtype)`, a copy only when the weight is not fp32). Its forward's
    scratch (`scaled_exp_linear_cross_entropy_fwd`): one block E (c, V) in the autocast dtype,
    per row and 192-column tile two fp32 partials, a (V/64, c) strip, xs (c, d), fp32 loss per
    row. Elsewhere (other GPUs, fp16, c % 128 != 0) its base path also keeps the last block's
    d loss/d logits (`last_dlogits_chunk`, c x V) for the backward's last dW GEMM, which this
    description does not count."""

    name = "quack_chunked"
    code = "lmprof.ops.quack_loss:QuackChunkedLinearCrossEntropy"
    availability = "lmprof.ops.quack_loss:unavailable_reason"
    cuda_only = True
    chunks = True
    chunk_multiple = 8  # its TMA GEMMs' alignment (chunked_linear_cross_entropy_fwd asserts)
    keys = ("crossentropy", "lce_glue")
    operators = ("quack::lce_scaled_exp_fwd",)

    def __init__(self, args: Any = None):
        super().__init__(args)
        self.chunk = int(getattr(args, "loss_chunk_size", 0) or 0) if args is not None else 0

    def cost(self, s: Site, x: Tensor | None) -> LossCost:
        N, d, V, e = s.N, s.d, s.vocab, s.e
        c = min(self.chunk or 4096, -(-N // 128) * 128)
        grads = [
            Tensor("head_grad_h", N * d * e, e, saved=True, kind="loss"),
            Tensor("head_grad_w", V * d * 4, 4, saved=True, kind="loss"),
        ]
        casts = (N * d * e + V * d * e) if s.autocast else 0
        tiles = -(-V // 192)
        block = c * V * e + 2 * c * tiles * 4 + (V // 64) * c * e + c * d * e + N * 4
        return LossCost(
            [self.logits(s), *grads],
            None,
            backward_flops=4 * N * d * V,
            backward_transient=0 if s.autocast or e == 4 else V * d * e,
            # loss only: no dx, dw or strip; at most one block of logits (an upper bound)
            eval_transient=casts + c * V * e + N * 4,
            forward_live=casts,
            forward_transient=block,
        )


LOSSES: dict[str, type[Loss]] = {
    cls.name: cls
    for cls in (
        FusedLinearCrossEntropy,
        PyTorchCrossEntropy,
        QuackCrossEntropy,
        QuackChunkedLinearCrossEntropy,
    )
}
NAMES: tuple[str, ...] = tuple(LOSSES)
DEFAULT = "fused"


def loss(name: str, args: Any = None) -> Loss:
    """The description of loss `name` for `args`; a KeyError names the losses there are."""
    try:
        return LOSSES[name](args)
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(NAMES)}") from None
