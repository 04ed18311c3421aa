"""model.py's operations described (ops/spec.py), and its block as a list of them; torch-free.

`block_ops(args)` is a block in the order model.py's `Block.forward` runs it, `embedding_ops` and
`head_ops` what runs before and after the blocks (the head ends in the loss, ops/losses.py).
The memory model, the FLOP count and `lmprof estimate` read these; the descriptions of
attention (attention_kernels.py) and of the losses (ops/losses.py) sit beside their own code.

Under autocast the residual stream and the LayerNorms stay fp32 (the parameters are fp32 and
LayerNorm autocasts to fp32); a matmul reading an fp32 tensor keeps an autocast-dtype copy of it
for the backward, and one of its weight (cached for the whole forward). With residual_stream
compute the stream is in autocast's dtype from the embedding on: on CUDA autocast runs each norm
on an fp32 copy of it (the copy is what the norm keeps), on the CPU the norms take it as it is.
"""

from __future__ import annotations

from typing import Any

from lmprof import attention_kernels
from lmprof.ops import losses
from lmprof.ops.spec import Cost, Op, Site, Tensor

# model.py's selective activation checkpointing keeps the outputs of these operators and
# recomputes everything else (norms, activations; dropout masks are replayed from the RNG). The
# one place the policy is declared: model.py turns the names into torch's ops.
SELECTIVE_SAVES = frozenset(
    {
        "aten.mm.default",
        "aten.addmm.default",
        "aten.bmm.default",
        "aten.baddbmm.default",
        "aten._scaled_dot_product_flash_attention.default",
        "aten._scaled_dot_product_efficient_attention.default",
        "aten._scaled_dot_product_cudnn_attention.default",
        "lmprof.fa4_attention.default",
    }
)


def selective_keeps(t: Tensor) -> bool:
    """Selective checkpointing keeps `t` (it is an output of an operator the policy saves)."""
    return t.made_by in SELECTIVE_SAVES


class Linear(Op):
    """nn.Linear: y = x W^T + b (FLOPs 2 N d_in d_out forward, twice that backward)."""

    group = "matmul"
    keys = ("gemm", "nvjet", "xmma", "cutlass", "cublas", "matmul", "triton_tem_fused_mm")
    operators = (
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::baddbmm",
        "aten::_addmm_activation",
        "aten::linear",
        "aten::matmul",
    )

    def __init__(self, name: str = "matmul", d_in: int = 0, d_out: int = 0, bias: bool = True):
        self.name, self.d_in, self.d_out, self.bias = name, d_in, d_out, bias

    def cost(self, s: Site, x: Tensor | None) -> Cost:
        N, e = s.N, s.e
        matmul = 2 * N * self.d_in * self.d_out
        cast = s.autocast and x is not None and x.itemsize != e
        t = [Tensor(f"{self.name}_in", N * self.d_in * e, e, saved=True)] if cast else []
        made_by = "aten.addmm.default" if self.bias else "aten.mm.default"
        out = Tensor(f"{self.name}_out", N * self.d_out * e, e, made_by=made_by, flops=matmul)
        t.append(out)
        if s.autocast:  # autocast's copy of the weight, kept by the matmul for its backward
            w = self.d_in * self.d_out * e
            t.append(Tensor(f"{self.name}_weight", w, e, saved=True, kind="weights"))
        return Cost(t, out, saves_input=not cast, backward_flops=2 * matmul)

    def params(self, args: Any) -> int:
        return self.d_in * self.d_out + (self.d_out if self.bias else 0)

    def trace_work(self, operator: str, dims: list, types: list, group: str) -> float | None:
        return matmul_flops(operator, dims) if group == "matmul" else None


def matmul_flops(op: str, dims: list) -> float | None:
    """2 M N K of a traced matmul operator, from its input shapes."""
    o = op.lower()
    shapes = [d for d in dims if isinstance(d, list) and d]
    try:
        if o == "aten::mm":
            (m, k), (_, n) = shapes[0], shapes[1]
            return 2.0 * m * n * k
        if o in ("aten::addmm", "aten::_addmm_activation"):
            (m, k), (_, n) = shapes[-2], shapes[-1]
            return 2.0 * m * n * k
        if o == "aten::bmm":
            (b, m, k), (_, _, n) = shapes[0], shapes[1]
            return 2.0 * b * m * n * k
        if o == "aten::baddbmm":
            (b, m, k), (_, _, n) = shapes[-2], shapes[-1]
            return 2.0 * b * m * n * k
        if o == "aten::linear":
            x, w = shapes[0], shapes[1]
            return 2.0 * _prod(x[:-1]) * x[-1] * w[0]
        if o == "aten::matmul":
            a, b = shapes[0], shapes[1]
            if len(a) >= 2 and len(b) == 2:
                return 2.0 * _prod(a[:-1]) * a[-1] * b[1]
            if len(a) >= 3 and len(a) == len(b):
                return 2.0 * _prod(a[:-2]) * a[-2] * a[-1] * b[-1]
    except (ValueError, IndexError, TypeError):
        return None
    return None


def _prod(xs: list) -> int:
    n = 1
    for x in xs:
        n *= x
    return n


class LayerNorm(Op):
    """nn.LayerNorm: keeps its (fp32) input and each row's mean and rstd."""

    group = "normalisation"
    keys = ("layer_norm", "layernorm", "rms_norm", "rmsnorm", "gammabeta", "batch_norm")

    def __init__(self, name: str = "layer_norm", d: int = 0, bias: bool = True):
        self.name, self.d, self.bias = name, d, bias

    def cost(self, s: Site, x: Tensor | None) -> Cost:
        copy, e = self._input(s, x)
        stats = Tensor(f"{self.name}_stats", 2 * s.N * 4, 4, saved=True)
        out = Tensor(f"{self.name}_out", s.N * self.d * e, e)
        return Cost([*copy, stats, out], out, saves_input=not copy)

    def _input(self, s: Site, x: Tensor | None) -> tuple[list[Tensor], int]:
        """The fp32 copy CUDA's autocast makes of a low-precision input (kept in its place),
        and the bytes of an output element: fp32, or the input's on the CPU, whose autocast
        leaves the norms to run on it."""
        low = x is not None and x.itemsize != 4
        if not low:
            return [], 4
        if s.cuda and s.autocast:
            return [Tensor(f"{self.name}_in", s.N * self.d * 4, 4, saved=True)], 4
        return [], x.itemsize

    def params(self, args: Any) -> int:
        return self.d * (2 if self.bias else 1)


class RMSNorm(LayerNorm):
    """nn.RMSNorm (fp32 under autocast, as LayerNorm): keeps its input and each row's rstd. On
    CUDA F.rms_norm runs torch's fused kernel; on the CPU it is decomposed (x * rstd, then the
    weight), which also keeps the normalised x for the weight's gradient. A low-precision input
    (residual_stream compute) is copied to fp32 first, by CUDA's autocast or by the CPU's
    decomposition, and the copy is what it keeps."""

    def cost(self, s: Site, x: Tensor | None) -> Cost:
        nd = s.N * self.d
        low = x is not None and x.itemsize != 4
        t = [Tensor(f"{self.name}_in", nd * 4, 4, saved=True)] if low else []
        t.append(Tensor(f"{self.name}_rstd", s.N * 4, 4, saved=True))
        if not s.cuda:
            t.append(Tensor(f"{self.name}_normed", nd * 4, 4, saved=True))
        e = x.itemsize if low and not s.cuda else 4  # the CPU's result is cast back
        out = Tensor(f"{self.name}_out", nd * e, e)
        # The decomposed backward's fp32 gradients of x * rstd and of x, beside the incoming one
        # (autocast's dtype) cast to fp32; the fused kernel's are one gradient, not counted, as
        # LayerNorm's are not.
        grads = 0 if s.cuda else 2 * nd * 4 + (nd * s.e if s.autocast else 0)
        return Cost([*t, out], out, saves_input=not low, backward_transient=grads)

    def params(self, args: Any) -> int:
        return self.d


class Activation(Op):
    """The MLP's activation: tanh-GELU keeps its input, ReLU its output."""

    def __init__(self, kind: str, width: int):
        self.name, self.kind, self.width = kind, kind, width

    def cost(self, s: Site, x: Tensor | None) -> Cost:
        relu = self.kind == "relu"
        out = Tensor("act_out", s.N * self.width * s.e, s.e, saved=relu)
        # Its backward: the gradient of its output, then of its input; ReLU's output (which it
        # keeps) is freed only after its own backward.
        grad = s.N * self.width * s.e * (2 if relu else 1)
        return Cost([out], out, saves_input=not relu, backward_transient=grad)


class SwiGLU(Op):
    """The SwiGLU MLP's middle, silu(gate) * up, reading the fused gate/up projection's output
    (2 x width): silu keeps gate (so the whole projection output, gate being a view of it), the
    product keeps silu's output and up (the same storage); the down-projection keeps the product.
    Its FLOPs are elementwise (not counted, as FlopCounterMode counts matmuls)."""

    name = "swiglu"

    def __init__(self, width: int):
        self.width = width

    def cost(self, s: Site, x: Tensor | None) -> Cost:
        N, f, e = s.N, self.width, s.e
        silu = Tensor("silu_out", N * f * e, e, saved=True)
        out = Tensor("swiglu_out", N * f * e, e)
        # Its backward, at its largest: the gradients of gate and up stacked into that of the
        # projection output (2 x width: 4 widths), less the product and silu's output, freed by
        # then (their backward nodes have run).
        return Cost([silu, out], out, saves_input=True, backward_transient=2 * N * f * e)


class Rope(Op):
    """model.py's RotaryEmbedding applied to q and k (run inside the attention: `Attention` reads
    this description for the tensors it makes). Under autocast each call casts its T x D cos and
    sin tables to q's dtype and the multiplications keep the casts; in fp32 they are views of
    the fp32 tables. Whether the attention keeps the rotated q and k depends on its kernel."""

    name = "rope"

    def __init__(self, n_heads: int, n_kv_heads: int, d_head: int):
        self.n_heads, self.n_kv_heads, self.d_head = n_heads, n_kv_heads, d_head

    def cost(self, s: Site, x: Tensor | None) -> Cost:
        e, D = s.e, self.d_head
        casts = [
            Tensor(f"rope_{w}_{qk}", s.T * D * e, e, saved=True)
            for qk in ("q", "k")
            for w in ("cos", "sin")
            if s.autocast
        ]
        q = Tensor("q_rot", s.N * self.n_heads * D * e, e)
        k = Tensor("k_rot", s.N * self.n_kv_heads * D * e, e)
        return Cost([*casts, q, k], q)


class Dropout(Op):
    """nn.Dropout in training: keeps its mask (one byte an element on CUDA, the input's dtype on
    the CPU); nothing at p = 0."""

    def __init__(self, name: str = "dropout"):
        self.name = name

    def cost(self, s: Site, x: Tensor | None) -> Cost:
        if s.dropout <= 0 or x is None:
            return Cost()
        numel = x.nbytes // x.itemsize
        mask = Tensor(f"{self.name}_mask", numel * (1 if s.cuda else x.itemsize), 1, saved=True)
        out = Tensor(f"{self.name}_out", x.nbytes, x.itemsize)
        return Cost([mask, out], out)


class Residual(Op):
    """x + branch(x): the residual stream, fp32 unless residual_stream compute (the branch's
    autocast output is promoted to it). It closes a sub-block: the memory model frees a
    sub-block's tensors when its backward is done."""

    def __init__(self, name: str = "residual"):
        self.name = name

    def cost(self, s: Site, x: Tensor | None) -> Cost:
        out = Tensor(f"{self.name}_sum", s.N * s.d * s.stream, s.stream)
        return Cost([out], out)

    def stream_gradient(self, s: Site) -> int:
        """The stream's gradient alive through a block's backward, plus its autocast-dtype copy
        for the branch when the stream is fp32."""
        copy = s.N * s.d * s.e if s.autocast and s.stream != s.e else 0
        return s.N * s.d * s.stream + copy


class Embedding(Op):
    """Token embedding plus positions (a learned table, or a fixed sinusoidal buffer)."""

    def __init__(self, args: Any):
        self.name = "embedding"
        self.learned = getattr(args, "pos_encoding", "learned") == "learned"
        self.tied = bool(getattr(args, "tie_embeddings", True))

    def cost(self, s: Site, x: Tensor | None) -> Cost:
        # The position embedding keeps its int64 position ids (the token ids are the batch's).
        t = [Tensor("pos_idx", s.T * 8, 8, saved=True)] if self.learned else []
        out = Tensor("embedding_out", s.N * s.d * 4, 4)
        # Its backward: the embedding's gradient, with a tied head a second V x d fp32 buffer
        # until it is added into the head's, and two fp32 gradients of the stream.
        tied = s.vocab * s.d * 4 if self.tied else 0
        return Cost([*t, out], out, backward_transient=tied + 2 * s.N * s.d * 4)

    def params(self, args: Any) -> int:
        d = int(args.d_model)
        return Site(args, 1, 1, "fp32").vocab * d + (
            int(args.max_seq_len) * d if self.learned else 0
        )

    def buffers(self, args: Any) -> int:
        """The position tables, non-persistent buffers (fp32): the sinusoidal one, or RoPE's cos
        and sin (one pair shared by every block)."""
        pos = getattr(args, "pos_encoding", "learned")
        if pos == "rope":
            return 2 * int(args.max_seq_len) * (int(args.d_model) // int(args.n_heads)) * 4
        return 0 if self.learned else int(args.max_seq_len) * int(args.d_model) * 4


class StreamCast(Op):
    """residual_stream compute: the embedding's fp32 output cast to the stream's dtype (its
    backward casts the stream's gradient back to fp32). Nothing with an fp32 stream."""

    name = "stream_cast"
    group = "copies"

    def cost(self, s: Site, x: Tensor | None) -> Cost:
        if s.stream == 4 or x is None:
            return Cost()
        out = Tensor("stream_in", s.N * s.d * s.stream, s.stream)
        return Cost([out], out, backward_transient=s.N * s.d * 4)


def block_ops(args: Any) -> list[Op]:
    """One block, in the order model.py's Block.forward runs it (pre- or post-norm)."""
    d, f, bias = int(args.d_model), int(args.d_ff), bool(getattr(args, "bias", True))
    H = int(args.n_heads)
    Hkv, D = int(getattr(args, "n_kv_heads", 0) or H), d // H
    rope = Rope(H, Hkv, D) if getattr(args, "pos_encoding", "learned") == "rope" else None
    attention = attention_kernels.Attention(
        attention_kernels.kernel(getattr(args, "attention", "sdpa")), H, Hkv, rope
    )
    attn = [Linear("qkv", d, (H + 2 * Hkv) * D, bias), attention, Linear("proj", d, d, bias)]
    attn += [Dropout("drop1"), Residual("add1")]
    act = getattr(args, "activation", "gelu")
    if act == "swiglu":  # gate and up in one matmul, as model.py's SwiGLU
        mlp = [Linear("fc", d, 2 * f, bias), SwiGLU(f)]
    else:
        mlp = [Linear("fc", d, f, bias), Activation(act, f)]
    mlp += [Linear("down", f, d, bias), Dropout("drop2"), Residual("add2")]
    ln1, ln2 = norm("ln1", args), norm("ln2", args)
    if getattr(args, "norm", "pre") == "pre":
        return [ln1, *attn, ln2, *mlp]
    return [*attn, ln1, *mlp, ln2]


def norm(name: str, args: Any) -> LayerNorm:
    """model.py's _norm: RMSNorm or LayerNorm (with the model's bias)."""
    d = int(args.d_model)
    if getattr(args, "norm_type", "layernorm") == "rmsnorm":
        return RMSNorm(name, d, bias=False)
    return LayerNorm(name, d, bool(getattr(args, "bias", True)))


def embedding_ops(args: Any) -> list[Op]:
    """What runs before the blocks."""
    return [Embedding(args), Dropout("emb_drop"), StreamCast()]


def head_ops(args: Any) -> list[Op]:
    """What runs after the blocks: a pre-norm stack's final LayerNorm, then the LM head and the
    loss (`model.loss`, ops/losses.py)."""
    final = [norm("ln_f", args)] if getattr(args, "norm", "pre") == "pre" else []
    return [*final, losses.loss(getattr(args, "loss", losses.DEFAULT), args)]


def count_params(args: Any) -> int:
    """Parameters of lmprof.model.Transformer(args), without building it (checked by a test
    against the real module on the meta device)."""
    ops = [*embedding_ops(args), *head_ops(args)]
    return sum(op.params(args) for op in ops) + int(args.n_layers) * sum(
        op.params(args) for op in block_ops(args)
    )
