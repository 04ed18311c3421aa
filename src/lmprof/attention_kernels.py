"""The attention kernels a run can ask for: one row per kernel, torch-free.

Config validation, the environment check, the FLOPs and memory models, debug_flash and the plots
read their facts here, so adding a kernel means one row below, its dispatch in model.py and a
test. model.py keeps the code that runs each kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class AttentionKernel:
    name: str
    description: str
    # The torch.nn.attention.SDPBackend member forced around SDPA; None lets PyTorch choose (or,
    # for the textbook attention, calls no SDPA at all).
    sdpa_backend: str | None
    cuda_only: bool
    # The precisions the kernel runs in; None: any. flash and cudnn have no fp32 kernels.
    precisions: tuple[str, ...] | None
    # When SDPA gets an explicit mask tensor: "always" (the causal mask on every batch), "padding"
    # (only for a batch with padding) or "never" (is_causal only; exact under right padding).
    mask: str
    # The T x T scores and probabilities live in memory as ordinary tensors (the textbook
    # formula): what the FLOPs and memory models branch on; every other kernel is fused.
    materialises_scores: bool
    # The CUDA kernel that ends up running: what the memory model counts (mem_efficient pads its
    # logsumexp to 32 rows). sdpa_mask's float mask rules out flash, so PyTorch picks mem_efficient.
    runs_as: str
    # Grouped-query attention (model.n_kv_heads < n_heads): "native", the kernel takes fewer K/V
    # heads than query heads (SDPA's enable_gqa, FA4's own); "repeat", model.py copies each K/V
    # head to the query heads it serves first, as Hugging Face's repeat_kv does (what the
    # textbook formula needs, and torch 2.11's memory-efficient kernel, which has no GQA: an
    # enable_gqa call there falls to the math kernel); None: refused by validation.
    gqa: str | None
    # The seed's attentions (its model's nn.MultiheadAttention path and the textbook one): the
    # analysis does not count them as an optimisation.
    baseline: bool = False
    # What the results' `flash_attention` column (the seed's use_flash_attention) says.
    seed_flash: bool = False
    # Attention dropout (model.dropout > 0 in training): FA4's kernels have none.
    dropout: bool = True
    # "module:function" answering why this machine cannot run the kernel (a missing optional
    # package, too old a GPU), or None when it can; imported only when the kernel is asked for.
    availability: str | None = None
    color: str = "#7f7f7f"  # fixed across figures


KERNELS: dict[str, AttentionKernel] = {
    k.name: k
    for k in (
        AttentionKernel(
            "vanilla",
            "the textbook softmax(QK^T / sqrt(d)) V with the T x T scores in memory",
            sdpa_backend=None,
            cuda_only=False,
            precisions=None,
            mask="always",
            materialises_scores=True,
            runs_as="matmul",
            gqa="repeat",
            baseline=True,
            color="#8c564b",
        ),
        AttentionKernel(
            "sdpa_mask",
            "SDPA handed an explicit causal mask, as the seed's nn.MultiheadAttention does",
            sdpa_backend=None,
            cuda_only=False,
            precisions=None,
            mask="always",
            materialises_scores=False,
            runs_as="mem_efficient",
            gqa="repeat",
            baseline=True,
            color="#c49c94",
        ),
        AttentionKernel(
            "sdpa",
            "SDPA with is_causal; PyTorch picks the kernel",
            sdpa_backend=None,
            cuda_only=False,
            precisions=None,
            mask="padding",
            materialises_scores=False,
            runs_as="flash",
            # PyTorch picks among the kernels that take what it is given: with enable_gqa, torch
            # 2.11 leaves fp32 on CUDA (no flash, no cuDNN) and masked batches to the math kernel.
            gqa="repeat",
            color="#9467bd",
        ),
        AttentionKernel(
            "flash",
            "SDPA forced to FlashAttention (fp16/bf16, CUDA)",
            sdpa_backend="FLASH_ATTENTION",
            cuda_only=True,
            precisions=("fp16", "bf16"),
            mask="never",
            materialises_scores=False,
            runs_as="flash",
            gqa="native",
            seed_flash=True,
            color="#d62728",
        ),
        AttentionKernel(
            "mem_efficient",
            "SDPA forced to the memory-efficient kernel (CUDA)",
            sdpa_backend="EFFICIENT_ATTENTION",
            cuda_only=True,
            precisions=None,
            mask="padding",
            materialises_scores=False,
            runs_as="mem_efficient",
            gqa="repeat",
            color="#e377c2",
        ),
        AttentionKernel(
            "cudnn",
            "SDPA forced to cuDNN's fused attention (fp16/bf16, CUDA)",
            sdpa_backend="CUDNN_ATTENTION",
            cuda_only=True,
            precisions=("fp16", "bf16"),
            mask="never",
            materialises_scores=False,
            runs_as="cudnn",
            gqa="native",
            seed_flash=True,
            color="#bcbd22",
        ),
        AttentionKernel(
            "fa4",
            "FlashAttention-4 (flash-attn-4's CuTe-DSL kernels, Hopper/Blackwell, fp16/bf16)",
            sdpa_backend=None,  # not SDPA: model.py calls lmprof::fa4_attention (ops/flash_attn4.py)
            cuda_only=True,
            precisions=("fp16", "bf16"),
            # is_causal only, exact under right padding like flash and cudnn: FA4 takes no mask.
            mask="never",
            materialises_scores=False,
            # It keeps what FlashAttention keeps: O and the fp32 log-sum-exp, (B, H, T).
            runs_as="flash",
            gqa="native",
            seed_flash=True,
            dropout=False,
            availability="lmprof.ops.flash_attn4:unavailable_reason",
            color="#0b7a75",
        ),
        AttentionKernel(
            "auto",
            "fa4 from FA4_MIN_SEQ_LEN tokens where it runs, else cudnn on CUDA fp16/bf16, else "
            "sdpa: chosen when the model is built (resolve())",
            # sdpa's facts, its last resort; every consumer that branches on them resolves first.
            sdpa_backend=None,
            cuda_only=False,
            precisions=None,
            mask="padding",
            materialises_scores=False,
            runs_as="flash",
            gqa="repeat",
            color="#6a3d9a",
        ),
    )
}

AUTO = "auto"
# From this sequence length on, attention=auto takes FA4 over cuDNN (where FA4 runs): measured
# by benchmarks/attention_crossover.py on the H200 (benchmarks/results/2026-12-03_h200_fa4/:
# FA4 1.26x at T 4096 with 12 x 64 heads, 1.14x with 16 x 128; slower below at 12 x 64).
FA4_MIN_SEQ_LEN = 4096

NAMES: tuple[str, ...] = tuple(KERNELS)


def kernel(name: str) -> AttentionKernel:
    """The row for `name`; a KeyError names the kernels there are."""
    try:
        return KERNELS[name]
    except KeyError:
        raise KeyError(f"unknown attention {name!r}; known: {', '.join(NAMES)}") from None


def names_where(pred) -> tuple[str, ...]:
    """The kernel names whose row satisfies `pred`, in table order (for messages and lists)."""
    return tuple(k.name for k in KERNELS.values() if pred(k))


def runs_in(k: AttentionKernel, precision: str) -> bool:
    return k.precisions is None or precision in k.precisions


def or_list(items: tuple[str, ...]) -> str:
    """'a, b or c': how the error messages list alternatives."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def resolve(
    name: str,
    *,
    device: str,
    precision: str,
    seq_len: int,
    dropout: float,
    fa4_available: Callable[[], bool] | bool = False,
) -> str:
    """The kernel that `name` stands for: itself, or for "auto" the first of fa4 (from
    FA4_MIN_SEQ_LEN tokens on, when `fa4_available`), cudnn and sdpa that this device, precision
    and dropout allow. `fa4_available` may be a callable, asked only when fa4 is in question;
    torch-free callers (the memory model) leave it False: fa4 and cudnn count the same."""
    if name != AUTO:
        return name

    def fits(k: AttentionKernel) -> bool:
        return (
            runs_in(k, precision)
            and (device == "cuda" or not k.cuda_only)
            and (dropout == 0 or k.dropout)
        )

    if seq_len >= FA4_MIN_SEQ_LEN and fits(KERNELS["fa4"]):
        ok = fa4_available() if callable(fa4_available) else fa4_available
        if ok:
            return "fa4"
    return "cudnn" if fits(KERNELS["cudnn"]) else "sdpa"
