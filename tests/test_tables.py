"""The attention-kernel and precision tables: every row is known to every consumer."""

from __future__ import annotations

import pytest
import torch

from lmprof import attention_kernels, precision
from lmprof.config import build_config
from lmprof.environment import check_environment
from lmprof.model import ModelArgs, Transformer, _sdpa_backend
from lmprof.profiling.flops import flops_per_token
from lmprof.profiling.memory_model import estimate_memory

KERNELS = list(attention_kernels.KERNELS.values())


def _precision_for(k: attention_kernels.AttentionKernel) -> str:
    return k.precisions[0] if k.precisions else "fp32"


def _kernel(k, precision_name: str) -> list[str]:
    """Overrides selecting kernel `k` in a precision, with dropout off where it has none."""
    return [f"attention={k.name}", f"precision={precision_name}"] + (
        [] if k.dropout else ["dropout=0"]
    )


@pytest.mark.parametrize("k", KERNELS, ids=lambda k: k.name)
def test_every_kernel_is_accepted_by_validation(k):
    cfg = build_config(overrides=_kernel(k, _precision_for(k)))
    assert cfg.model.attention == k.name
    if k.cuda_only and not torch.cuda.is_available():
        assert "needs a CUDA GPU" in check_environment(cfg)


@pytest.mark.parametrize("k", KERNELS, ids=lambda k: k.name)
def test_every_kernel_is_dispatched_by_the_model(k):
    backend = _sdpa_backend(k.name)
    if k.sdpa_backend is None:
        assert backend is None
    else:
        assert backend.name == k.sdpa_backend
    if k.cuda_only:
        return  # its forced backend has no CPU kernel; the backend lookup above is what we can check
    torch.manual_seed(0)
    args = ModelArgs(
        vocab_size=97, d_model=32, n_heads=4, n_layers=1, d_ff=64, dropout=0.0, max_seq_len=16
    )
    args.attention = k.name
    model = Transformer(args).eval()
    ids = torch.randint(1, 97, (2, 16))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 10:] = False
    for attention_mask in (None, mask):  # without and with padding: both mask paths
        logits = model(ids, attention_mask=attention_mask)
        assert torch.isfinite(logits[0]).all()


@pytest.mark.parametrize("k", KERNELS, ids=lambda k: k.name)
def test_every_kernel_is_known_to_the_flops_and_memory_models(k):
    cfg = build_config(overrides=["tokenizer=gpt2", *_kernel(k, _precision_for(k))])
    args = ModelArgs.from_config(cfg, 50258)
    assert flops_per_token(args, cfg.seq_len).model_flops_per_token > 0
    for padded in (False, True):
        assert estimate_memory(cfg, 50258, padded=padded).predicted_peak_bytes > 0


def test_precisions_are_the_configs_choices_and_map_to_torch_dtypes():
    for p in precision.PRECISIONS.values():
        cfg = build_config(overrides=[f"precision={p.name}"])
        assert cfg.system.precision == p.name
        assert precision.torch_dtype(p.dtype).itemsize == p.bytes
        want = None if p.autocast is None else precision.torch_dtype(p.autocast)
        assert precision.autocast_dtype(p.name) == want


def test_kernel_precision_rule_comes_from_the_table():
    from lmprof.errors import ConfigError

    for k in KERNELS:
        for p in precision.NAMES:
            overrides = _kernel(k, p)
            if attention_kernels.runs_in(k, p):
                build_config(overrides=overrides)
            else:
                with pytest.raises(ConfigError, match="need precision"):
                    build_config(overrides=overrides)


def test_each_kernels_availability_check_names_a_real_function():
    import importlib

    from lmprof import attention_kernels

    for k in attention_kernels.KERNELS.values():
        if k.availability:
            module, function = k.availability.split(":")
            assert callable(getattr(importlib.import_module(module), function)), k.name


# The operator whose shapes count each fused kernel in a GPU trace, its layout, a kernel name and
# the operator that launches the forward kernel, as torch 2.11 / flash-attn-4 traces on an H100
# record them: SDPA's inner entries launch their own kernels; FA4's forward kernel is launched
# inside torch.library's generated autograd node, nested in lmprof::fa4_attention, which records
# no key. `sdpa` runs as whichever kernel torch picks (cuDNN there).
_TRACED = {
    "cudnn": ("aten::_cudnn_attention_forward", "BHTD", "cudnn_generated_fort_native_sdpa_sm90"),
    "flash": ("aten::_flash_attention_forward", "BTHD", "void pytorch_flash::flash_fwd_kernel"),
    "mem_efficient": (
        "aten::_efficient_attention_forward",
        "BTHD",
        "fmha_cutlassF_bf16_aligned_64x64_rf_sm80",
    ),
    "fa4": (
        "lmprof::fa4_attention",
        "BTHD",
        "kernel_cutlass_kernel_flash_attncuteflash_fwd_sm90FlashAttentionForwardSm90",
        "GeneratedBackwardFor_lmprof_fa4_attention_default",
    ),
}
_TRACED["sdpa"] = _TRACED["cudnn"]


def _attention_trace(operator, layout, kernel_name, launcher=None, *, B, H, T, D) -> list[dict]:
    """A forward and a backward call: each operator, and the kernel it (or `launcher` inside
    it, for the forward) launches."""
    shape = [B, H, T, D] if layout == "BHTD" else [B, T, H, D]
    lse = [B, H, T, 1] if layout == "BHTD" else [B, H, T]
    backward = f"{operator.replace('_forward', '')}_backward"
    calls = ((operator, [shape, shape, shape, [], []]), (backward, [shape] * 5 + [lse, [], []]))
    events = []
    for ext, (op, dims) in enumerate(calls):
        ts = 100 * ext
        args = {"External id": ext, "Input Dims": dims, "Input type": ["c10::BFloat16"] * 5}
        events.append({"ph": "X", "cat": "cpu_op", "name": op, "ts": ts, "dur": 20, "args": args})
        launched_by = ext
        if launcher and ext == 0:
            launched_by = 10
            inner = {"External id": 10, "Input Dims": [shape, []], "Input type": ["c10::BFloat16"]}
            events.append(
                {"ph": "X", "cat": "cpu_op", "name": launcher, "ts": 2, "dur": 5, "args": inner}
            )
        name = kernel_name if ext == 0 else kernel_name.replace("fwd", "bwd")
        kernel_args = {"External id": launched_by, "stream": 7, "device": 0}
        events.append(
            {"ph": "X", "cat": "kernel", "name": name, "ts": ts + 50, "dur": 5, "args": kernel_args}
        )
    return events


@pytest.mark.parametrize("name", sorted(_TRACED))
def test_every_fused_kernel_is_counted_by_the_roofline_on_its_own_layout(name):
    from lmprof.profiling import roofline

    B, H, T, D = 2, 12, 1024, 64
    trace = _attention_trace(*_TRACED[name], B=B, H=H, T=T, D=D)
    table = {r["group"]: r for r in roofline.analyze(trace, roofline.Limits(1e15, 4e12)).table()}
    # causal: half of 4 B H T^2 D forward, 2.5x that backward, whichever layout the op takes
    forward = 4 * B * H * T * T * D / 2
    assert table["attention"]["gflop_per_step"] == pytest.approx(3.5 * forward / 1e9), name
    assert table["attention"]["no_work_ms"] == 0, name
