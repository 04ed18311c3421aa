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
