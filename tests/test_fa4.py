"""FlashAttention-4 as the `fa4` attention: refused in one line where it cannot run, and the custom
op's wiring (forward, backward, fake, compile) checked on the CPU with the pure-PyTorch stand-in
for FA4's CUDA kernels (ops/flash_attn4.py's REFERENCE)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from lmprof.config import build_config
from lmprof.environment import check_environment
from lmprof.errors import ConfigError
from lmprof.model import ModelArgs, Transformer
from lmprof.ops import flash_attn4


@pytest.fixture
def reference():
    with flash_attn4.use_kernels(flash_attn4.REFERENCE):
        yield


def _qkv(B=2, T=12, H=3, D=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, T, H, D, generator=g, dtype=dtype).requires_grad_() for _ in "qkv")


def _sdpa(q, k, v):
    """The same attention through SDPA, which wants (B, H, T, D)."""
    out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True)
    return out.transpose(1, 2)


# ---- refused in one line --------------------------------------------------------------------


def test_fa4_on_a_cpu_is_refused_in_one_line():
    cfg = build_config(overrides=["attention=fa4", "precision=bf16", "dropout=0", "device=cpu"])
    reason = check_environment(cfg)
    assert reason is not None and "\n" not in reason and "needs a CUDA GPU" in reason


def test_fa4_without_the_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(flash_attn4, "_import_error", lambda: "ModuleNotFoundError: flash_attn")
    reason = flash_attn4.unavailable_reason()
    assert "\n" not in reason and "pip install 'lmprof[fa4]'" in reason
    assert not flash_attn4.is_available()
    # A CUDA machine without the package: the environment check says the same line.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = build_config(overrides=["attention=fa4", "precision=bf16", "dropout=0", "device=cuda"])
    assert check_environment(cfg) == reason


def test_fa4_on_a_gpu_older_than_hopper_is_refused(monkeypatch):
    monkeypatch.setattr(flash_attn4, "_import_error", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    reason = flash_attn4.unavailable_reason()
    assert "sm90+" in reason and "sm80" in reason and "\n" not in reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert flash_attn4.is_available()


def test_fa4_with_dropout_is_refused(monkeypatch):
    monkeypatch.setattr(flash_attn4, "_import_error", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    # A rule of the config itself, read from the table's `dropout` column.
    with pytest.raises(ConfigError, match="model.dropout"):
        build_config(overrides=["attention=fa4", "precision=bf16", "dropout=0.1"])
    args = ModelArgs(vocab_size=97, d_model=32, n_heads=4, n_layers=1, d_ff=64, dropout=0.1)
    args.attention = "fa4"
    with pytest.raises(ValueError, match="no dropout"):
        Transformer(args)


def test_the_kernels_without_the_package_raise_a_runtime_error(monkeypatch):
    monkeypatch.setattr(flash_attn4, "_import_error", lambda: "ModuleNotFoundError: flash_attn")
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match=r"lmprof\[fa4\]"):
        flash_attn4.fa4_attention(q, k, v)


# ---- the custom op, with the reference stand-in ----------------------------------------------


def test_forward_and_gradients_match_sdpa(reference):
    q, k, v = _qkv()
    out = flash_attn4.fa4_attention(q, k, v)  # scale 1/sqrt(D), causal
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    want = _sdpa(q, k, v)
    want_grads = torch.autograd.grad(want, (q, k, v), dout)
    # The stand-in computes in fp32, as FA4 accumulates.
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_the_log_sum_exp_is_fp32_bht(reference):
    q, k, v = _qkv(dtype=torch.bfloat16)
    out, lse = torch.ops.lmprof.fa4_attention(q, k, v, 0.25, True)
    B, T, H, _ = q.shape
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    assert lse.shape == (B, H, T) and lse.dtype == torch.float32
    s = torch.einsum("bthd,bshd->bhts", q.float(), k.float()) * 0.25
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
    torch.testing.assert_close(lse, torch.logsumexp(s, -1))


def test_strided_views_of_a_fused_qkv_need_no_copy(reference):
    """What model.py hands over: q, k, v as views of one (B, T, 3, H, D) projection."""
    B, T, H, D = 2, 10, 4, 8
    qkv = torch.randn(B, T, 3, H, D, dtype=torch.float64, requires_grad=True)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    out = flash_attn4.fa4_attention(q, k, v)
    want = _sdpa(q, k, v)
    dout = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, qkv, dout)
    (w,) = torch.autograd.grad(want, qkv, dout)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_opcheck_passes_on_both_ops(reference):
    """Schema, fake (shapes, dtypes, strides against the real outputs), autograd registration
    and AOT dispatch, for the forward and the backward op."""
    q, k, v = _qkv(B=1, T=8, H=2, D=8, dtype=torch.float32)
    torch.library.opcheck(torch.ops.lmprof.fa4_attention.default, (q, k, v, 0.3, True))
    with torch.no_grad():
        out, lse = torch.ops.lmprof.fa4_attention(q, k, v, 0.3, True)
    dout = torch.randn_like(out)
    torch.library.opcheck(
        torch.ops.lmprof.fa4_attention_backward.default,
        (dout, q.detach(), k.detach(), v.detach(), out, lse, 0.3, True),
    )


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_with_fullgraph_and_no_graph_breaks(reference, backend):
    """torch.compile keeps one graph through forward and backward: the op is opaque to Dynamo,
    its fakes trace both graphs (aot_eager: that alone, without building C++ on a 2-core CI
    machine; inductor, marked slow: the generated code around the op too)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    def f(q, k, v):
        return (flash_attn4.fa4_attention(q, k, v, 0.25) * 2).sum()

    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(f, backend=counter, fullgraph=True)
    q, k, v = _qkv(dtype=torch.float32)
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    want = f(q, k, v)
    want_grads = torch.autograd.grad(want, (q, k, v))
    assert counter.frame_count == 1
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-4)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def _tiny(attention: str) -> Transformer:
    torch.manual_seed(0)
    args = ModelArgs(
        vocab_size=97, d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0, max_seq_len=16
    )
    args.attention = attention
    return Transformer(args)


def test_the_model_with_fa4_computes_what_it_computes_with_sdpa(reference):
    """The dispatch (the (B, T, H, D) views, the reshape back, padding left to the causal mask)."""
    ids = torch.randint(1, 97, (2, 16))
    targets = torch.randint(0, 97, (2, 16))
    results = []
    for attention in ("fa4", "sdpa"):
        model = _tiny(attention).double()
        loss, _ = model(ids, targets)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode,forwards", [("full", 4), ("selective", 2)])
def test_checkpointing_recomputes_fa4_only_without_the_selective_policy(mode, forwards):
    """Full checkpointing runs each layer's attention again in the backward; model.py's
    selective policy keeps lmprof::fa4_attention's output (2 layers: 2 forwards, not 4)."""
    calls = []

    def counted(*a):
        calls.append(1)
        return flash_attn4.REFERENCE.forward(*a)

    ids = torch.randint(1, 97, (2, 16))
    targets = torch.randint(0, 97, (2, 16))
    grads = []
    with flash_attn4.use_kernels(flash_attn4.Kernels(counted, flash_attn4.REFERENCE.backward)):
        for checkpointing in ("none", mode):
            calls.clear()
            model = _tiny("fa4")
            model.args.checkpointing = checkpointing
            loss, _ = model.train()(ids, targets)
            loss.backward()
            grads.append([p.grad for p in model.parameters()])
    assert len(calls) == forwards
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_the_compiled_model_with_fa4_has_no_graph_breaks(reference):
    model = _tiny("fa4")
    ids = torch.randint(1, 97, (2, 16))
    explained = torch._dynamo.explain(model)(ids)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_flop_counter_counts_fa4_as_torch_counts_sdpa(reference):
    """torch's SDPA formulas (full T x T): QK^T and PV forward, 2.5 times that backward
    (the CPU's own SDPA kernel has no formula, so the numbers are checked, not the kernel)."""
    q, k, v = _qkv(dtype=torch.float32)
    with FlopCounterMode(display=False) as fc:
        flash_attn4.fa4_attention(q, k, v).sum().backward()
    B, T, H, D = q.shape
    assert fc.get_total_flops() == 4 * B * H * T * T * D * (1 + 2.5)


# ---- attention=auto ------------------------------------------------------------------------


def test_auto_resolves_by_device_precision_length_and_dropout():
    from lmprof.attention_kernels import FA4_MIN_SEQ_LEN, resolve

    long, short = FA4_MIN_SEQ_LEN, FA4_MIN_SEQ_LEN // 2

    def pick(device="cuda", precision="bf16", seq_len=long, dropout=0.0, fa4=True):
        return resolve(
            "auto",
            device=device,
            precision=precision,
            seq_len=seq_len,
            dropout=dropout,
            fa4_available=fa4,
        )

    assert pick() == "fa4" and pick(precision="fp16") == "fa4"
    assert pick(fa4=False) == "cudnn"
    assert pick(seq_len=short) == "cudnn"
    assert pick(dropout=0.1) == "cudnn"  # FA4 has no dropout
    assert pick(precision="fp32") == pick(precision="tf32") == "sdpa"
    assert pick(device="cpu") == "sdpa"
    assert resolve("flash", device="cpu", precision="fp32", seq_len=1, dropout=0) == "flash"

    def never():
        raise AssertionError("FA4's availability asked for a short sequence")

    assert pick(seq_len=short, fa4=never) == "cudnn"  # no import of flash_attn for short T


def test_auto_is_resolved_when_the_model_is_built(monkeypatch):
    from lmprof.attention_kernels import FA4_MIN_SEQ_LEN
    from lmprof.model import resolve_attention

    model = _tiny("auto")
    assert model.args.attention == "sdpa"  # built on the CPU
    assert all(b.attn.attention == "sdpa" for b in model.blocks)
    args = ModelArgs(vocab_size=97, dropout=0.0, max_seq_len=FA4_MIN_SEQ_LEN, precision="bf16")
    args.attention = "auto"
    monkeypatch.setattr(flash_attn4, "is_available", lambda device=None: True)
    assert resolve_attention(args, "cuda") == "fa4"
    monkeypatch.setattr(flash_attn4, "is_available", lambda device=None: False)
    assert resolve_attention(args, "cuda") == "cudnn"


def test_build_config_carries_the_precision_auto_needs():
    cfg = build_config(overrides=["attention=auto", "precision=bf16"])
    args = ModelArgs.from_config(cfg, 97)
    assert args.attention == "auto" and args.precision == "bf16"


@pytest.mark.parametrize("precision,like", [("bf16", "cudnn"), ("fp32", "sdpa")])
def test_the_memory_model_counts_auto_as_the_kernel_it_becomes(precision, like):
    from lmprof.profiling.memory_model import estimate_memory

    def peak(attention, padded):
        cfg = build_config(
            overrides=["tokenizer=gpt2", f"attention={attention}", f"precision={precision}"]
        )
        return estimate_memory(cfg, 50258, padded=padded).predicted_peak_bytes

    for padded in (False, True):
        assert peak("auto", padded) == peak(like, padded)


def test_an_auto_run_records_the_kernel_it_became(tmp_path, monkeypatch):
    import csv

    from lmprof.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["data.source=synthetic", "vocab_size=64", "n_layers=1", "d_model=32", "n_heads=2"]
    args += ["d_ff=64", "sequence_length=16", "batch_size=2", "max_steps=2", "progress=false"]
    assert main(["run", *args, "attention=auto", "eval_max_batches=1", "run_name=a"]) == 0
    with open(tmp_path / "results.csv") as f:
        (row,) = csv.DictReader(f)
    assert row["attention"] == "auto" and row["attention_kernel"] == "sdpa"  # on a CPU
