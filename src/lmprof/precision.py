"""The training precisions: one row each, torch-free (the memory model and `lmprof estimate` read
it without importing torch). `torch_dtype` is the one place a name becomes a torch.dtype."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Precision:
    name: str
    description: str
    # The dtype autocast runs the matmuls and activations in; None: no autocast (fp32 throughout).
    autocast: str | None
    grad_scaler: bool  # fp16's narrow exponent needs loss scaling; bf16 has fp32's range
    tf32: bool  # let fp32 matmuls and convolutions use the TF32 tensor-core format
    cuda_only: bool  # no fp16 autocast on the CPU
    color: str = "#7f7f7f"  # fixed across figures

    @property
    def dtype(self) -> str:
        """The torch dtype name of the activations (parameters stay fp32)."""
        return self.autocast or "float32"

    @property
    def bytes(self) -> int:
        """Bytes per element of an activation."""
        return _BYTES[self.dtype]


_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", "IEEE fp32 matmuls, no autocast", None, False, False, False, "#1f77b4"),
        Precision(
            "tf32", "fp32 with TF32 tensor-core matmuls", None, False, True, False, "#17becf"
        ),
        Precision(
            "fp16", "fp16 autocast with a GradScaler", "float16", True, False, True, "#ff7f0e"
        ),
        Precision("bf16", "bf16 autocast", "bfloat16", False, False, False, "#2ca02c"),
    )
}

NAMES: tuple[str, ...] = tuple(PRECISIONS)


def torch_dtype(name: str) -> torch.dtype:
    """`float16` -> torch.float16 (torch imported here, so this module stays light)."""
    import torch

    return getattr(torch, name)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The torch dtype autocast uses for `precision`, or None when it runs without autocast."""
    a = PRECISIONS[precision].autocast
    return None if a is None else torch_dtype(a)
