"""A causal decoder-only Transformer (GPT-style), in one readable module.

Token embedding + positional encoding -> N blocks of (multi-head self-attention, MLP) with pre- or
post-LayerNorm -> final norm -> LM head tied to the embedding -> next-token cross-entropy that
ignores PAD targets (`model.loss`: the fused head + loss of ops/cross_entropy.py, or the plain
PyTorch reference of ops/pytorch_loss.py; the losses' list is ops/losses.py). Names follow "Attention Is All You Need" and GPT-2.

Llama-style choices (model.norm_type, pos_encoding, activation, n_kv_heads, tie_embeddings):
RMSNorm (Zhang & Sennrich 2019), rotary position embeddings on q and k (RoFormer, Su et al.
2021), the SwiGLU MLP (Shazeer 2020), grouped-query attention (Ainslie et al. 2023: n_kv_heads
K/V heads, each shared by n_heads / n_kv_heads query heads) and an LM head of its own. Layouts
are in the names where they matter: q_BTHD is (batch, time, heads, head dim).

Attention: `vanilla` materialises the T x T scores (the textbook formula); `sdpa_mask` hands an
explicit causal mask to PyTorch's scaled_dot_product_attention, as nn.MultiheadAttention does in
the course assignment's model; `sdpa` lets PyTorch choose a kernel for `is_causal`; `flash`,
`mem_efficient` and `cudnn` force one; `fa4` calls FlashAttention-4 (ops/flash_attn4.py);
`auto` becomes one of fa4, cudnn and sdpa when the model is built (`resolve_attention`). With
n_kv_heads < n_heads, flash, cudnn and fa4 take the K/V heads as they are; the others get each
one copied to the query heads it serves (attention_kernels.py's `gqa` column says which).

Padding convention: PAD only ever follows a row's real tokens (right padding). With a causal mask
a real query then never sees a PAD key, so the kernels that cannot take a mask (`flash`, `cudnn`,
`fa4`) are exact for every real token; `vanilla`, `sdpa_mask`, `sdpa` and `mem_efficient` still apply
the key-padding mask when a batch has padding. A batch with no padding takes the `is_causal` fast
path everywhere except in `vanilla` and `sdpa_mask`, whose point is the explicit mask.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lmprof import attention_kernels, precision
from lmprof.attention_kernels import kernel as attention_kernel
from lmprof.model_args import ModelArgs
from lmprof.model_ops import SELECTIVE_SAVES
from lmprof.ops import IGNORE_INDEX, flash_attn4, losses

__all__ = ["IGNORE_INDEX", "ModelArgs", "Transformer", "resolve_attention"]


def resolve_attention(args: ModelArgs, device: torch.device | str | None = None) -> str:
    """The kernel args.attention runs as on `device` (default: torch's default device, which
    the Trainer sets around the build): "auto" becomes fa4 from FA4_MIN_SEQ_LEN tokens where FA4
    runs, else cudnn on CUDA fp16/bf16, else sdpa; any other name stays itself."""
    dev = torch.device(device) if device is not None else torch.get_default_device()
    return attention_kernels.resolve(
        args.attention,
        device=dev.type,
        precision=args.precision,
        seq_len=args.max_seq_len,
        dropout=args.dropout,
        fa4_available=lambda: flash_attn4.is_available(dev.index),
    )


def _sdpa_backend(attention: str):
    """The context that forces one SDPA kernel, or None to let PyTorch choose."""
    name = attention_kernel(attention).sdpa_backend
    if name is None:
        return None
    from torch.nn.attention import SDPBackend

    return getattr(SDPBackend, name)


class RotaryEmbedding(nn.Module):
    """RoPE: each pair of a head's dimensions rotated by the angle position * theta^(-2i/D).
    The pairs are (i, i + D/2), Hugging Face Llama's rotate-half layout (not the paper's
    interleaved (2i, 2i + 1)), so the q/k projections of HF Llama checkpoints load as they are.
    One table for every block; cos and sin in fp32, cast to q's dtype where applied, as HF does."""

    def __init__(self, d_head: int, max_seq_len: int, theta: float):
        super().__init__()
        exponent = torch.arange(0, d_head, 2, dtype=torch.int64).float() / d_head
        inv_freq = 1.0 / theta**exponent
        angle_TD2 = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
        angle_TD = torch.cat((angle_TD2, angle_TD2), dim=-1)
        self.register_buffer("cos_TD", angle_TD.cos(), persistent=False)
        self.register_buffer("sin_TD", angle_TD.sin(), persistent=False)

    def forward(self, x_BTHD: torch.Tensor) -> torch.Tensor:
        T = x_BTHD.size(1)
        cos = self.cos_TD[:T, None, :].to(x_BTHD.dtype)  # (T, 1, D): broadcast over heads
        sin = self.sin_TD[:T, None, :].to(x_BTHD.dtype)
        x1, x2 = x_BTHD.chunk(2, dim=-1)
        return x_BTHD * cos + torch.cat((-x2, x1), dim=-1) * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, args: ModelArgs, rope: RotaryEmbedding | None = None):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.d_head = args.n_heads, args.kv_heads, args.d_head
        self.attention, self.dropout = args.attention, args.dropout
        kernel = attention_kernel(args.attention)
        if not kernel.dropout and args.dropout > 0:
            raise ValueError(f"attention {args.attention!r} has no dropout; set dropout=0")
        self.backend = _sdpa_backend(args.attention)
        # q, k and v in one matmul: n_heads query heads, then n_kv_heads key and value heads.
        qkv_dim = (self.n_heads + 2 * self.n_kv_heads) * self.d_head
        self.qkv = nn.Linear(args.d_model, qkv_dim, bias=args.bias)
        self.proj = nn.Linear(args.d_model, args.d_model, bias=args.bias)
        self.attn_dropout = nn.Dropout(args.dropout)
        self.rope = rope  # shared by every block (Transformer.rope); None without RoPE
        # Grouped-query attention: a kernel without it gets each K/V head copied to the
        # query heads it serves (attention_kernels.py's gqa column); the others take them as is.
        grouped = self.n_kv_heads < self.n_heads
        self.kv_repeat = self.n_heads // self.n_kv_heads if kernel.gqa == "repeat" else 1
        self.enable_gqa = grouped and self.kv_repeat == 1

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.d_head
        q, k, v = self.qkv(x).split((H * D, Hkv * D, Hkv * D), dim=-1)
        q_BTHD, k_BTHD, v_BTHD = q.view(B, T, H, D), k.view(B, T, Hkv, D), v.view(B, T, Hkv, D)
        if self.rope is not None:
            q_BTHD, k_BTHD = self.rope(q_BTHD), self.rope(k_BTHD)
        if self.attention == "fa4":
            # FA4 takes (B, T, H, D) with any 16-byte-aligned strides and fewer K/V heads: q, k
            # and v stay views of the qkv projection (no copy; RoPE writes new q and k), and its
            # O, (B, T, H, D) contiguous, is already the out-projection's (B, T, C) (no
            # transpose copy). The SDPA kernels want (B, H, T, D).
            scale = 1.0 / math.sqrt(D)
            y = flash_attn4.fa4_attention(q_BTHD, k_BTHD, v_BTHD, scale, causal=True)
            return self.proj(y.reshape(B, T, C))
        q, k, v = (t.transpose(1, 2) for t in (q_BTHD, k_BTHD, v_BTHD))
        if self.kv_repeat > 1:
            k, v = _repeat_kv(k, self.kv_repeat), _repeat_kv(v, self.kv_repeat)
        if self.attention == "vanilla":
            y = self._vanilla(q, k, v, key_padding)
        else:
            y = self._sdpa(q, k, v, key_padding)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def _vanilla(self, q, k, v, key_padding):
        """softmax(QK^T / sqrt(d) + mask) V with the T x T matrix materialised: the baseline."""
        B, H, T, D = q.shape
        scale = 1.0 / math.sqrt(D)
        # The matmuls already ran in the autocast dtype; keep the softmax there too (its kernel
        # accumulates in fp32) instead of autocast's fp32 copy of a B*H*T*T tensor.
        with torch.autocast(q.device.type, enabled=False):
            if key_padding is None:
                # One kernel for scale + causal mask: the additive bias rides on the matmul.
                bias = _causal_bias(T, q.dtype, q.device)
                att = torch.baddbmm(
                    bias,
                    q.reshape(B * H, T, D),
                    k.reshape(B * H, T, D).transpose(1, 2),
                    alpha=scale,
                ).view(B, H, T, T)
            else:
                # Out of place: selective checkpointing keeps the matmul's output, and an in-place
                # edit would be applied twice when the block is recomputed.
                att = (q @ k.transpose(-2, -1)) * scale
                att = att.masked_fill(~_attention_mask(T, key_padding, q.device), float("-inf"))
            att = self.attn_dropout(att.softmax(dim=-1))
            return att @ v

    def _sdpa(self, q, k, v, key_padding):
        p = self.dropout if self.training else 0.0
        mask = attention_kernel(self.attention).mask
        use_mask = mask == "always" or (key_padding is not None and mask == "padding")
        ctx = nullcontext() if self.backend is None else _sdpa_kernel(self.backend)
        with ctx:
            gqa = {"enable_gqa": True} if self.enable_gqa else {}  # keeps MHA calls as they were
            if use_mask:
                mask = _attention_mask(q.size(-2), key_padding, q.device)
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, **gqa)
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, **gqa)


def _repeat_kv(x_BHTD: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, Hkv, T, D) -> (B, Hkv * n_rep, T, D), K/V head j serving query heads j * n_rep to
    (j + 1) * n_rep - 1: the grouping of SDPA's enable_gqa, FA4 and Hugging Face's repeat_kv."""
    B, Hkv, T, D = x_BHTD.shape
    return x_BHTD[:, :, None].expand(B, Hkv, n_rep, T, D).reshape(B, Hkv * n_rep, T, D)


def _sdpa_kernel(backend):
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel([backend])


def _causal_bias(T: int, dtype: torch.dtype, device) -> torch.Tensor:
    """0 on and below the diagonal, -inf above: an additive causal mask."""
    return torch.full((T, T), float("-inf"), dtype=dtype, device=device).triu_(1)


def _attention_mask(T: int, key_padding: torch.Tensor | None, device) -> torch.Tensor:
    """True where query i may attend key j: causal, not PAD, and always itself (no empty row)."""
    idx = torch.arange(T, device=device)
    causal = idx[None, :] <= idx[:, None]
    if key_padding is None:
        return causal
    eye = idx[None, :] == idx[:, None]
    return (causal & key_padding[:, None, None, :]) | eye


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.fc = nn.Linear(args.d_model, args.d_ff, bias=args.bias)
        self.proj = nn.Linear(args.d_ff, args.d_model, bias=args.bias)
        self.act = nn.GELU(approximate="tanh") if args.activation == "gelu" else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class SwiGLU(nn.Module):
    """Llama's MLP: proj(silu(x W_gate) * x W_up). The gate and up projections are one matmul
    (`fc`: gate rows, then up rows), as q, k and v are."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.fc = nn.Linear(args.d_model, 2 * args.d_ff, bias=args.bias)
        self.proj = nn.Linear(args.d_ff, args.d_model, bias=args.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


# LayerNorm's default; Llama's, SmolLM's and TinyLlama's rms_norm_eps.
NORM_EPS = 1e-5


def _norm(args: ModelArgs) -> nn.Module:
    if args.norm_type == "rmsnorm":  # no mean subtracted, no bias
        return nn.RMSNorm(args.d_model, eps=NORM_EPS)
    return nn.LayerNorm(args.d_model, eps=NORM_EPS, bias=args.bias)


class Block(nn.Module):
    def __init__(self, args: ModelArgs, rope: RotaryEmbedding | None = None):
        super().__init__()
        self.pre_norm = args.norm == "pre"
        self.ln1 = _norm(args)
        self.attn = CausalSelfAttention(args, rope)
        self.ln2 = _norm(args)
        self.mlp = SwiGLU(args) if args.activation == "swiglu" else MLP(args)
        self.drop = nn.Dropout(args.dropout)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.drop(self.attn(self.ln1(x), key_padding))
            return x + self.drop(self.mlp(self.ln2(x)))
        x = self.ln1(x + self.drop(self.attn(x, key_padding)))
        return self.ln2(x + self.drop(self.mlp(x)))


def sinusoidal_table(max_len: int, d_model: int) -> torch.Tensor:
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(1e4) / d_model)
    )
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: d_model // 2])
    return table


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        # Once, here: every block then runs the same concrete kernel, and self.args says which.
        args = dataclasses.replace(args, attention=resolve_attention(args))
        self.args = args
        V = args.padded_vocab_size
        self.tok_emb = nn.Embedding(V, args.d_model)
        self.rope = None
        if args.pos_encoding == "learned":
            self.pos_emb = nn.Embedding(args.max_seq_len, args.d_model)
        elif args.pos_encoding == "sinusoidal":
            self.register_buffer(
                "pos_table", sinusoidal_table(args.max_seq_len, args.d_model), persistent=False
            )
        else:  # rope: nothing added to the embedding; each block rotates its q and k
            self.rope = RotaryEmbedding(args.d_head, args.max_seq_len, args.rope_theta)
        self.drop = nn.Dropout(args.dropout)
        self.blocks = nn.ModuleList(Block(args, self.rope) for _ in range(args.n_layers))
        # system.compile_scope=region (set by the trainer): the blocks run as one nested region.
        self.compile_region = False
        # The residual stream's dtype when it is not left to the embedding's (fp32 under
        # autocast; FSDP's mixed precision casts the parameters, so there it is the compute one).
        compute = args.residual_stream == "compute"
        self.stream_dtype = precision.torch_dtype(args.stream_dtype) if compute else None
        # Post-norm blocks already end in a norm; a pre-norm stack needs a final one.
        self.ln_f = _norm(args) if args.norm == "pre" else nn.Identity()
        self.lm_head = nn.Linear(args.d_model, V, bias=False)
        if args.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        # The head's weight and the loss: one class per `model.loss` (ops/losses.py).
        self.loss = losses.loss(args.loss, args).build(args)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layers).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * args.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if not self.args.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def hidden_states(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None):
        T = idx.size(1)
        x = self.tok_emb(idx)
        if self.args.pos_encoding == "learned":
            x = x + self.pos_emb(torch.arange(T, device=idx.device))
        elif self.args.pos_encoding == "sinusoidal":
            x = x + self.pos_table[:T].to(x.dtype)
        x = self.drop(x)
        if self.stream_dtype is not None:  # residual_stream=compute: not the tables' fp32
            x = x.to(self.stream_dtype)
        for block in self.blocks:
            x = self._run_block(block, x, attention_mask)
        return self.ln_f(x)

    def _run_block(self, block: Block, x, key_padding):
        call = _block_region if self.compile_region else _call_block
        mode = self.args.checkpointing
        if mode == "none" or not self.training:
            return call(block, x, key_padding)
        if mode == "full":
            return checkpoint(call, block, x, key_padding, use_reentrant=False)
        return checkpoint(
            call, block, x, key_padding, use_reentrant=False, context_fn=_selective_policy_context
        )

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        accuracy: bool = False,
    ):
        """Logits (B, T, V) without targets; with targets, a LossOutput: the loss SUMMED over
        the real (non-PAD) targets and, when `accuracy` is asked, how many the argmax got
        right. The caller divides by the real-token count its batch already holds (no sync)."""
        h = self.hidden_states(idx, attention_mask)
        if targets is None:
            return self.lm_head(h)
        h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)
        return self.loss(h, self.lm_head.weight, targets, accuracy)


def _call_block(block: Block, x: torch.Tensor, key_padding: torch.Tensor | None) -> torch.Tensor:
    return block(x, key_padding)


# One function for every layer, so torch.compile lowers it once and calls that code n_layers
# times (hierarchical compilation); outside torch.compile it is _call_block.
_block_region = torch.compiler.nested_compile_region(_call_block)


def _selective_policy_context():
    """Selective activation checkpointing: keep the outputs of the operators model_ops.py's
    SELECTIVE_SAVES names (matmuls, attention), recompute the cheap pointwise ops (norms,
    activations; dropout masks are replayed from the RNG state)."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    save = _selective_saves()

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in save else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


@functools.cache
def _selective_saves() -> frozenset:
    """SELECTIVE_SAVES's names as torch's operators (aten.mm.default: torch.ops.aten.mm.default),
    resolved once: the context is made for every checkpointed block call."""
    ops = set()
    for name in SELECTIVE_SAVES:
        namespace, op, overload = name.split(".")
        ops.add(getattr(getattr(getattr(torch.ops, namespace), op), overload))
    return frozenset(ops)
