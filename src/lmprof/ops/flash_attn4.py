"""FlashAttention-4 (`flash-attn-4`, module `flash_attn.cute`: CuTe-DSL kernels for Hopper and
Blackwell) as a PyTorch custom operator.

FA4's own `flash_attn_func` is a `torch.autograd.Function` around JIT-compiled CuTe kernels that
Dynamo cannot trace, so a compiled model would break its graph at every attention layer. Here
the kernels sit behind two custom ops instead, `lmprof::fa4_attention` (forward: O and the
row-wise log-sum-exp L) and `lmprof::fa4_attention_backward` (dQ, dK, dV from dO, O and L, as
in FlashAttention-2's backward), each with a fake (shapes, dtypes and strides only) and the
forward's autograd formula registered: torch.compile keeps one graph and calls the kernels as
they are.

Layout: q, k, v and O are (B, T, H, D) (batch, sequence, heads, head dim), FA4's layout; k and
v may have fewer heads, a divisor of q's (grouped-query attention, which FA4 runs natively); L is
fp32 (B, H, T). The kernels take any strides whose last one is 1 and whose others are multiples
of 16 bytes, so the model hands over views of its fused qkv projection without a copy.

`flash_attn` is imported only when a kernel runs or `is_available()` asks: the package (and its
CUTLASS DSL) is an optional extra, `pip install 'lmprof[fa4]'`. The kernels are looked up
through `_kernels`, so a test can stand the pure-PyTorch `REFERENCE` in for them (`use_kernels`)
and check the operator's wiring on a CPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import (
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from lmprof.ops import import_problem

__all__ = [
    "INSTALL_HINT",
    "REFERENCE",
    "Kernels",
    "fa4_attention",
    "is_available",
    "unavailable_reason",
    "use_kernels",
]

INSTALL_HINT = "pip install 'lmprof[fa4]'"
# FA4's backward has kernels for SM 9.x (Hopper) and 10.x-12.x (Blackwell) only.
MIN_CAPABILITY = (9, 0)


@dataclass(frozen=True)
class Kernels:
    """The two kernels behind the ops (FA4's, or a stand-in with the same contract).

    forward(q, k, v, softmax_scale, causal) -> (O, L): O like q's shape, contiguous, q's dtype;
    L fp32 (B, H, T), contiguous.
    backward(dO, q, k, v, O, L, softmax_scale, causal) -> (dQ, dK, dV), contiguous, q's dtype.
    """

    forward: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    backward: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


# None: FA4's kernels, imported on first use. A module-level hook rather than an argument of the
# op: the op's schema stays tensors and scalars, and torch.compile's graph calls the op, which
# reads the hook when it runs.
_kernels: Kernels | None = None


@contextmanager
def use_kernels(kernels: Kernels | None) -> Iterator[None]:
    """Run the ops on `kernels` inside the block (None: FA4's); for tests and CPU checks."""
    global _kernels
    saved, _kernels = _kernels, kernels
    try:
        yield
    finally:
        _kernels = saved


# ---- availability -----------------------------------------------------------------------------


@functools.cache
def _import_error() -> str | None:
    """Why `flash_attn.cute` does not import, or None (imported once, then cached)."""
    return import_problem("flash_attn.cute.interface")


def unavailable_reason(device: int | None = None) -> str | None:
    """Why FA4 cannot run on CUDA device `device` (default: the current one), or None.

    Reads the compute capability through torch (CUDA's runtime, no context is made) only when the
    package imports; the message is one line that says what to do.
    """
    err = _import_error()
    if err is not None:
        return (
            f"attention 'fa4' needs the flash-attn-4 package ({INSTALL_HINT}); "
            f"importing flash_attn.cute failed: {err}"
        )
    if not torch.cuda.is_available():
        return "attention 'fa4' needs a CUDA GPU (Hopper or Blackwell, sm90+)"
    cap = torch.cuda.get_device_capability(device)
    if cap < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return (
            f"attention 'fa4' needs a Hopper or Blackwell GPU (sm90+); {name} is "
            f"sm{cap[0]}{cap[1]} (use cudnn or flash)"
        )
    return None


def is_available(device: int | None = None) -> bool:
    """flash_attn.cute imports and the GPU is sm90 or newer."""
    return unavailable_reason(device) is None


# ---- the public entry -------------------------------------------------------------------------


def fa4_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    softmax_scale: float | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """softmax(Q K^T * scale, causal) V for (B, T, H, D) q, k, v; returns O, (B, T, H, D).

    scale defaults to 1 / sqrt(D). fp16/bf16 on an sm90+ GPU with FA4's kernels; any dtype and
    device with a stand-in (`use_kernels`).
    """
    scale = 1.0 / math.sqrt(q.size(-1)) if softmax_scale is None else float(softmax_scale)
    out, _lse = torch.ops.lmprof.fa4_attention(q, k, v, scale, causal)
    return out


# ---- FA4's kernels ----------------------------------------------------------------------------


def _fa4_forward(q, k, v, softmax_scale: float, causal: bool):
    if not q.is_cuda:  # FA4 asserts; a RuntimeError reads as "not available" in debug_flash
        raise RuntimeError("attention 'fa4' runs on CUDA tensors only")
    from flash_attn.cute.interface import _flash_attn_fwd

    # return_lse: inside a custom op nothing requires grad, and FA4 only allocates L when asked
    # or when an input requires grad. It returns (out, lse, p, row_max, o_lo); the last three are
    # for its sparse-MLA path and are None here.
    out, lse, *_ = _flash_attn_fwd(
        q, k, v, softmax_scale=softmax_scale, causal=causal, return_lse=True
    )
    return out, lse


def _fa4_backward(dout, q, k, v, out, lse, softmax_scale: float, causal: bool):
    from flash_attn.cute.interface import _flash_attn_bwd

    # FA4 allocates dQ/dK/dV with empty_like, which keeps a dense input's strides and makes a
    # strided view's gradient contiguous; allocating them contiguous here keeps the fake exact.
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    dq, dk, dv = _flash_attn_bwd(
        q, k, v, out, dout, lse, softmax_scale, causal, dq=dq, dk=dk, dv=dv
    )[:3]
    return dq, dk, dv


def _current() -> Kernels:
    if _kernels is not None:
        return _kernels
    err = _import_error()
    if err is not None:  # a RuntimeError: debug_flash's table reports it as "not available"
        raise RuntimeError(
            f"attention 'fa4' needs the flash-attn-4 package ({INSTALL_HINT}): {err}"
        )
    return Kernels(_fa4_forward, _fa4_backward)


# ---- the stand-in: FlashAttention's arithmetic in plain PyTorch (fp32) ------------------------


def _heads_bhtd(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, Hkv, D) -> fp32 (B, H, T, D), each K/V head repeated for the n_heads / Hkv query
    heads it serves (grouped-query attention, FA4's grouping); H = Hkv: the transpose only."""
    return t.transpose(1, 2).float().repeat_interleave(n_heads // t.size(2), dim=1)


def _reference_forward(q, k, v, softmax_scale: float, causal: bool):
    """S = Q K^T * scale (causal: -inf above the diagonal), L = logsumexp(S), P = exp(S - L),
    O = P V; in fp32, O cast back to q's dtype."""
    qh, kh, vh = (_heads_bhtd(t, q.size(2)) for t in (q, k, v))  # (B, H, T, D)
    s = (qh @ kh.transpose(-2, -1)) * softmax_scale
    if causal:
        T, S = s.shape[-2:]
        s = s.masked_fill(torch.ones(T, S, dtype=torch.bool, device=s.device).triu(1), -math.inf)
    lse = torch.logsumexp(s, dim=-1)
    out = torch.exp(s - lse[..., None]) @ vh
    return out.transpose(1, 2).contiguous().to(q.dtype), lse.contiguous()


def _reference_backward(dout, q, k, v, out, lse, softmax_scale: float, causal: bool):
    """FlashAttention-2's backward (Dao 2023, Algorithm 2), unblocked: P = exp(S - L) rebuilt
    from L, dV = P^T dO, dP = dO V^T, D = rowsum(dO * O), dS = P * (dP - D), dQ = dS K * scale,
    dK = dS^T Q * scale; with fewer K/V heads, dK and dV summed over the query heads each serves."""
    qh, kh, vh, oh, doh = (_heads_bhtd(t, q.size(2)) for t in (q, k, v, out, dout))
    s = (qh @ kh.transpose(-2, -1)) * softmax_scale
    if causal:
        T, S = s.shape[-2:]
        s = s.masked_fill(torch.ones(T, S, dtype=torch.bool, device=s.device).triu(1), -math.inf)
    p = torch.exp(s - lse[..., None])
    dv = p.transpose(-2, -1) @ doh
    dp = doh @ vh.transpose(-2, -1)
    delta = (doh * oh).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    dq = (ds @ kh) * softmax_scale
    dk = (ds.transpose(-2, -1) @ qh) * softmax_scale
    B, H, T, D = dk.shape
    dk, dv = (g.view(B, k.size(2), H // k.size(2), T, D).sum(2) for g in (dk, dv))
    return tuple(g.transpose(1, 2).contiguous().to(t.dtype) for g, t in ((dq, q), (dk, k), (dv, v)))


REFERENCE = Kernels(_reference_forward, _reference_backward)


# ---- the operators ----------------------------------------------------------------------------


@torch.library.custom_op("lmprof::fa4_attention", mutates_args=())
def _fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(O (B, T, H, D) in q's dtype, L fp32 (B, H, T))."""
    return _current().forward(q, k, v, softmax_scale, causal)


@_fwd_op.register_fake
def _(q, k, v, softmax_scale, causal):
    B, T, H, _ = q.shape
    # What _flash_attn_fwd allocates: O contiguous with v's head dim, L fp32 (B, H, T).
    out = q.new_empty((B, T, H, v.shape[-1]))
    return out, q.new_empty((B, H, T), dtype=torch.float32)


@torch.library.custom_op("lmprof::fa4_attention_backward", mutates_args=())
def _bwd_op(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    softmax_scale: float,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dQ, dK, dV), contiguous, in the inputs' dtypes."""
    return _current().backward(dout, q, k, v, out, lse, softmax_scale, causal)


@_bwd_op.register_fake
def _(dout, q, k, v, out, lse, softmax_scale, causal):
    return tuple(t.new_empty(t.shape) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, softmax_scale, causal = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.softmax_scale, ctx.causal = softmax_scale, causal
    # L is saved for the backward, not a differentiable result: its gradient (dlse) is ignored.
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse = ctx.saved_tensors
    if dout is None:  # O was not used: no gradient flows
        return None, None, None, None, None
    dq, dk, dv = torch.ops.lmprof.fa4_attention_backward(
        dout.contiguous(), q, k, v, out, lse, ctx.softmax_scale, ctx.causal
    )
    return dq, dk, dv, None, None


torch.library.register_autograd("lmprof::fa4_attention", _backward, setup_context=_setup_context)


# FlopCounterMode counts these as it counts SDPA (the full T x T, as torch's formulas do; shapes
# turned from FA4's (B, T, H, D) into SDPA's (B, H, T, D)).
def _bhtd(shape) -> tuple[int, ...]:
    b, t, h, d = shape
    return (b, h, t, d)


@register_flop_formula(torch.ops.lmprof.fa4_attention)
def _fwd_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(_bhtd(q_shape), _bhtd(k_shape), _bhtd(v_shape))


@register_flop_formula(torch.ops.lmprof.fa4_attention_backward)
def _bwd_flops(dout_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(
        _bhtd(dout_shape), _bhtd(q_shape), _bhtd(k_shape), _bhtd(v_shape)
    )
