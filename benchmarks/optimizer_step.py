"""The optimizer phase of a GPT-2-sized step on the GPU: gradient clipping, then fused AdamW.

    python benchmarks/optimizer_step.py [--out DIR] [--model small|medium] [--iters N]

Three ways (and the norm alone, two ways), on lmprof's own parameters (no biases) with random fp32 gradients, each timed by
CUDA events around the whole phase, interleaved round by round so drift hits all three alike:
- `clip_grad_norm_`: torch.nn.utils.clip_grad_norm_ then the fused AdamW step (the PyTorch path,
  what lmprof ran before `train/optim.py: clip_in_step`);
- `clip_in_step`: the norm, then the step dividing each gradient by it in its own pass;
- `no_clip`: the step alone (the floor);
- `norm_foreach`, `norm_per_tensor`, `norm_compiled`: the gradients' norm alone, by foreach
  kernels (what the first two use), by one reduction a tensor, or by inductor's code.
Every variant starts from the same gradients (copied back in before each timing, outside it).
Each is timed twice a round. Queued: behind a ~5 ms `torch.cuda._sleep`, so the host has
launched the whole phase before its first kernel runs: kernel time only, as in a training step,
where the host launches the optimizer while the backward still runs. From idle: the GPU waits
on the host's launches, as a benchmark of the phase alone would see it.
The table gives the medians with p10 and p90, and the bytes `ops.catalog.AdamW.bytes_per_step`
counts, over the queued median. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

from lmprof.io import atomic_write_text
from lmprof.model import ModelArgs, Transformer
from lmprof.ops.catalog import AdamW
from lmprof.train.optim import clip_in_step

SHAPES = {
    "small": {"n_layers": 12, "d_model": 768, "n_heads": 12, "d_ff": 3072},
    "medium": {"n_layers": 24, "d_model": 1024, "n_heads": 16, "d_ff": 4096},
}
VARIANTS = (
    "clip_grad_norm_",
    "clip_in_step",
    "no_clip",
    "norm_foreach",
    "norm_per_tensor",
    "norm_compiled",
)
# The norm alone, two ways: the variants above compute it with foreach kernels
# (get_total_norm(foreach=True), which clip_grad_norm_ uses on CUDA), or one reduction a tensor.
NORMS = {"norm_foreach": True, "norm_per_tensor": False}
QUEUED = (True, False)
SLEEP_CYCLES = 10_000_000  # ~5 ms at the H100's ~1.98 GHz: longer than any phase's launches


def _setup(model: str):
    args = ModelArgs(vocab_size=50304, max_seq_len=1024, bias=False, **SHAPES[model])
    with torch.device("cuda"):
        net = Transformer(args)
    params = [p for p in net.parameters() if p.requires_grad]
    g = torch.Generator(device="cuda").manual_seed(0)
    grads = [torch.randn(p.shape, device="cuda", generator=g) * 1e-2 for p in params]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=1e-4,
        betas=(0.9, 0.95),
        fused=True,
    )
    return params, grads, opt


@torch.compile
def _compiled_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([g.float().pow(2).sum() for g in grads]).sum().sqrt()


def _phase(variant: str, opt, params) -> None:
    if variant == "clip_grad_norm_":
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    elif variant == "clip_in_step":
        clip_in_step(opt, params, 1.0)
    elif variant == "norm_compiled":
        _compiled_norm([p.grad for p in params])
    elif variant in NORMS:
        nn.utils.get_total_norm([p.grad for p in params], foreach=NORMS[variant])
    else:
        opt.step()


def _q(xs: list[float]) -> tuple[float, float, float]:
    d = statistics.quantiles(xs, n=10, method="inclusive")
    return statistics.median(xs), d[0], d[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/latest")
    ap.add_argument("--model", choices=tuple(SHAPES), default="small")
    ap.add_argument("--iters", type=int, default=60)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("optimizer_step: needs a CUDA GPU", file=sys.stderr)
        return 2
    params, grads, opt = _setup(a.model)
    times: dict[tuple[str, bool], list[float]] = {(v, q): [] for v in VARIANTS for q in QUEUED}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for i in range(a.iters + 5):
        for v in VARIANTS:
            for queued in QUEUED:
                for p, g in zip(params, grads, strict=True):
                    if p.grad is None:
                        p.grad = g.clone()
                    else:
                        p.grad.copy_(g)
                torch.cuda.synchronize()
                if queued:
                    torch.cuda._sleep(SLEEP_CYCLES)
                start.record()
                _phase(v, opt, params)
                end.record()
                end.synchronize()
                if i >= 5:  # the first rounds build the fused kernels' state
                    times[v, queued].append(start.elapsed_time(end))
    n = sum(p.numel() for p in params)
    rows = []
    for v in VARIANTS:
        med, p10, p90 = _q(times[v, True])
        idle, idle10, idle90 = _q(times[v, False])
        if v.startswith("norm_"):
            nbytes = 4.0 * n  # every gradient read once
        else:
            nbytes = AdamW.bytes_per_step(n, clipping=v != "no_clip", in_step=v == "clip_in_step")
        rows.append(
            {
                "variant": v,
                "ms_p50": med,
                "ms_p10": p10,
                "ms_p90": p90,
                "idle_ms_p50": idle,
                "idle_ms_p10": idle10,
                "idle_ms_p90": idle90,
                "counted_gb": nbytes / 1e9,
                "tb_per_s": nbytes / (med * 1e-3) / 1e12,
            }
        )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    head = f"GPT-2 {a.model} without biases: {n / 1e6:.1f}M fp32 parameters, {a.iters} rounds"
    lines = [
        head,
        "",
        "| variant | queued ms p50 [p10, p90] | from idle ms p50 [p10, p90] | counted GB "
        "| TB/s at queued p50 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['ms_p50']:.3f} [{r['ms_p10']:.3f}, {r['ms_p90']:.3f}] "
            f"| {r['idle_ms_p50']:.3f} [{r['idle_ms_p10']:.3f}, {r['idle_ms_p90']:.3f}] "
            f"| {r['counted_gb']:.2f} | {r['tb_per_s']:.2f} |"
        )
    table = "\n".join(lines) + "\n"
    atomic_write_text(out / f"optimizer_step_{a.model}.md", table)
    atomic_write_text(out / f"optimizer_step_{a.model}.json", json.dumps(rows, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
