"""Check the memory model against real training steps on this GPU.

    python benchmarks/memory_calibration.py [--grid default|quick|llama|stream] [--out FILE.json]
    python benchmarks/memory_calibration.py --grid llama --predict-only   # no GPU: predictions

`--grid llama` (issue 28): SmolLM-135M's Llama shape (RoPE, RMSNorm, SwiGLU, 9 query heads over
3 K/V heads) at B4 x T2048 in bf16, checkpointing none/full/selective on the kernels that run
grouped-query attention (sdpa copies K/V to every head, flash and cudnn take them as they are),
plus its untied and multi-head variants; the goal is every peak within 2%. About a minute.
`--grid stream`: GPT-2 small pre-norm in bf16 with `residual_stream` fp32 and compute.

Each configuration runs a few steps of lmprof's training step (train/loop.py's order: autocast
forward, scaled backward, unscale, clip, fused AdamW step, zero_grad(set_to_none=True)) on random
tokens, with the next batch prefetched as the loop does, and compares
torch.cuda.max_memory_allocated() with `estimate_memory`. It also measures what the model takes
as constants: the memory left allocated between steps beyond parameters, optimizer states and
batches (cuBLAS workspaces), max_memory_reserved / max_memory_allocated (the allocator factor) and
NVML's usage beyond the reservation (the CUDA context). Needs a CUDA GPU; prints one line a run.

Its step repeats the loop's order by hand so it can read memory between forward and backward;
`memory_model_check.py` checks the model against real `lmprof run` rows instead.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
from typing import Any

from lmprof.config import build_config
from lmprof.io import atomic_write_text
from lmprof.profiling.memory_model import estimate_memory

GPT2_SMALL = [
    "d_model=768",
    "nhead=12",
    "num_layers=12",
    "dim_feedforward=3072",
    "dropout=0.1",
    "tokenizer=gpt2",
]
SEED = ["model_type=vanilla_transformer"]  # post-norm, explicit mask (sdpa_mask), ReLU, sinusoidal
VANILLA = SEED + ["attention=vanilla"]  # the T x T scores in memory
GPT2_VOCAB = 50258  # GPT-2's 50257 ids and lmprof's PAD
# configs/smollm_135m.yaml's shape, as overrides (its vocabulary: 49152, tied)
SMOLLM_135M = [
    "model.n_layers=30",
    "model.d_model=576",
    "model.n_heads=9",
    "model.n_kv_heads=3",
    "model.d_ff=1536",
    "model.norm_type=rmsnorm",
    "model.pos_encoding=rope",
    "model.activation=swiglu",
    "model.bias=false",
    "model.dropout=0",
    "bf16=true",
    "sequence_length=2048",
    "batch_size=4",
]
SMOLLM_VOCAB = 49152


def llama_grid() -> list[list[str]]:
    grid = [
        SMOLLM_135M + [f"attention={k}", f"gradient_checkpointing={c}"]
        for k in ("sdpa", "flash", "cudnn")
        for c in ("none", "full", "selective")
    ]
    grid.append(SMOLLM_135M + ["attention=cudnn", "tie_embeddings=false"])
    grid.append(SMOLLM_135M + ["attention=cudnn", "model.n_kv_heads=0"])  # multi-head
    grid.append(SMOLLM_135M + ["attention=sdpa", "model.n_kv_heads=0"])
    return grid


def stream_grid() -> list[list[str]]:
    """GPT-2 small pre-norm in bf16 at B8 x T1024 with either residual stream, on the PyTorch
    attention kernels, with and without checkpointing."""
    base = GPT2_SMALL + ["norm=pre", "activation=gelu", "pos_encoding=learned", "bf16=true"]
    base += ["dropout=0", "sequence_length=1024", "batch_size=8"]
    return [
        base + [f"attention={k}", f"gradient_checkpointing={c}", f"residual_stream={r}"]
        for k, c in (("sdpa", "none"), ("cudnn", "none"), ("flash", "full"), ("flash", "selective"))
        for r in ("fp32", "compute")
    ]


def default_grid(quick: bool = False) -> list[list[str]]:
    variants = [
        SEED + ["fp16=true"],
        VANILLA + ["fp16=true"],
        VANILLA + ["precision=fp32"],
        SEED + ["bf16=true", "attention=flash"],
        SEED + ["bf16=true", "attention=sdpa"],
    ]
    seqs, batches = (
        ([128, 512, 2048], [4, 32]) if quick else ([128, 256, 512, 1024, 2048], [4, 8, 16, 32])
    )
    grid: list[list[str]] = []
    for v in variants:
        for T in seqs:
            grid.append(GPT2_SMALL + v + [f"sequence_length={T}", "batch_size=8"])
        for B in batches:
            if B != 8:
                grid.append(GPT2_SMALL + v + ["sequence_length=512", f"batch_size={B}"])
    if not quick:
        extra = [
            ["norm=pre", "activation=gelu", "pos_encoding=learned", "bf16=true", "attention=sdpa"],
            VANILLA + ["fp16=true", "gradient_checkpointing=full"],
            SEED + ["bf16=true", "attention=flash", "gradient_checkpointing=selective"],
            SEED + ["bf16=true", "attention=flash", "loss_chunk_size=2048"],
            SEED + ["precision=fp32", "attention=sdpa"],
            SEED + ["bf16=true", "attention=vanilla", "tie_embeddings=false"],
        ]
        for e in extra:
            grid.append(GPT2_SMALL + e + ["sequence_length=1024", "batch_size=8"])
    return grid


def _nvml_used(index: int) -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:  # NVML absent: the context is not measured
        return None


def measure(overrides: list[str], vocab_size: int = GPT2_VOCAB, steps: int = 3) -> dict[str, Any]:
    """Run `steps` training steps of the config and read the allocator's counters."""
    import torch

    from lmprof.model import ModelArgs, Transformer

    cfg = build_config(overrides=overrides)
    device = torch.device("cuda")
    torch.manual_seed(0)
    precision = cfg.system.precision
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    B, T = cfg.training.batch_size, cfg.seq_len
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    args = ModelArgs.from_config(cfg, vocab_size)
    with torch.device(device):
        model = Transformer(args)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4,
        fused=True,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")

    def batch():
        ids = torch.randint(0, vocab_size - 1, (B, T + 1), device=device)
        return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    row: dict[str, Any] = {"overrides": " ".join(overrides)}
    model.train()
    nxt = batch()
    try:
        for step in range(steps):
            (x, y), nxt = nxt, batch()
            ctx = torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext()
            start = torch.cuda.memory_allocated()
            with ctx:
                loss, n_correct = model(x, y)
            if step == steps - 1:
                row["saved_after_forward"] = torch.cuda.memory_allocated() - start
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            del loss, n_correct, x, y
        torch.cuda.synchronize()
        row["status"] = "ok"
    except torch.OutOfMemoryError:
        row["status"] = "oom"
    row["max_allocated"] = torch.cuda.max_memory_allocated()
    row["max_reserved"] = torch.cuda.max_memory_reserved()
    nvml = _nvml_used(device.index or 0)
    if nvml is not None:
        row["context"] = nvml - torch.cuda.memory_reserved()
    n_params = sum(p.numel() for p in model.parameters())
    states = sum(
        t.numel() * t.element_size()
        for s in opt.state.values()
        for t in s.values()
        if torch.is_tensor(t)
    )
    row["rest_between_steps"] = (
        torch.cuda.memory_allocated() - before - 4 * n_params - states - 2 * 2 * B * T * 8
    )
    est = estimate_memory(cfg, vocab_size)
    row["predicted"] = est.predicted_peak_bytes
    row["predicted_phase"] = est.peak_phase
    row["predicted_saved"] = est.saved_after_forward
    row["ratio"] = row["max_allocated"] / est.predicted_peak_bytes
    del model, opt, scaler, nxt
    gc.collect()
    torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/memory_calibration.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--grid", choices=("default", "quick", "llama", "stream"), default="default"
    )
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--predict-only", action="store_true", help="print the predictions only (no GPU)"
    )
    args = parser.parse_args(argv)
    llama = args.grid == "llama"
    if args.grid == "stream":
        grid = stream_grid()
    else:
        grid = llama_grid() if llama else default_grid(args.grid == "quick")
    vocab, base = (SMOLLM_VOCAB, SMOLLM_135M) if llama else (GPT2_VOCAB, GPT2_SMALL)
    if args.predict_only:
        for overrides in grid:
            est = estimate_memory(build_config(overrides=overrides), vocab)
            short = " ".join(o for o in overrides if o not in base)
            print(f"pred {est.predicted_peak_bytes / 2**30:7.2f} GiB ({est.peak_phase}) | {short}")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("calibrate needs a CUDA GPU (or --predict-only)", file=sys.stderr)
        return 2
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
    rows = []
    for overrides in grid:
        row = measure(overrides, vocab_size=vocab, steps=args.steps)
        rows.append(row)
        short = " ".join(o for o in row["overrides"].split() if o not in base)
        saved = row.get("saved_after_forward")
        saved_ratio = f"{saved / row['predicted_saved']:.3f}" if saved else "-"
        print(
            f"{row['status']:4s} {row['ratio']:.3f} meas {row['max_allocated'] / 2**30:7.2f} "
            f"GiB pred {row['predicted'] / 2**30:7.2f} ({row['predicted_phase']}) saved "
            f"{saved_ratio} rest {row['rest_between_steps'] / 2**20:.0f} MiB reserved/alloc "
            f"{row['max_reserved'] / row['max_allocated']:.3f} ctx "
            f"{row.get('context', 0) / 2**20:.0f} MiB | {short}",
            flush=True,
        )
    ok = [r for r in rows if r["status"] == "ok"]
    tol = 0.02 if llama else 0.10
    within = sum(abs(r["ratio"] - 1) <= tol for r in ok)
    print(f"# within {tol:.0%}: {within}/{len(ok)} ok runs; {len(rows) - len(ok)} out of memory")
    if args.out:
        atomic_write_text(args.out, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
