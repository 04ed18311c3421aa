"""Isolated training-step throughput: a matrix of configurations in one process.

Each configuration builds lmprof's own Trainer (so the step measured is the step `lmprof run`
takes) on synthetic tokens already on the device, runs `--warmup` steps, then times `--steps`
steps with CUDA events and reports the median: tokens/s, MFU, peak memory, compile time.
`seed_module` rows time the course assignment's model (nn.TransformerEncoderLayer with an
explicit causal mask) the same way, as the baseline every comparison must beat fairly.

    python benchmarks/step_throughput.py --out $OUT --only small_flash_bf16 small_seed_fp16
    python benchmarks/step_throughput.py --list

Writes <out>/step_throughput.json and <out>/step_throughput.md; prints the table last.
MFU uses the anchors' convention: FLOPs/token = 6 (12 L d^2 + V d) + 12 L d T against 989e12.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from lmprof.config import build_config
from lmprof.io import atomic_write_text
from lmprof.train.distributed import DistInfo
from lmprof.train.loop import Trainer

PEAK_BF16 = 989e12
GIB = 1024**3

SMALL = {"n_layers": 12, "d_model": 768, "n_heads": 12, "d_ff": 3072}
MEDIUM = {"n_layers": 24, "d_model": 1024, "n_heads": 16, "d_ff": 4096}
FAST = {"dropout": 0.0, "norm": "pre", "pos_encoding": "learned", "precision": "bf16"}
# The seed-equivalent configuration: what `model_type: vanilla_transformer` gives (config.py).
SEED = {
    "attention": "sdpa_mask",
    "norm": "post",
    "pos_encoding": "sinusoidal",
    "activation": "relu",
    "dropout": 0.1,
    "precision": "fp16",
}


def _cfg(shape: dict, batch: int, seq: int, **kw) -> dict:
    return {**shape, "batch_size": batch, "sequence_length": seq, **kw}


CONFIGS: dict[str, dict] = {
    "small_seed_module_fp16": {
        "seed_module": True,
        **_cfg(SMALL, 16, 1024, precision="fp16", dropout=0.1),
    },
    "small_seed_equiv_fp16": _cfg(SMALL, 16, 1024, **SEED),
    "small_seed_equiv_mem_efficient_fp16": _cfg(
        SMALL, 16, 1024, **{**SEED, "attention": "mem_efficient"}
    ),
    "small_vanilla_fp16": _cfg(SMALL, 16, 1024, **{**SEED, "attention": "vanilla"}),
    "small_vanilla_fp32": _cfg(
        SMALL, 16, 1024, **{**SEED, "attention": "vanilla", "precision": "fp32"}
    ),
    "small_vanilla_bf16": _cfg(SMALL, 16, 1024, **{**FAST, "attention": "vanilla"}),
    "small_sdpa_bf16": _cfg(SMALL, 16, 1024, **FAST, attention="sdpa"),
    "small_flash_bf16": _cfg(SMALL, 16, 1024, **FAST, attention="flash"),
    "small_mem_efficient_bf16": _cfg(SMALL, 16, 1024, **FAST, attention="mem_efficient"),
    "small_cudnn_bf16": _cfg(SMALL, 16, 1024, **FAST, attention="cudnn"),
    "small_cudnn_bf16_chunked": _cfg(
        SMALL, 16, 1024, **FAST, attention="cudnn", loss_chunk_size=4096
    ),
    "small_flash_bf16_compile": _cfg(SMALL, 16, 1024, **FAST, attention="flash", compile=True),
    "small_cudnn_bf16_compile": _cfg(SMALL, 16, 1024, **FAST, attention="cudnn", compile=True),
    "small_cudnn_bf16_compile_chunked": _cfg(
        SMALL, 16, 1024, **FAST, attention="cudnn", compile=True, loss_chunk_size=4096
    ),
    "small_cudnn_bf16_compile_nobias": _cfg(
        SMALL, 16, 1024, **FAST, attention="cudnn", compile=True, bias=False
    ),
    "small_cudnn_bf16_compile_b64": _cfg(SMALL, 64, 1024, **FAST, attention="cudnn", compile=True),
    "small_cudnn_bf16_compile_cudagraphs": _cfg(
        SMALL, 16, 1024, **FAST, attention="cudnn", compile=True, compile_mode="reduce-overhead"
    ),
    "small_cudnn_bf16_compile_autotune": _cfg(
        SMALL,
        16,
        1024,
        **FAST,
        attention="cudnn",
        compile=True,
        compile_mode="max-autotune-no-cudagraphs",
    ),
    "medium_cudnn_bf16_compile": _cfg(MEDIUM, 16, 1024, **FAST, attention="cudnn", compile=True),
    "small_flash_bf16_ckpt_selective": _cfg(
        SMALL, 16, 1024, **FAST, attention="flash", gradient_checkpointing="selective"
    ),
    "small_flash_bf16_ckpt_full": _cfg(
        SMALL, 16, 1024, **FAST, attention="flash", gradient_checkpointing="full"
    ),
    "small_long_131k": _cfg(
        SMALL,
        1,
        131072,
        **{**FAST, "pos_encoding": "sinusoidal"},
        attention="flash",
        gradient_checkpointing="full",
        loss_chunk_size=8192,
    ),
}


def anchor_flops_per_token(c: dict, vocab: int = 50304) -> float:
    L, d, T = c["n_layers"], c["d_model"], c["sequence_length"]
    return 6 * (12 * L * d * d + vocab * d) + 12 * L * d * T


def build_trainer(name: str, spec: dict):
    spec = {k: v for k, v in spec.items() if k != "seed_module"}
    cfg = build_config(
        {"data": {"source": "synthetic", "vocab_size": 50257}},
        spec,
        {
            "max_steps": 10_000,
            "warmup_steps": 10,
            "logging_steps": 10_000,
            "run_name": name,
            "progress": False,
        },
    )
    dist = DistInfo(device=torch.device("cuda", 0))
    return Trainer(cfg, dist, outputs=None)


class SeedModule(torch.nn.Module):
    """The assignment's model: nn.TransformerEncoder (post-norm, ReLU) with an explicit mask."""

    def __init__(self, c: dict, vocab: int = 50257):
        super().__init__()
        d, T = c["d_model"], c["sequence_length"]
        self.emb = torch.nn.Embedding(vocab, d)
        from lmprof.model import sinusoidal_table

        self.register_buffer("pe", sinusoidal_table(T, d), persistent=False)
        layer = torch.nn.TransformerEncoderLayer(
            d, c["n_heads"], c["d_ff"], c["dropout"], batch_first=True
        )
        self.encoder = torch.nn.TransformerEncoder(layer, c["n_layers"], enable_nested_tensor=False)
        self.head = torch.nn.Linear(d, vocab)
        self.register_buffer(
            "mask", torch.nn.Transformer.generate_square_subsequent_mask(T), persistent=False
        )

    def forward(self, idx, targets):
        x = self.emb(idx) + self.pe[: idx.size(1)]
        x = self.encoder(x, mask=self.mask, is_causal=True)
        logits = self.head(x)
        return torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1)
        )


def time_seed_module(spec: dict, steps: int, warmup: int) -> list[float]:
    model = SeedModule(spec).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    scaler = torch.amp.GradScaler("cuda")
    B, T = spec["batch_size"], spec["sequence_length"]
    data = [torch.randint(0, 50257, (B, T + 1), device="cuda") for _ in range(4)]

    def step(i):
        batch = data[i % len(data)]
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(batch[:, :-1], batch[:, 1:])
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return _time(step, steps, warmup)


def _time(step, steps: int, warmup: int) -> tuple[list[float], float]:
    t0 = time.perf_counter()
    step(0)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for i in range(1, warmup):
        step(i)
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(steps)
    ]
    torch.cuda.synchronize()
    wall0 = time.perf_counter()
    for i, (s, e) in enumerate(events):
        s.record()
        step(i)
        e.record()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - wall0) / steps * 1e3
    return [s.elapsed_time(e) for s, e in events], first, wall


def time_lmprof(name: str, spec: dict, steps: int, warmup: int):
    trainer = build_trainer(name, spec)
    B = spec["batch_size"]
    pool = [
        b.to(trainer.device)
        for b, _ in zip(trainer.data.train_batches(B, seed=0), range(4), strict=False)
    ]

    def cycle():
        i = 0
        while True:
            yield pool[i % len(pool)]
            i += 1

    it = cycle()
    trainer.model.train()
    return _time(lambda i: trainer.train_step(it), steps, warmup), trainer.n_params


def measure(name: str, spec: dict, steps: int, warmup: int) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    row = {
        "name": name,
        **{
            k: spec.get(k)
            for k in ("batch_size", "sequence_length", "precision", "attention", "compile")
        },
    }
    try:
        if spec.get("seed_module"):
            times, first, wall = time_seed_module(spec, steps, warmup)
            n_params = None
        else:
            (times, first, wall), n_params = time_lmprof(name, spec, steps, warmup)
    except torch.OutOfMemoryError as exc:
        row.update(status="oom", detail=str(exc).splitlines()[0][:120])
        return row
    med = statistics.median(times)
    tokens = spec["batch_size"] * spec["sequence_length"]
    tps = tokens / (med / 1e3)
    row.update(
        status="ok",
        params_m=n_params / 1e6 if n_params else None,
        step_ms_p50=med,
        step_ms_p90=statistics.quantiles(times, n=10)[-1],
        wall_ms_per_step=wall,
        tokens_per_sec=tps,
        mfu=tps * anchor_flops_per_token(spec) / PEAK_BF16,
        peak_mem_gib=torch.cuda.max_memory_allocated() / GIB,
        first_step_s=first,
        compile_s=max(0.0, first - med / 1e3) if spec.get("compile") else 0.0,
    )
    return row


def markdown(rows: list[dict]) -> str:
    head = "| config | batch | seq | tokens/s | MFU | step p50 ms | wall ms/step | peak GiB | compile s |\n"
    head += "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    for r in rows:
        if r["status"] != "ok":
            head += f"| {r['name']} | {r['batch_size']} | {r['sequence_length']} | {r['status']} | | | | | |\n"
            continue
        head += (
            f"| {r['name']} | {r['batch_size']} | {r['sequence_length']} | {r['tokens_per_sec'] / 1e3:.0f}k "
            f"| {r['mfu'] * 100:.1f}% | {r['step_ms_p50']:.1f} | {r['wall_ms_per_step']:.1f} "
            f"| {r['peak_mem_gib']:.2f} | {r['compile_s']:.0f} |\n"
        )
    return head


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", nargs="*", help="configuration names (default: all)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    if a.list:
        print("\n".join(CONFIGS))
        return 0
    if not torch.cuda.is_available():
        print("step_throughput: needs a CUDA GPU", file=sys.stderr)
        return 2
    names = a.only or list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"step_throughput: unknown configuration(s) {unknown}; see --list", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        row = measure(name, CONFIGS[name], a.steps, a.warmup)
        rows.append(row)
        print(json.dumps(row), flush=True)
        torch._dynamo.reset()  # compiled graphs of the last model hold its memory
        gc.collect()
        meta = {
            "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(sys.argv),
        }
        atomic_write_text(
            out / "step_throughput.json", json.dumps({"meta": meta, "rows": rows}, indent=1)
        )
        atomic_write_text(
            out / "step_throughput.md",
            f"GPU {meta['gpu']}, torch {meta['torch']} (CUDA {meta['cuda']}), {meta['date']}\n\n"
            f"`{meta['command']}`\n\n" + markdown(rows),
        )
    print(markdown(rows))
    return 0 if all(math.isfinite(r.get("tokens_per_sec", 0)) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
