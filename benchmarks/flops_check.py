"""Analytic FLOPs against torch.utils.flop_counter.FlopCounterMode on one real training step.

    python benchmarks/flops_check.py            # on a GPU: GPT-2 small shape, each attention kernel

Prints a table: analytic model/hardware FLOPs per step, the counter's, and the difference.
FlopCounterMode counts matmuls and SDPA kernels (attention counted in full, non-causal), so it
is compared with the analytic hardware count (recompute included).
"""

from __future__ import annotations

import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from lmprof.model import ModelArgs, Transformer
from lmprof.profiling.flops import flops_per_token

CASES = [
    ("vanilla fp16", dict(attention="vanilla"), torch.float16),
    ("sdpa bf16", dict(attention="sdpa"), torch.bfloat16),
    ("flash bf16", dict(attention="flash"), torch.bfloat16),
    ("cudnn bf16", dict(attention="cudnn"), torch.bfloat16),
    ("flash bf16 full ckpt", dict(attention="flash", checkpointing="full"), torch.bfloat16),
    (
        "flash bf16 selective ckpt",
        dict(attention="flash", checkpointing="selective"),
        torch.bfloat16,
    ),
    ("flash bf16 chunked loss", dict(attention="flash", loss_chunk_size=4096), torch.bfloat16),
]


def main() -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    B, T = (8, 1024) if device == "cuda" else (2, 64)
    shape = (
        dict(d_model=768, n_heads=12, n_layers=12, d_ff=3072)
        if device == "cuda"
        else dict(d_model=64, n_heads=4, n_layers=2, d_ff=256)
    )
    print(
        "| case | analytic model GFLOP | analytic hardware GFLOP | FlopCounterMode GFLOP | diff vs hardware |"
    )
    print("| --- | --- | --- | --- | --- |")
    worst = 0.0
    for name, kw, dtype in CASES:
        if device == "cpu" and kw.get("attention") in ("flash", "cudnn"):
            continue
        args = ModelArgs(vocab_size=50257, dropout=0.0, max_seq_len=T, **shape, **kw)
        model = Transformer(args).to(device).train()
        idx = torch.randint(0, 50257, (B, T), device=device)
        counter = FlopCounterMode(display=False)
        with counter, torch.autocast(device, dtype=dtype):
            loss, _ = model(idx, idx)
            loss.backward()
        fc = flops_per_token(args, T, device=device)
        measured = counter.get_total_flops()
        hw = fc.hardware_flops_per_token * B * T
        diff = measured / hw - 1
        worst = max(worst, abs(diff))
        print(
            f"| {name} | {fc.model_flops_per_token * B * T / 1e9:.1f} | {hw / 1e9:.1f} | "
            f"{measured / 1e9:.1f} | {diff:+.2%} |",
            flush=True,
        )
        del model
    print(f"worst |difference| {worst:.2%}")
    return 0 if worst < 0.02 else 1


if __name__ == "__main__":
    sys.exit(main())
