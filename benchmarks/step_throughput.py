"""Isolated training-step throughput: a matrix of configurations in one process.

Each configuration builds lmprof's own Trainer (so the step measured is the step `lmprof run`
takes) on synthetic tokens already on the device, runs `--warmup` steps, then times `--steps`
steps with CUDA events and reports the median: tokens/s, MFU, peak memory, compile time.
`seed_module` rows time the course assignment's model (nn.TransformerEncoderLayer with an
explicit causal mask) the same way, as the baseline every comparison must beat fairly.
`nanogpt` rows time nanoGPT's own GPT, imported at run time from ext/nanoGPT/model.py (never
copied), with its train.py step: bf16 autocast, torch.compile, configure_optimizers' fused AdamW,
clipping at 1.0. A row's `ref` names the row its "vs ref" ratio is taken against. `loop` rows
run the Trainer's whole step (its timer, instruments, meter and host-to-device batch path) on
host batches, where the small kernels of a small model show.

    python benchmarks/step_throughput.py --out $OUT --only small_flash_bf16 small_seed_fp16
    python benchmarks/step_throughput.py --out $OUT --only vs_nanogpt     # a group (see --list)
    python benchmarks/step_throughput.py --out $OUT --only vs_nanogpt --cpu-smoke
    python benchmarks/step_throughput.py --list

`--cpu-smoke` runs the chosen rows at a toy shape on the CPU (fp32, eager, 3 steps) to check
that they build and step; its figures mean nothing.

Writes <out>/step_throughput.json and <out>/step_throughput.md; prints the table last.
MFU uses the anchors' convention: FLOPs/token = 6 (12 L d^2 + V d) + 12 L d T against 989e12.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from lmprof.config import build_config
from lmprof.io import atomic_write_text
from lmprof.ops import losses
from lmprof.train.distributed import DistInfo
from lmprof.train.loop import Trainer

PEAK_BF16 = 989e12
GIB = 1024**3
NANOGPT = Path(__file__).resolve().parents[1] / "ext" / "nanoGPT" / "model.py"
LOG_EVERY = 10  # loop rows: steps between log points (the default logging.logging_steps)
# Keys of a row that describe how it is measured, not lmprof configuration.
ROW_KEYS = ("seed_module", "nanogpt", "ref", "loop", "vocab", "log_every")

SMALL = {"n_layers": 12, "d_model": 768, "n_heads": 12, "d_ff": 3072}
MEDIUM = {"n_layers": 24, "d_model": 1024, "n_heads": 16, "d_ff": 4096}
FAST = {"dropout": 0.0, "norm": "pre", "pos_encoding": "learned", "precision": "bf16"}
# The seed-equivalent configuration: what `model_type: vanilla_transformer` gives (config.py).
# The shakespeare-char shape (nanoGPT's config/train_shakespeare_char.py, dropout 0), where a
# step is 7-11 ms and the per-step host work and tiny kernels are a visible share.
CHAR = {"n_layers": 6, "d_model": 384, "n_heads": 6, "d_ff": 1536}
# A toy shape for --cpu-smoke.
TOY = {"n_layers": 2, "d_model": 64, "n_heads": 2, "d_ff": 256}
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


def _vs_nanogpt(**kw) -> dict:
    """A compiled GPT-2-small row without biases, against nanoGPT's GPT at the same shape."""
    return _cfg(SMALL, 16, 1024, **FAST, compile=True, bias=False, ref="nanogpt_small_nobias", **kw)


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
    "small_cudnn_bf16_compile_nobias": _vs_nanogpt(attention="cudnn"),
    "small_fa4_bf16_compile_nobias": _vs_nanogpt(attention="fa4"),
    "small_fa4_bf16_compile_nobias_quack_chunked": _vs_nanogpt(
        attention="fa4", loss="quack_chunked"
    ),
    "small_fa4_bf16_compile_nobias_quack_chunked_cudagraphs": _vs_nanogpt(
        attention="fa4", loss="quack_chunked", compile_mode="reduce-overhead"
    ),
    **{
        f"small_cudnn_bf16_compile_nobias_{loss}": _vs_nanogpt(attention="cudnn", loss=loss)
        for loss in ("pytorch", "quack", "quack_chunked")
    },
    # CUDA graphs (compile_mode=reduce-overhead) on the default loss and on quack's chunked one.
    **{
        f"small_cudnn_bf16_compile_nobias{suffix}_cudagraphs": _vs_nanogpt(
            attention="cudnn", compile_mode="reduce-overhead", **kw
        )
        for suffix, kw in (("", {}), ("_quack_chunked", {"loss": "quack_chunked"}))
    },
    **{
        f"small_cudnn_bf16_compile_bias{suffix}": _cfg(
            SMALL,
            16,
            1024,
            **FAST,
            attention="cudnn",
            compile=True,
            bias=True,
            ref="nanogpt_small_bias",
            **kw,
        )
        for suffix, kw in (("", {}), ("_quack_chunked", {"loss": "quack_chunked"}))
    },
    # residual_stream=compute: the residual stream, the norms' reads and writes in bf16.
    "small_cudnn_bf16_compile_nobias_stream": _vs_nanogpt(
        attention="cudnn", residual_stream="compute"
    ),
    "small_cudnn_bf16_compile_nobias_stream_cudagraphs": _vs_nanogpt(
        attention="cudnn", residual_stream="compute", compile_mode="reduce-overhead"
    ),
    "small_cudnn_bf16_compile_bias_stream": _cfg(
        SMALL,
        16,
        1024,
        **FAST,
        attention="cudnn",
        compile=True,
        bias=True,
        ref="nanogpt_small_bias",
        residual_stream="compute",
    ),
    # The fastest stack (FA4, quack's chunked loss, CUDA graphs) with and without the stream.
    **{
        f"small_fa4_bf16_compile_{bias}_quack_chunked_cudagraphs{suffix}": _cfg(
            SMALL,
            16,
            1024,
            **FAST,
            attention="fa4",
            compile=True,
            bias=bias == "bias",
            ref=f"nanogpt_small_{bias}",
            loss="quack_chunked",
            compile_mode="reduce-overhead",
            **kw,
        )
        for bias in ("nobias", "bias")
        for suffix, kw in (("", {}), ("_stream", {"residual_stream": "compute"}))
        if (bias, suffix) != ("nobias", "")  # that one is the row above
    },
    "nanogpt_small_nobias": _cfg(
        SMALL, 16, 1024, nanogpt=True, precision="bf16", compile=True, dropout=0.0, bias=False
    ),
    "nanogpt_small_bias": _cfg(
        SMALL, 16, 1024, nanogpt=True, precision="bf16", compile=True, dropout=0.0, bias=True
    ),
    "char_cudnn_bf16_compile_loop": _cfg(
        CHAR, 64, 256, **FAST, attention="cudnn", compile=True, loop=True, vocab=65
    ),
    "char_vanilla_bf16_compile_loop": _cfg(
        CHAR, 64, 256, **FAST, attention="vanilla", compile=True, loop=True, vocab=65
    ),
    "char_sdpa_mask_bf16_compile_loop": _cfg(
        CHAR, 64, 256, **FAST, attention="sdpa_mask", compile=True, loop=True, vocab=65
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
    # Inductor's Triton matmul templates, which can take GELU (and the bias) into a GEMM's
    # epilogue, compiled for one block (the region scope) to keep the autotuning short.
    **{
        f"small_cudnn_bf16_compile_nobias_stream_region{suffix}": _vs_nanogpt(
            attention="cudnn", residual_stream="compute", compile_scope="region", **kw
        )
        for suffix, kw in (("", {}), ("_autotune", {"compile_mode": "max-autotune-no-cudagraphs"}))
    },
    "medium_cudnn_bf16_compile": _cfg(MEDIUM, 16, 1024, **FAST, attention="cudnn", compile=True),
    "medium_cudnn_bf16_compile_quack_chunked_cudagraphs": _cfg(
        MEDIUM,
        16,
        1024,
        **FAST,
        attention="cudnn",
        compile=True,
        loss="quack_chunked",
        compile_mode="reduce-overhead",
    ),
    "medium_cudnn_bf16_compile_stream": _cfg(
        MEDIUM, 16, 1024, **FAST, attention="cudnn", compile=True, residual_stream="compute"
    ),
    **{
        f"medium_fa4_bf16_compile_quack_chunked_cudagraphs{suffix}": _cfg(
            MEDIUM,
            16,
            1024,
            **FAST,
            attention="fa4",
            compile=True,
            loss="quack_chunked",
            compile_mode="reduce-overhead",
            **kw,
        )
        for suffix, kw in (("", {}), ("_stream", {"residual_stream": "compute"}))
    },
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


# Named groups of rows for --only; each runs in one call (vs_nanogpt: ~5 minutes on an H100).
GROUPS: dict[str, tuple[str, ...]] = {
    "vs_nanogpt": (
        "nanogpt_small_nobias",
        "small_cudnn_bf16_compile_nobias",
        "small_fa4_bf16_compile_nobias",
        "nanogpt_small_bias",
        "small_cudnn_bf16_compile_bias",
        "medium_cudnn_bf16_compile",
    ),
    # model.loss choices at equal architecture (fused is the unsuffixed nobias row)
    "losses": (
        "nanogpt_small_nobias",
        "small_cudnn_bf16_compile_nobias",
        "small_cudnn_bf16_compile_nobias_pytorch",
        "small_cudnn_bf16_compile_nobias_quack",
        "small_cudnn_bf16_compile_nobias_quack_chunked",
    ),
    # CUDA graphs and quack's chunked loss, with and without biases.
    "graphs": (
        "nanogpt_small_nobias",
        "small_cudnn_bf16_compile_nobias",
        "small_cudnn_bf16_compile_nobias_cudagraphs",
        "small_cudnn_bf16_compile_nobias_quack_chunked",
        "small_cudnn_bf16_compile_nobias_quack_chunked_cudagraphs",
        "nanogpt_small_bias",
        "small_cudnn_bf16_compile_bias",
        "small_cudnn_bf16_compile_bias_quack_chunked",
    ),
    # FlashAttention-4 with quack's chunked loss and CUDA graphs; GPT-2 medium with the loss.
    "fa4_quack": (
        "nanogpt_small_nobias",
        "small_cudnn_bf16_compile_nobias_quack_chunked_cudagraphs",
        "small_fa4_bf16_compile_nobias",
        "small_fa4_bf16_compile_nobias_quack_chunked",
        "small_fa4_bf16_compile_nobias_quack_chunked_cudagraphs",
        "medium_cudnn_bf16_compile",
        "medium_cudnn_bf16_compile_quack_chunked_cudagraphs",
    ),
    # residual_stream=compute on the PyTorch attention path (no optional wheels needed).
    "stream": (
        "nanogpt_small_nobias",
        "small_cudnn_bf16_compile_nobias",
        "small_cudnn_bf16_compile_nobias_stream",
        "small_cudnn_bf16_compile_nobias_stream_cudagraphs",
        "nanogpt_small_bias",
        "small_cudnn_bf16_compile_bias",
        "small_cudnn_bf16_compile_bias_stream",
    ),
    # ... and on the fastest stack (FA4, quack's chunked loss, CUDA graphs).
    "fa4_stream": (
        "nanogpt_small_nobias",
        "small_fa4_bf16_compile_nobias_quack_chunked_cudagraphs",
        "small_fa4_bf16_compile_nobias_quack_chunked_cudagraphs_stream",
        "nanogpt_small_bias",
        "small_fa4_bf16_compile_bias_quack_chunked_cudagraphs",
        "small_fa4_bf16_compile_bias_quack_chunked_cudagraphs_stream",
        "medium_fa4_bf16_compile_quack_chunked_cudagraphs",
        "medium_fa4_bf16_compile_quack_chunked_cudagraphs_stream",
    ),
    # The Triton-template route to the MLP's epilogues, beside the same row without it.
    "autotune": (
        "nanogpt_small_nobias",
        "small_cudnn_bf16_compile_nobias_stream_region",
        "small_cudnn_bf16_compile_nobias_stream_region_autotune",
    ),
    "small_kernels": ("char_cudnn_bf16_compile_loop", "char_vanilla_bf16_compile_loop"),
}


def anchor_flops_per_token(c: dict, vocab: int = 50304) -> float:
    L, d, T = c["n_layers"], c["d_model"], c["sequence_length"]
    return 6 * (12 * L * d * d + vocab * d) + 12 * L * d * T


def smoke_spec(spec: dict) -> dict:
    """The row at a toy shape the CPU steps in a second: fp32 (bf16 where the row's residual
    stream is the compute dtype's), eager, a CPU attention kernel."""
    attention = spec.get("attention")
    cpu_attention = attention if attention in ("vanilla", "sdpa_mask", "sdpa") else "sdpa"
    out = {**spec, **TOY, "batch_size": 2, "sequence_length": 32, "compile": False, "log_every": 2}
    out["precision"] = "bf16" if spec.get("residual_stream") == "compute" else "fp32"
    if attention is not None:
        out["attention"] = cpu_attention
    return out


def build_trainer(name: str, spec: dict, device: torch.device):
    vocab = spec.get("vocab", 50257)
    spec = {k: v for k, v in spec.items() if k not in ROW_KEYS}
    cfg = build_config(
        {"data": {"source": "synthetic", "vocab_size": vocab}},
        spec,
        {
            "max_steps": 10_000,
            "warmup_steps": 10,
            "logging_steps": 10_000,
            "run_name": name,
            "progress": False,
        },
    )
    return Trainer(cfg, DistInfo(device=device), outputs=None)


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


def load_nanogpt():
    """nanoGPT's model module from ext/nanoGPT, or None when it is not there."""
    if not NANOGPT.is_file():
        return None
    spec = importlib.util.spec_from_file_location("nanogpt_model", NANOGPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_nanogpt(spec: dict, steps: int, warmup: int, device: torch.device):
    """nanoGPT's train.py step on its own GPT: returns _time's figures and the parameter count."""
    nanogpt = load_nanogpt()
    T, B = spec["sequence_length"], spec["batch_size"]
    conf = nanogpt.GPTConfig(
        block_size=T,
        vocab_size=50304,  # nanoGPT's padded GPT-2 vocabulary, as lmprof pads 50257 to
        n_layer=spec["n_layers"],
        n_head=spec["n_heads"],
        n_embd=spec["d_model"],
        dropout=spec["dropout"],
        bias=spec["bias"],
    )
    # As nanoGPT's train.py sets them (an lmprof row before may have turned them off).
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model = nanogpt.GPT(conf).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device.type)
    if spec.get("compile"):
        model = torch.compile(model)
    bf16 = spec["precision"] == "bf16"
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    # Contiguous x and y, as nanoGPT's get_batch gives them (its loss calls targets.view).
    windows = [torch.randint(0, 50257, (B, T + 1), device=device) for _ in range(4)]
    data = [(w[:, :-1].contiguous(), w[:, 1:].contiguous()) for w in windows]

    def step(i):
        x, y = data[i % len(data)]
        with ctx:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _time(step, steps, warmup, device), n_params


class _Clock:
    """CUDA events on a GPU; the host clock on the CPU, where the work is synchronous."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def ms(self, start, end) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3


def _time(step, steps: int, warmup: int, device: torch.device | None = None):
    clock = _Clock(device or torch.device("cuda"))
    t0 = time.perf_counter()
    step(0)
    clock.sync()
    first = time.perf_counter() - t0
    for i in range(1, warmup):
        step(i)
    marks = []
    clock.sync()
    wall0 = time.perf_counter()
    for i in range(steps):
        s = clock.mark()
        step(i)
        marks.append((s, clock.mark()))
    clock.sync()
    wall = (time.perf_counter() - wall0) / steps * 1e3
    return [clock.ms(s, e) for s, e in marks], first, wall


def time_loop(name: str, spec: dict, steps: int, warmup: int, device: torch.device):
    """The Trainer's own timed step (Trainer._step) on its own host-to-device batch stream."""
    trainer = build_trainer(name, spec, device)
    batches = trainer.batches()
    every = spec.get("log_every", LOG_EVERY)
    try:  # the loss meter of today's loop; main's older _Interval for a before/after call
        from lmprof.train.state import LossMeter

        meter = LossMeter(trainer.device)
    except ImportError:
        from lmprof.train.loop import _Interval  # type: ignore[attr-defined]

        meter = None
        old = _Interval(trainer.device)
    trainer.model.train()

    def step(i):
        log = (i + 1) % every == 0  # a log point, as fit has: the one read of an interval
        if meter is not None:
            trainer._step(batches, meter, log)
            if log:
                meter.take(trainer.dist)
        else:
            trainer._step(batches, old)
            if log:
                loss, correct, _, _ = old.take()
                torch.stack([loss.double(), correct.double()]).tolist()
        if log:
            trainer.timer.collect()
            trainer.instruments.collect()

    return _time(step, steps, warmup, device), trainer.n_params


def time_lmprof(name: str, spec: dict, steps: int, warmup: int, device: torch.device):
    if spec.get("loop"):
        return time_loop(name, spec, steps, warmup, device)
    trainer = build_trainer(name, spec, device)
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
    return _time(lambda i: trainer.train_step(it), steps, warmup, device), trainer.n_params


def loss_unavailable(spec: dict, cuda: bool) -> str | None:
    """Why the row's model.loss cannot run here (quack missing, or a CUDA-only loss on the
    CPU), or None: such a row is skipped with that line, not counted as a failure."""
    desc = losses.loss(spec.get("loss", losses.DEFAULT))
    reason = desc.unavailable()
    if reason is None and desc.cuda_only and not cuda:
        reason = f"loss {desc.name} needs a CUDA GPU"
    return reason


def measure(name: str, spec: dict, steps: int, warmup: int, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    row = {
        "name": name,
        "model": "nanogpt"
        if spec.get("nanogpt")
        else "seed"
        if spec.get("seed_module")
        else "lmprof",
        **{
            k: spec.get(k)
            for k in (
                "batch_size",
                "sequence_length",
                "precision",
                "attention",
                "loss",
                "compile",
                "bias",
            )
        },
        "ref": spec.get("ref"),
    }
    try:
        if spec.get("seed_module"):
            times, first, wall = time_seed_module(spec, steps, warmup)
            n_params = None
        elif spec.get("nanogpt"):
            if not NANOGPT.is_file():
                row.update(status="skipped", detail=f"{NANOGPT} is absent")
                return row
            (times, first, wall), n_params = time_nanogpt(spec, steps, warmup, device)
        else:
            reason = loss_unavailable(spec, cuda)
            if reason:
                row.update(status="skipped", detail=reason)
                print(f"step_throughput: {name} skipped: {reason}", file=sys.stderr)
                return row
            (times, first, wall), n_params = time_lmprof(name, spec, steps, warmup, device)
    except torch.OutOfMemoryError as exc:
        row.update(status="oom", detail=str(exc).splitlines()[0][:120])
        return row
    except Exception as exc:  # noqa: BLE001 -- one row's failure (FA4 missing...), not the call's
        row.update(status="error", detail=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        return row
    med = statistics.median(times)
    deciles = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else [med] * 9
    tokens = spec["batch_size"] * spec["sequence_length"]
    tps = tokens / (med / 1e3)
    vocab = spec.get("vocab", 50304)
    row.update(
        status="ok",
        params_m=n_params / 1e6 if n_params else None,
        step_ms_p50=med,
        step_ms_p10=deciles[0],
        step_ms_p90=deciles[-1],
        wall_ms_per_step=wall,
        tokens_per_sec=tps,
        mfu=tps * anchor_flops_per_token(spec, vocab) / PEAK_BF16,
        peak_mem_gib=torch.cuda.max_memory_allocated() / GIB if cuda else 0.0,
        first_step_s=first,
        compile_s=max(0.0, first - med / 1e3) if spec.get("compile") else 0.0,
    )
    return row


def markdown(rows: list[dict]) -> str:
    """The table: tokens/s, the ratio to the row's `ref` (same call), MFU, step-time median with
    its p10-p90 spread, peak memory."""
    by_name = {r["name"]: r for r in rows if r["status"] == "ok"}
    head = (
        "| config | batch | seq | tokens/s | vs ref | MFU | step ms p50 [p10, p90] "
        "| wall ms/step | peak GiB | compile s |\n"
    )
    head += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    for r in rows:
        if r["status"] != "ok":
            why = f"{r['status']}: {r.get('detail', '')}".rstrip(": ")
            head += f"| {r['name']} | {r['batch_size']} | {r['sequence_length']} | {why} |"
            head += " | | | | | |\n"
            continue
        ref = by_name.get(r.get("ref") or "")
        ratio = f"{r['tokens_per_sec'] / ref['tokens_per_sec']:.2f}x {ref['name']}" if ref else ""
        head += (
            f"| {r['name']} | {r['batch_size']} | {r['sequence_length']} "
            f"| {r['tokens_per_sec'] / 1e3:.0f}k | {ratio} | {r['mfu'] * 100:.1f}% "
            f"| {r['step_ms_p50']:.2f} [{r['step_ms_p10']:.2f}, {r['step_ms_p90']:.2f}] "
            f"| {r['wall_ms_per_step']:.2f} | {r['peak_mem_gib']:.2f} | {r['compile_s']:.0f} |\n"
        )
    return head


def expand(names: list[str]) -> list[str]:
    """Configuration names with each group name replaced by its rows, first mention kept."""
    out: list[str] = []
    for n in names:
        for m in GROUPS.get(n, (n,)):
            if m not in out:
                out.append(m)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", nargs="*", help="configuration or group names (default: all rows)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--list", action="store_true")
    ap.add_argument(
        "--cpu-smoke", action="store_true", help="the rows at a toy shape on the CPU, 3 steps"
    )
    a = ap.parse_args()
    if a.list:
        print("\n".join([*CONFIGS, *(f"{g}: {' '.join(rows)}" for g, rows in GROUPS.items())]))
        return 0
    names = expand(a.only or list(CONFIGS))
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"step_throughput: unknown configuration(s) {unknown}; see --list", file=sys.stderr)
        return 2
    if a.steps < 2 or a.warmup < 1:
        print(
            "step_throughput: --steps must be at least 2 and --warmup at least 1", file=sys.stderr
        )
        return 2
    if a.cpu_smoke:
        device, steps, warmup = torch.device("cpu"), 3, 1
    elif not torch.cuda.is_available():
        print("step_throughput: needs a CUDA GPU (or --cpu-smoke)", file=sys.stderr)
        return 2
    else:
        device, steps, warmup = torch.device("cuda", 0), a.steps, a.warmup
    if any(CONFIGS[n].get("nanogpt") for n in names) and not NANOGPT.is_file():
        print(f"step_throughput: {NANOGPT} is absent: nanogpt rows skipped", file=sys.stderr)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        spec = smoke_spec(CONFIGS[name]) if a.cpu_smoke else CONFIGS[name]
        if a.cpu_smoke and spec.get("seed_module"):
            continue  # the seed module's step is fp16 with a GradScaler: CUDA only
        row = measure(name, spec, steps, warmup, device)
        rows.append(row)
        print(json.dumps(row), flush=True)
        torch._dynamo.reset()  # compiled graphs of the last model hold its memory
        gc.collect()
        meta = {
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)",
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
    ok = all(r["status"] in ("ok", "skipped") for r in rows)
    return 0 if ok and all(math.isfinite(r.get("tokens_per_sec", 0)) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
