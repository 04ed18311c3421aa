"""The memory model and the FLOPs count give, for a grid of configurations, exactly the numbers
they gave before the ops were described in one place (tests/data/memory_golden.json).

The grid crosses every attention kernel with its precisions, the three checkpointing modes,
dropout, padding and the device, and varies the other choices (norm, activation, tied head,
biases, positions, the loss in blocks, accumulation, DDP/FSDP) from case to case. A deliberate
change of the model regenerates the file: `LMPROF_REGEN_GOLDEN=1 pytest tests/test_memory_golden.py`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path

import pytest

from lmprof import attention_kernels
from lmprof.model_args import ModelArgs
from lmprof.profiling.flops import flops_per_token
from lmprof.profiling.memory_model import step_phases

GOLDEN = Path(__file__).parent / "data" / "memory_golden.json"


def _grid() -> list[dict]:
    cases = []
    for k in attention_kernels.KERNELS.values():
        precisions = [p for p in ("fp32", "bf16", "fp16") if attention_kernels.runs_in(k, p)]
        dropouts = (0.0, 0.1) if k.dropout else (0.0,)
        axes = itertools.product(
            precisions, ("none", "full", "selective"), dropouts, (False, True), ("cuda", "cpu")
        )
        for i, (precision, ckpt, dropout, padded, device) in enumerate(axes):
            world, parallelism = ((1, "none"), (2, "ddp"), (2, "fsdp"), (1, "none"))[i % 4]
            cases.append(
                {
                    "attention": k.name,
                    "precision": precision,
                    "checkpointing": ckpt,
                    "dropout": dropout,
                    "padded": padded,
                    "device": device,
                    "norm": ("pre", "post")[i % 2],
                    "activation": ("gelu", "relu")[(i // 2) % 2],
                    "tie_embeddings": (i // 3) % 2 == 0,
                    "bias": (i // 5) % 3 != 0,
                    "pos_encoding": ("learned", "sinusoidal")[(i // 7) % 2],
                    "loss_chunk_size": (0, 0, 96)[i % 3],
                    "grad_accum": (1, 1, 4)[(i // 4) % 3],
                    "world": world,
                    "parallelism": parallelism,
                    "B": (2, 4, 8)[i % 3],
                    "T": (64, 128, 256, 512)[(i // 3) % 4],
                    "d_model": (64, 96, 128)[(i // 2) % 3],
                    "n_heads": (2, 4)[i % 2],
                    "n_layers": (1, 2, 3)[i % 3],
                    "d_ff": (128, 256, 384)[(i // 4) % 3],
                    "vocab_size": (97, 500, 4096)[(i // 6) % 3],
                }
            )
    return cases


def _numbers(case: dict) -> dict:
    args = ModelArgs(
        vocab_size=case["vocab_size"],
        d_model=case["d_model"],
        n_heads=case["n_heads"],
        n_layers=case["n_layers"],
        d_ff=case["d_ff"],
        dropout=case["dropout"],
        max_seq_len=case["T"],
        norm=case["norm"],
        activation=case["activation"],
        tie_embeddings=case["tie_embeddings"],
        bias=case["bias"],
        pos_encoding=case["pos_encoding"],
        attention=case["attention"],
        checkpointing=case["checkpointing"],
        loss_chunk_size=case["loss_chunk_size"],
        precision=case["precision"],
    )
    phases, saved = step_phases(
        args,
        case["B"],
        case["T"],
        case["precision"],
        device=case["device"],
        padded=case["padded"],
        grad_accum=case["grad_accum"],
        world_size=case["world"],
        parallelism=case["parallelism"],
    )
    f = flops_per_token(args, case["T"], device=case["device"], padded=case["padded"])
    return {
        "phases": {name: dict(sorted(parts.items())) for name, parts in phases.items()},
        "saved": saved,
        "model_flops": f.model_flops_per_token,
        "hardware_flops": f.hardware_flops_per_token,
        "breakdown": f.breakdown,
    }


def _key(case: dict) -> str:
    text = json.dumps(case, sort_keys=True)
    return case["attention"] + ":" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _digest(numbers: dict) -> list:
    """The largest phase total (to read) and a digest of every number (to compare)."""
    text = json.dumps(numbers, sort_keys=True)
    peak = max(sum(parts.values()) for parts in numbers["phases"].values())
    return [peak, hashlib.sha256(text.encode()).hexdigest()[:20]]


def _regenerate() -> None:
    GOLDEN.parent.mkdir(exist_ok=True)
    table = {_key(c): _digest(_numbers(c)) for c in _grid()}
    lines = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(table.items())]
    GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n")


if os.environ.get("LMPROF_REGEN_GOLDEN") == "1":
    _regenerate()


def test_the_grid_covers_every_kernel_precision_and_mode():
    cases = _grid()
    assert {c["attention"] for c in cases} == set(attention_kernels.NAMES)
    assert {c["checkpointing"] for c in cases} == {"none", "full", "selective"}
    assert len(cases) > 300


@pytest.mark.parametrize("kernel", attention_kernels.NAMES)
def test_memory_and_flops_are_unchanged(kernel):
    golden = json.loads(GOLDEN.read_text())
    for case in _grid():
        if case["attention"] != kernel:
            continue
        assert _digest(_numbers(case)) == golden[_key(case)], _key(case)
