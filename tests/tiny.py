"""The tiny run the end-to-end CPU tests start from (a 1-layer, d 32 model on synthetic tokens,
a few steps): one list, so a change to what "tiny" means is made once."""

from __future__ import annotations

SYNTHETIC = ["data.source=synthetic", "vocab_size=256"]
TINY = [
    *SYNTHETIC,
    "n_layers=1",
    "d_model=32",
    "n_heads=2",
    "d_ff=64",
    "sequence_length=16",
    "batch_size=4",
    "max_steps=6",
    "logging_steps=2",
    "warmup_steps=1",
    "eval_max_batches=2",
    "progress=false",
]


def tiny(*overrides: str, synthetic: bool = True) -> list[str]:
    """TINY with `overrides` (KEY=VALUE) in place of the words of the keys they name; without
    the synthetic data source when `synthetic` is False (the caller brings its own data)."""
    named = {o.split("=", 1)[0] for o in overrides}
    base = TINY if synthetic else [w for w in TINY if w not in SYNTHETIC]
    return [w for w in base if w.split("=", 1)[0] not in named] + list(overrides)
