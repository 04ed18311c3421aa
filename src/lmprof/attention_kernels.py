"""The attention kernels a run can ask for: one row per kernel, and the attention op's
description (`Attention`), torch-free. Validation, the environment check and the plots read the
rows; FLOPs, the memory model, the roofline and the kernel table read `Attention`. A new kernel is
one row here, its dispatch in model.py and tests/test_tables.py, which runs every row through all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lmprof.ops.spec import Cost, Op, Site, Tensor


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
    # The operator model.py's forward dispatches on CUDA (what selective checkpointing sees);
    # empty for the textbook attention, whose matmuls are aten's.
    aten: str = ""
    # In a torch.profiler trace: lower-case substrings of the names of its kernels, and the
    # operators that are its with the layout of their q, k, v (BHTD: batch, heads, sequence,
    # head dim, as SDPA takes them; BTHD: FlashAttention's and FA4's own).
    keys: tuple[str, ...] = ()
    trace_ops: tuple[tuple[str, str], ...] = ()
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
            aten="aten._scaled_dot_product_efficient_attention.default",
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
            aten="aten._scaled_dot_product_flash_attention.default",
            keys=("attention", "sdpa"),
            trace_ops=(
                ("aten::scaled_dot_product_attention", "BHTD"),
                # the CPU's fused kernel, which sdpa runs as there
                ("aten::_scaled_dot_product_flash_attention_for_cpu", "BHTD"),
                ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "BHTD"),
            ),
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
            aten="aten._scaled_dot_product_flash_attention.default",
            keys=("flash",),
            trace_ops=(
                ("aten::_scaled_dot_product_flash_attention", "BHTD"),
                ("aten::_scaled_dot_product_flash_attention_backward", "BHTD"),
                # what SDPA's flash entry calls, on FlashAttention's own layout
                ("aten::_flash_attention_forward", "BTHD"),
                ("aten::_flash_attention_backward", "BTHD"),
            ),
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
            aten="aten._scaled_dot_product_efficient_attention.default",
            keys=("fmha", "efficient_attention"),
            trace_ops=(
                ("aten::_scaled_dot_product_efficient_attention", "BHTD"),
                ("aten::_scaled_dot_product_efficient_attention_backward", "BHTD"),
                ("aten::_efficient_attention_forward", "BTHD"),
                ("aten::_efficient_attention_backward", "BTHD"),
            ),
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
            aten="aten._scaled_dot_product_cudnn_attention.default",
            keys=("cudnn_generated_fort_native_sdpa",),
            trace_ops=(
                ("aten::_scaled_dot_product_cudnn_attention", "BHTD"),
                ("aten::_scaled_dot_product_cudnn_attention_backward", "BHTD"),
                # what SDPA's cuDNN entry calls, which launches the kernels (torch 2.11 traces)
                ("aten::_cudnn_attention_forward", "BHTD"),
                ("aten::_cudnn_attention_backward", "BHTD"),
            ),
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
            aten="lmprof.fa4_attention.default",
            # FA4's CuTe kernels are named after their module, flash_attn.cute
            keys=("flash_attncute", "flashattentionforward", "flashattentionbackward"),
            trace_ops=(
                ("lmprof::fa4_attention", "BTHD"),
                ("lmprof::fa4_attention_backward", "BTHD"),
            ),
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
            aten="aten._scaled_dot_product_flash_attention.default",
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


# ---- the attention op's description ---------------------------------------------------------

# The CPU's fused SDPA kernel: not in model.py's selective-checkpointing save list.
CPU_FUSED_OP = "aten._scaled_dot_product_flash_attention_for_cpu.default"
BMM, BADDBMM = "aten.bmm.default", "aten.baddbmm.default"


class Attention(Op):
    """model.py's attention core for one kernel row: from the qkv projection's output to the
    out-projection's input (the projections are `model_ops.Linear`s).

    What it keeps depends on the code that runs: `vanilla` (the T x T scores in memory) and, on
    the CPU with dropout, SDPA's math path (explicit bmm, fp32 under autocast) keep contiguous
    copies of q, k, v, the probabilities (with dropout: the mask and the dropped ones) and a copy
    of the output for the out-projection; the fused kernels (flash, memory-efficient, cuDNN,
    FA4) keep q, k and v (views of the qkv projection's output, unless RoPE made new q and k or
    grouped-query attention on a "repeat" kernel copied k and v to every query head), their
    output and an fp32 log-sum-exp, and replay their dropout from the RNG."""

    group = "attention"

    def __init__(
        self, kernel: AttentionKernel, n_heads: int = 1, n_kv_heads: int = 0, rope: Op | None = None
    ):
        # rope: the description of the rotation model.py applies to q and k inside the attention
        # (model_ops.Rope), whose tensors this op decides to keep or not.
        self.kernel, self.n_heads, self.rope = kernel, n_heads, rope
        self.n_kv_heads = n_kv_heads or n_heads
        self.name = kernel.name
        self.keys = kernel.keys
        self.operators = tuple(op for op, _ in kernel.trace_ops)
        self.availability = kernel.availability

    def path(self, s: Site) -> str:
        """vanilla | math | fused: which code makes (and keeps) the attention's tensors."""
        if self.kernel.materialises_scores:
            return "vanilla"
        # On the CPU, SDPA with dropout takes the math path (explicit bmm, in fp32 under
        # autocast); without dropout the CPU flash kernel, which keeps what the CUDA ones keep.
        return "math" if not s.cuda and s.dropout > 0 else "fused"

    def cost(self, s: Site, x: Tensor | None) -> Cost:
        B, T, N, d, H = s.B, s.T, s.N, s.d, self.n_heads
        path = self.path(s)
        matmul = 2 * N * T * d  # QK^T or AV, all T keys (FlopCounterMode ignores is_causal)
        causal = 6 * N * (T + 1) * d  # forward + backward, each query against the keys it sees
        # RoPE's casts of its tables (kept) and the rotated q and k (kept by the fused kernels)
        rotated = self.rope.cost(s, x).tensors if self.rope is not None else []
        if path == "fused":
            return self._fused(s, x, rotated, matmul, causal)
        e = 4 if path == "math" else s.e  # the math path computes in fp32 under autocast
        bhtt = B * H * T * T * e
        # vanilla without padding: baddbmm(causal bias, q, k^T); with padding (and the math
        # path) a bmm.
        scores_op = BADDBMM if path == "vanilla" and not s.padded else BMM
        # reshape's copies of q, k and v (of k and v: the copies to every query head, with fewer
        # K/V heads)
        t = [*rotated, *(Tensor(n, N * d * e, e, saved=True) for n in ("q", "k", "v"))]
        scores = Tensor("scores", bhtt, e, made_by=scores_op, flops=matmul)
        t.append(scores)
        if path == "vanilla" and s.padded:
            t.append(Tensor("padding_mask", B * T * T, 1, saved=True))  # masked_fill's mask
        t.append(Tensor("probs", bhtt, e, saved=True))
        if s.dropout > 0:
            t.append(Tensor("probs_mask", B * H * T * T * (1 if s.cuda else e), 1, saved=True))
            t.append(Tensor("probs_dropped", bhtt, e, saved=True))
        peak = len(t)  # re-run under checkpointing: the raw scores still beside the probs
        t.append(Tensor("av_out", N * d * e, e, made_by=BMM, flops=matmul))
        out_e = s.e if s.autocast else e
        out = Tensor("attn_out", N * d * out_e, out_e)  # the transpose's copy (or cast)
        t.append(out)
        # AV's backward: the probabilities' gradient (the out-projection's input is freed by
        # then); without dropout, the softmax's backward then holds the probabilities, their
        # gradient and the scores' gradient (v's copy and the out-projection's input freed).
        grad = bhtt if s.dropout > 0 else max(bhtt, 2 * bhtt - 2 * N * d * e)
        return Cost(
            t,
            out,
            backward_flops=2 * 2 * matmul,
            causal_flops=causal,
            backward_transient=grad,
            peak=peak,
            # v is a view of the qkv output, whose storage is therefore still alive, as are the
            # rotated q and k (the forward's locals)
            alive_at_peak=[scores, *(r for r in rotated if not r.saved)]
            + ([x] if x is not None else []),
            eval_transient=2 * bhtt,  # scores beside probabilities
        )

    def _fused(
        self, s: Site, x: Tensor | None, rotated: list[Tensor], matmul: int, causal: int
    ) -> Cost:
        B, T, N, d, e, H = s.B, s.T, s.N, s.d, s.e, self.n_heads
        # auto as the kernel it becomes here (fa4 or cudnn count the same: FA4's availability,
        # which this torch-free model cannot see, changes nothing).
        name = resolve(
            self.kernel.name, device=s.device, precision=s.precision, seq_len=T, dropout=s.dropout
        )
        k = kernel(name)
        op = k.aten if s.cuda else CPU_FUSED_OP
        # What the kernel keeps of q, k, v: RoPE's new q and k; with fewer K/V heads on a
        # "repeat" kernel, k and v copied to every query head; else views of the qkv output.
        repeat = self.n_kv_heads < H and k.gqa == "repeat"
        for r in rotated:
            r.saved = r.saved or r.name == "q_rot" or (r.name == "k_rot" and not repeat)
        copies = [Tensor(n, N * d * e, e, saved=True) for n in ("k_rep", "v_rep")] if repeat else []
        out = Tensor("attn_out", N * d * e, e, made_by=op, flops=2 * matmul)
        # The memory-efficient kernel pads its logsumexp to 32 rows.
        rows = -(-T // 32) * 32 if k.runs_as == "mem_efficient" else T
        t = [*rotated, *copies, out, Tensor("lse", B * H * rows * 4, 4, saved=True, made_by=op)]
        kv = N * d * e if repeat else N * d * e * self.n_kv_heads // H
        qkv = x.nbytes if x is not None else N * d * e + 2 * kv
        if s.padded and k.mask != "never":
            t.append(Tensor("attn_bias", B * T * T * e, e, saved=True))
        elif k.mask == "always" and s.cuda:
            t.append(Tensor("attn_bias", T * T * e, e, saved=True))  # the causal mask, per block
        return Cost(
            t,
            out,
            # v (and, without RoPE, q) is a view of the qkv projection's output, unless copied
            saves_input=not repeat or self.rope is None,
            backward_flops=2 * 2 * matmul,
            kernel_recompute_flops=matmul,  # the backward recomputes QK^T
            causal_flops=causal,
            # the kernel's dq, dk, dv and fp32 dq accumulator; then dq, dk, dv stacked into the
            # gradient of the qkv output
            backward_transient=max(N * d * e + 2 * kv + N * d * 4, 2 * qkv),
            eval_transient=4 * N * d * e,
        )

    def trace_work(self, operator: str, dims: list, types: list, group: str) -> float | None:
        layout = dict(self.kernel.trace_ops).get(operator)
        if group != "attention" or layout is None:
            return None
        return attention_flops(dims, layout, backward="backward" in operator)


def attention_flops(dims: list, layout: str, backward: bool) -> float | None:
    """FLOPs of one attention call from its traced shapes: forward 4 B H Tq Tk D (QK^T and AV),
    backward 2.5x that (it recomputes QK^T), halved when causal without a mask tensor.

    The first 4-D tensor is the query (the backward's first is the output gradient, of the
    query's shape), the next the key (the backward's third). `layout` is where B, H, T and D
    sit: "BHTD" (SDPA) or "BTHD" (FlashAttention's and FA4's own). A further tensor whose last
    two dims are (Tq, Tk) is a mask: the kernel then computes every score."""
    four = [x for x in dims if isinstance(x, list) and len(x) == 4 and _numel(x)]
    if len(four) < 2:
        return None
    q, key = four[0], four[2] if backward and len(four) > 2 else four[1]
    if layout == "BHTD":
        (b, h, tq, dh), tk = q, key[2]
    else:
        (b, tq, h, dh), tk = q, key[1]
    masked = any(
        isinstance(x, list) and len(x) >= 2 and x[-2:] == [tq, tk] and x[-1] != dh for x in dims
    )
    flops = 4.0 * b * h * tq * tk * dh * (2.5 if backward else 1.0)
    return flops if masked else flops / 2


def _numel(dims: list) -> int:
    n = 1
    for x in dims:
        n *= x if isinstance(x, int) else 0
    return n


def operator_ops() -> list[Attention]:
    """One description per kernel row that owns trace operators or kernel names (the rows that
    run as another kernel, and `auto`, own none): what the trace classifier loops over."""
    return [Attention(k) for k in KERNELS.values() if k.keys or k.trace_ops]
