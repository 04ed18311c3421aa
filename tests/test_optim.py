"""Gradient clipping inside fused AdamW's own pass (train/optim.py: clip_in_step) against
clip_grad_norm_ then step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmprof.train.optim import clip_in_step, clips_in_step


def _params(scale: float) -> list[nn.Parameter]:
    torch.manual_seed(0)
    ps = [nn.Parameter(torch.randn(64, 48)), nn.Parameter(torch.randn(48))]
    for p in ps:
        p.grad = torch.randn_like(p) * scale
    return ps


def _adamw(ps: list[nn.Parameter], fused: bool) -> torch.optim.AdamW:
    groups = [{"params": ps[:1], "weight_decay": 0.1}, {"params": ps[1:], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), fused=fused)


@pytest.mark.parametrize("scale", [10.0, 1e-3])  # clipped, and under the norm (untouched)
def test_clipping_in_the_fused_step_matches_clip_grad_norm(scale):
    ref, fused = _params(scale), _params(scale)
    opt_ref, opt = _adamw(ref, fused=True), _adamw(fused, fused=True)
    for step in range(3):
        for a, b in zip(ref, fused, strict=True):
            a.grad = torch.randn_like(a) * scale * (step + 1)
            b.grad = a.grad.clone()
        nn.utils.clip_grad_norm_(ref, 1.0)
        opt_ref.step()
        clip_in_step(opt, fused, 1.0)
        assert not hasattr(opt, "grad_scale")  # a GradScaler later would multiply it in
    for a, b in zip(ref, fused, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    moved = max((a - p).abs().max().item() for a, p in zip(ref, _params(scale), strict=True))
    assert moved > 1e-3  # the steps did something to compare


def test_clipping_in_the_step_only_where_fused_adamw_can():
    opt = _adamw(_params(1.0), fused=True)
    assert clips_in_step(opt, scaler_enabled=False, fsdp=False)
    assert not clips_in_step(opt, scaler_enabled=True, fsdp=False)  # fp16: GradScaler's hook
    assert not clips_in_step(opt, scaler_enabled=False, fsdp=True)  # DTensor gradients
    assert not clips_in_step(_adamw(_params(1.0), fused=False), scaler_enabled=False, fsdp=False)
