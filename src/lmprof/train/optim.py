"""AdamW and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmprof.config import TrainingConfig


def build_optimizer(
    model: nn.Module, cfg: TrainingConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases, norms); fused on CUDA, where it
    also lets GradScaler skip its per-step host sync."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda"
    )


def clips_in_step(optimizer: torch.optim.Optimizer, scaler_enabled: bool, fsdp: bool) -> bool:
    """Whether `clip_in_step` can clip for this optimizer: fused AdamW (it divides each gradient
    by `grad_scale` in its own pass), no GradScaler (which sets grad_scale for its unscaling)
    and no FSDP (whose DTensor gradients clip_grad_norm_ handles)."""
    return bool(optimizer.defaults.get("fused")) and not scaler_enabled and not fsdp


def clip_in_step(optimizer: torch.optim.Optimizer, params: list, max_norm: float) -> None:
    """clip_grad_norm_(params, max_norm), then optimizer.step(), with the clipping done inside
    fused AdamW's pass: it divides every gradient by `grad_scale` (the hook GradScaler uses),
    so the norm is the one extra read; clip_grad_norm_ would also read and write every gradient
    once more. The same coefficient, max_norm / (norm + 1e-6) capped at 1, without a sync."""
    norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], foreach=True)
    optimizer.grad_scale = (norm + 1e-6).div_(max_norm).clamp_(min=1.0)  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale  # type: ignore[attr-defined]


def lr_factor(step: int, cfg: TrainingConfig) -> float:
    """Multiplier of the base lr at `step`: linear warmup, then cosine/linear decay to the floor."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
