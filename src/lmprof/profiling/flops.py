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

Hardware FLOPs add what the step recomputes:
- full checkpointing re-runs each block's forward in the backward pass. PyTorch's non-reentrant
  checkpoint stops recomputing once every tensor saved for backward exists again, so a pre-norm
  block without dropout skips its last matmul (the MLP down-projection, whose output no one
  saved); post-norm blocks (the LayerNorm after the residual saves its input) and blocks with
  dropout (the mask is drawn after that matmul) recompute all of it.
- selective checkpointing (model.py's policy) keeps the outputs of mm/addmm/bmm and the CUDA
  SDPA kernels, so only pointwise ops run again: no extra matmul FLOPs with SDPA on the GPU.
  Vanilla attention computes its scores with baddbmm (the causal bias added in the matmul),
  which the policy does not name, so QK^T is recomputed (2 * L * d * T per token). On the CPU,
  SDPA without dropout runs `_scaled_dot_product_flash_attention_for_cpu`, which the policy does
  not name either, so the attention forward is recomputed there (`device="cpu"`).
- the fused LM head + cross-entropy computes the same three matmuls as a Linear + loss (the
  logits, then dh and dW in its forward), in blocks or not: nothing extra. FlopCounterMode
  counts them through the formula ops/cross_entropy.py registers.
- the fused SDPA kernels (flash, memory-efficient, cuDNN; the CPU's flash kernel) recompute QK^T
  inside their backward: 2 * L * d * T more per token (`attention_kernel_recompute`).
  FlopCounterMode (torch 2.13) counts exactly this: 5 bmm-sized products in the SDPA backward
  against 4 for the explicit matmuls of `vanilla`. On the CPU, SDPA with dropout falls back to
  the math path (explicit bmm): no kernel recompute there (`device="cpu"`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmprof.attention_kernels import kernel as attention_kernel
from lmprof.results import ColumnGroup

# model.py's selective-checkpointing policy keeps mm/addmm/bmm/SDPA outputs but not baddbmm, the
# op of vanilla attention's scores: flip this if the policy gains it.
SAC_SAVES_BADDBMM = True

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


def _get(args: Any, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


def padded_vocab(args: Any) -> int:
    v, m = int(args.vocab_size), int(_get(args, "vocab_multiple", 1) or 1)
    return (v + m - 1) // m * m


def matmul_params(args: Any) -> dict[str, int]:
    """Weights that take part in matmuls: per block and the LM head."""
    d, f = int(args.d_model), int(args.d_ff)
    per_block = 4 * d * d + 2 * d * f  # qkv 3d^2, out proj d^2, MLP up d*f and down f*d
    return {
        "per_block": per_block,
        "blocks": per_block * int(args.n_layers),
        "lm_head": padded_vocab(args) * d,
    }


def count_params(args: Any) -> int:
    """Parameters of lmprof.model.Transformer(args), without building it (checked by a test
    against the real module on the meta device)."""
    d, f, L = int(args.d_model), int(args.d_ff), int(args.n_layers)
    bias = bool(_get(args, "bias", True))
    V = padded_vocab(args)
    ln = d * (2 if bias else 1)
    block = 2 * ln + (3 * d * d + d * d + d * f + f * d)
    if bias:
        block += 3 * d + d + f + d
    n = V * d + L * block
    if _get(args, "pos_encoding", "learned") == "learned":
        n += int(args.max_seq_len) * d
    if _get(args, "norm", "pre") == "pre":
        n += ln
    if not _get(args, "tie_embeddings", True):
        n += V * d
    return n


def flops_per_token(
    args: Any, seq_len: int, *, device: str = "cuda", padded: bool = False
) -> FlopCount:
    """FLOPs per token of one training step of `Transformer(args)` on sequences of `seq_len`.

    `args` is an `lmprof.model.ModelArgs` (or anything with its fields). `device` and `padded`
    (a batch with padding: vanilla attention then uses a bmm) only change the recompute of
    selective checkpointing and the fused-attention backward (see the module docstring).
    """
    d, L, T = int(args.d_model), int(args.n_layers), int(seq_len)
    mp = matmul_params(args)
    n_matmul = mp["blocks"] + mp["lm_head"]
    attn_fwd = 4 * d * T * L  # QK^T and AV, 2 FLOPs per MAC, all T keys: per token, forward
    dense = 6 * n_matmul
    attention = 3 * attn_fwd  # = 12 * L * d * T
    model = dense + attention

    mode = _get(args, "checkpointing", "none")
    dropout = float(_get(args, "dropout", 0.0))
    textbook = attention_kernel(_get(args, "attention", "sdpa")).materialises_scores
    cpu_math = device == "cpu" and not textbook and dropout > 0
    fused = not textbook and not cpu_math
    kernel_recompute = 2 * d * T * L if fused else 0
    recompute = 0.0
    if mode == "full":
        f = int(args.d_ff)
        block_fwd = 2 * mp["per_block"]
        if _get(args, "norm", "pre") == "pre" and dropout == 0.0:
            block_fwd -= 2 * f * d  # early stop: the MLP down-projection is not re-run
        recompute = L * block_fwd + attn_fwd
    elif mode == "selective":
        if device == "cpu" and fused:
            # The CPU flash kernel is not in the policy's save list: its forward runs again.
            recompute = attn_fwd
        elif textbook and not padded and not SAC_SAVES_BADDBMM:
            # vanilla's QK^T is a baddbmm (causal bias + scale in one kernel), not in the list.
            recompute = attn_fwd / 2

    breakdown = {
        "matmul_params": float(n_matmul),
        "blocks_dense": 6.0 * mp["blocks"],
        "lm_head": 6.0 * mp["lm_head"],
        "attention": float(attention),
        "attention_causal": 6.0 * L * d * (T + 1),
        "model_causal": float(dense + 6 * L * d * (T + 1)),
        "recompute": float(recompute),
        "attention_kernel_recompute": float(kernel_recompute),
        "forward": float(2 * n_matmul + attn_fwd),
    }
    return FlopCount(
        model_flops_per_token=float(model),
        hardware_flops_per_token=float(model + recompute + kernel_recompute),
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
