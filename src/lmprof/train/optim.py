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
