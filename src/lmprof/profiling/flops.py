"""FLOPs of one training step and MFU.

Convention (the PaLM paper's appendix B and nanoGPT's `estimate_mfu`): a training step costs
3x its forward pass (backward = 2x forward), and per token

    model FLOPs = 6 * N + 12 * L * d * T

where N counts the weights that take part in matrix multiplications, the LM head included
(V_padded * d, computed whether or not it is tied to the embedding), and excludes the embedding and
position lookups, norms and biases (their FLOPs are not matmuls); 12 * L * d * T is QK^T and AV
counted as if attention were not causal (each query against all T keys). That is what MFU figures
in papers and nanoGPT use, so lmprof's MFU compares with them; `torch.utils.flop_counter.
FlopCounterMode` also counts attention in full (its SDPA formulas ignore `is_causal`). The exact
causal count (each query against the i+1 keys it sees, 6 * L * d * (T + 1)) is in the breakdown
as `attention_causal`, and `model_causal` is the total with it.

Hardware FLOPs add what the step recomputes. Every figure is a sum over the ops' descriptions
(model_ops.py, attention_kernels.py, ops/losses.py): this module holds no op's FLOPs.
- full checkpointing re-runs each block's forward in the backward pass. PyTorch's non-reentrant
  checkpoint stops recomputing once every tensor saved for backward exists again, so the ops
  after the last one that makes a kept activation do not run again (a pre-norm block without
  dropout skips the MLP down-projection; post-norm blocks and dropout recompute all of it).
- selective checkpointing (model_ops.SELECTIVE_SAVES, model.py's policy) keeps the outputs of
  its operators, so only what the others make runs again: on the GPU, no matmul; vanilla
  attention's scores come from baddbmm (kept); on the CPU the fused SDPA kernel is not in the
  list, so the attention forward is recomputed there (`device="cpu"`).
- the fused SDPA kernels (flash, memory-efficient, cuDNN, FA4; the CPU's flash kernel) recompute
  QK^T inside their backward: 2 * L * d * T more per token (`attention_kernel_recompute`).
  FlopCounterMode (torch 2.13) counts exactly this: 5 bmm-sized products in the SDPA backward
  against 4 for the explicit matmuls of `vanilla`. On the CPU, SDPA with dropout falls back to
  the math path (explicit bmm): no kernel recompute there.
- the fused LM head + cross-entropy computes the same three matmuls as a Linear + loss (the
  logits, then dh and dW in its forward), in blocks or not: nothing extra. FlopCounterMode
  counts them through the formula ops/cross_entropy.py registers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmprof.model_ops import (
    block_ops,
    count_params,
    embedding_ops,
    head_ops,
    selective_keeps,
)
from lmprof.ops.spec import Ran, Site, Tensor, run
from lmprof.results import ColumnGroup

__all__ = ["FlopCount", "count_params", "flops_per_token", "matmul_params", "mfu"]

CONVENTION = (
    "PaLM/nanoGPT: 3x forward; 6*N + 12*L*d*T per token, N = matmul weights incl. LM head "
    "(V_padded*d), excl. embeddings, positions, norms, biases; attention counted in full "
    "(non-causal); hardware adds checkpoint recompute and the fused-attention backward's QK^T"
)


FLOPS_COLUMNS = ColumnGroup(
    "flops",
    "model FLOPs per token (this module) and the MFU/HFU they give against the peak "
    "(profiling/peaks.py), written by train/run.py",
    (
        "mfu",
        "hfu",
        "achieved_tflops",
        "model_flops_per_token",
        "matmul_precision",
        "peak_tflops",
        "peak_source",
    ),
)


@dataclass
class FlopCount:
    """FLOPs per token of one training step (forward + backward)."""

    model_flops_per_token: float
    hardware_flops_per_token: float
    breakdown: dict[str, float] = field(default_factory=dict)
    convention: str = CONVENTION

    def per_step(self, tokens: int) -> float:
        """Model FLOPs of a step that processes `tokens` tokens (B * T * grad_accum)."""
        return self.model_flops_per_token * tokens

    def hardware_per_step(self, tokens: int) -> float:
        return self.hardware_flops_per_token * tokens


def _step_ops(args: Any, T: int, device: str, padded: bool) -> tuple[list[Ran], list[Ran]]:
    """One block and the head, run on one sequence of T tokens."""
    site = Site(args, 1, T, getattr(args, "precision", "fp32"), device, padded)
    d = int(args.d_model)
    block = run(block_ops(args), site, Tensor("x_in", T * d * 4, 4))
    head = run([*embedding_ops(args), *head_ops(args)], site, None)
    return block, head


def matmul_params(args: Any) -> dict[str, int]:
    """Weights that take part in matmuls (from their FLOPs: 2 per weight and token): per block
    and the LM head."""
    block, head = _step_ops(args, 1, "cuda", False)
    per_block = sum(r.cost.forward_flops for r in block if r.op.group == "matmul") // 2
    return {
        "per_block": per_block,
        "blocks": per_block * int(args.n_layers),
        "lm_head": sum(r.cost.forward_flops for r in head) // 2,
    }


def _recompute(block: list[Ran], mode: str) -> int:
    """FLOPs a block runs again under checkpointing (see the module docstring)."""
    if mode == "full":
        keeps = [
            i
            for i, r in enumerate(block)
            if any(t.saved and t.kind == "act" for t in r.cost.tensors)
        ]
        return sum(r.cost.forward_flops for r in block[: keeps[-1] + 1]) if keeps else 0
    if mode == "selective":
        return sum(t.flops for r in block for t in r.cost.tensors if not selective_keeps(t))
    return 0


def flops_per_token(
    args: Any, seq_len: int, *, device: str = "cuda", padded: bool = False
) -> FlopCount:
    """FLOPs per token of one training step of `Transformer(args)` on sequences of `seq_len`.

    `args` is an `lmprof.model.ModelArgs` (or anything with its fields). `device` and `padded`
    (a batch with padding: vanilla attention then uses a bmm) only change what the kernels and
    checkpointing compute again (see the module docstring).
    """
    T, L = int(seq_len), int(args.n_layers)
    block, head = _step_ops(args, T, device, padded)

    def per_token(rows: list[Ran], what, group: str | None = None) -> float:
        return sum(what(r.cost) for r in rows if group is None or r.op.group == group) / T

    def train(c) -> int:
        return c.forward_flops + c.backward_flops

    def causal(c) -> int:
        return train(c) if c.causal_flops is None else c.causal_flops

    blocks_dense = L * per_token(block, train, "matmul")
    lm_head = per_token(head, train)
    attention = L * per_token(block, train, "attention")
    attention_causal = L * per_token(block, causal, "attention")
    model = L * per_token(block, train) + lm_head
    recompute = L * _recompute(block, getattr(args, "checkpointing", "none")) / T
    kernel_recompute = L * per_token(block, lambda c: c.kernel_recompute_flops)
    breakdown = {
        "matmul_params": (blocks_dense + lm_head) / 6,
        "blocks_dense": blocks_dense,
        "lm_head": lm_head,
        "attention": attention,
        "attention_causal": attention_causal,
        "model_causal": model - attention + attention_causal,
        "recompute": float(recompute),
        "attention_kernel_recompute": kernel_recompute,
        "forward": L * per_token(block, lambda c: c.forward_flops)
        + per_token(head, lambda c: c.forward_flops),
    }
    return FlopCount(
        model_flops_per_token=model,
        hardware_flops_per_token=model + recompute + kernel_recompute,
        breakdown=breakdown,
    )


def mfu(
    tokens_per_sec: float | None,
    flops_per_token: float | FlopCount | None,
    peak_flops: float | None,
) -> float | None:
    """Model FLOPs utilization: achieved model FLOP/s over the peak; None when unknowable."""
    if isinstance(flops_per_token, FlopCount):
        flops_per_token = flops_per_token.model_flops_per_token
    if not tokens_per_sec or not flops_per_token or not peak_flops:
        return None
    if tokens_per_sec != tokens_per_sec or peak_flops <= 0:  # NaN tokens/s from an empty run
        return None
    return tokens_per_sec * flops_per_token / peak_flops
