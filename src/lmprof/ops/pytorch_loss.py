"""`model.loss=pytorch`, the reference loss: nn.Linear's logits and F.cross_entropy, as a plain
PyTorch model computes them (described in ops/losses.py). Its numbers are what the fused loss
(ops/cross_entropy.py) must reproduce; its memory is the full (tokens x vocabulary) logits, an
fp32 copy and an fp32 log-softmax."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lmprof.ops import IGNORE_INDEX
from lmprof.ops.losses import LossOutput


class PyTorchCrossEntropy:
    """The summed cross-entropy over real targets and, when asked, the argmax's right count."""

    def __init__(self, args: Any = None):
        pass  # nothing to choose: every buffer is tokens x vocabulary

    def __call__(
        self, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, accuracy: bool = False
    ) -> LossOutput:
        logits = F.linear(h, weight)
        loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
        # A PAD target (IGNORE_INDEX) is never an argmax, so it is never counted right.
        correct = (logits.detach().argmax(-1) == targets).sum() if accuracy else None
        return LossOutput(loss, correct)
