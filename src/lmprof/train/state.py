"""What the trainer counts: its resumable state (TrainState, saved with each checkpoint) and the
logging interval's loss, tokens and correct predictions (LossMeter)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from lmprof.train.distributed import DistInfo, all_reduce_sum
from lmprof.train.rng import rng_state, set_rng_state


@dataclass
class TrainState:
    step: int = 0
    real_tokens: int = 0  # non-PAD targets trained on, this rank
    processed_tokens: int = 0  # B*T per micro-batch, PAD included, this rank
    train_time_s: float = 0.0  # wall clock in the training loop, evaluation excluded
    compile_time_s: float = 0.0
    eval_time_s: float = 0.0  # wall clock in evaluations (validation and test), this process
    first_nonfinite_step: int | None = None
    logged: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)

    def to_dict(self, scheduler: Any, scaler: Any, device: torch.device) -> dict[str, Any]:
        """This rank's state beyond the model and optimizer tensors, JSON-able. The step is
        also the data position: the loader is deterministic given its start step."""
        return {
            "step": self.step,
            "real_tokens": self.real_tokens,
            "processed_tokens": self.processed_tokens,
            "train_time_s": self.train_time_s,
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(device),
        }

    def load(self, state: dict[str, Any], scheduler: Any, scaler: Any, device) -> None:
        self.step = int(state["step"])
        self.real_tokens = int(state["real_tokens"])
        self.processed_tokens = int(state["processed_tokens"])
        self.train_time_s = float(state["train_time_s"])
        scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # an off GradScaler's state_dict is empty
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], device)


class LossMeter:
    """The summed loss and the real tokens since the last log point, and the correct
    predictions of the steps that asked for them (those ending at a log point), with their own
    real tokens. Sums stay on the device (no sync per step); `take` reads them once, over all
    ranks, and starts a new interval."""

    def __init__(self, device: torch.device):
        self.device = device
        # Kept, not added: a running sum would be a kernel launch every step; `take` sums the
        # interval's tensors in one kernel each (at most logging_steps of them).
        self.losses: list[torch.Tensor] = []
        self.corrects: list[torch.Tensor] = []
        self.steps, self.real, self.asked = 0, 0, 0

    def add(self, loss_sum: torch.Tensor, correct: torch.Tensor | None, real: int) -> None:
        self.losses.append(loss_sum)
        self.steps += 1
        self.real += real
        if correct is not None:
            self.corrects.append(correct)
            self.asked += real

    def take(self, dist: DistInfo) -> tuple[float, float, int, int]:
        """(loss per real token, accuracy (nan if no step asked), steps, real tokens over all
        ranks) since the last take: one device-to-host read and one all-reduce."""
        zero = torch.zeros((), device=self.device, dtype=torch.float64)
        loss_t = torch.stack(self.losses).double().sum() if self.losses else zero
        correct_t = torch.stack(self.corrects).double().sum() if self.corrects else zero
        loss, correct = torch.stack([loss_t, correct_t]).tolist()
        loss, correct, real, asked = all_reduce_sum(
            [loss, correct, float(self.real), float(self.asked)], dist
        )
        steps = self.steps
        self.losses, self.corrects = [], []
        self.steps, self.real, self.asked = 0, 0, 0
        accuracy = correct / asked if asked else math.nan
        return loss / max(real, 1), accuracy, steps, int(real)
