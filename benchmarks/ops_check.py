"""The fused cross-entropy on the GPU: the Triton kernels against PyTorch, and what they cost.

    python benchmarks/ops_check.py [--out DIR]

Correctness: loss, correct count and gradient of `lmprof.ops.cross_entropy` (Triton) against
`F.cross_entropy` on fp32 logits and against the operator's own PyTorch path, fresh random logits
per dtype, a third of the targets ignored. Cost: forward + backward of the loss alone over GPT-2
small's logits (16 x 1024 tokens x 50304), median of CUDA-event timings, and the memory the
backward holds at its peak, for the fused op, the eager `F.cross_entropy(logits.float())` +
argmax it replaces, and the same compiled. Needs a CUDA GPU; prints a table last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from lmprof.ops import IGNORE_INDEX
from lmprof.ops import cross_entropy as ce

N, V = 16 * 1024, 50304


def _inputs(dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    logits = (torch.randn(N, V, device="cuda", generator=g) * 2).to(dtype)
    targets = torch.randint(0, V, (N,), device="cuda", generator=g)
    targets[::3] = IGNORE_INDEX
    return logits, targets


def _old(logits, targets):
    loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
    return loss, (logits.detach().argmax(-1) == targets).sum()


def check(dtype) -> dict:
    logits, targets = _inputs(dtype, seed={torch.float32: 1, torch.bfloat16: 2, torch.float16: 3}[dtype])
    x = logits.clone().requires_grad_()
    loss, correct = ce.cross_entropy(x, targets)
    (grad,) = torch.autograd.grad(loss, x)
    xr = logits.clone().requires_grad_()
    ref_loss, ref_correct = _old(xr, targets)
    (ref_grad,) = torch.autograd.grad(ref_loss, xr)
    # The operator's PyTorch path on the same device, for the per-row results.
    losses_t, lse_t, correct_t = ce._fwd_torch(logits, targets)
    losses_k, lse_k, correct_k = ce._fwd_triton(logits, targets)
    rel = ((grad.float() - ref_grad.float()).norm() / ref_grad.float().norm()).item()
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "loss": loss.item(), "ref_loss": ref_loss.item(),
        "loss_rel_err": abs(loss.item() - ref_loss.item()) / abs(ref_loss.item()),
        "correct": int(correct), "ref_correct": int(ref_correct),
        "grad_rel_err": rel, "grad_finite": bool(torch.isfinite(grad).all()),
        "lse_max_abs_err_vs_torch_path": (lse_k - lse_t).abs().max().item(),
        "row_losses_max_abs_err": (losses_k - losses_t).abs().max().item(),
        "correct_rows_equal": bool(torch.equal(correct_k, correct_t)),
        "ignored_rows_grad_zero": bool((grad[targets == IGNORE_INDEX] == 0).all()),
    }


def _time(fn, logits, targets, reps=20) -> tuple[float, float]:
    x = logits.clone().requires_grad_()
    for _ in range(3):
        loss, _ = fn(x, targets)
        loss.backward()
        x.grad = None
    times = []
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        loss, correct = fn(x, targets)
        loss.backward()
        e.record()
        x.grad = None
        times.append((s, e))
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    return statistics.median(s.elapsed_time(e) for s, e in times), peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("ops_check: needs a CUDA GPU", file=sys.stderr)
        return 2
    checks = [check(dt) for dt in (torch.float32, torch.bfloat16, torch.float16)]
    logits, targets = _inputs(torch.bfloat16, seed=4)
    timings = {}
    for name, fn in (("fused (Triton)", ce.cross_entropy), ("F.cross_entropy(fp32) eager", _old),
                     ("F.cross_entropy(fp32) compiled", torch.compile(_old))):
        timings[name] = _time(fn, logits, targets)
    lines = ["| dtype | loss rel err | correct (ref) | grad rel err | lse err vs torch path | rows equal |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {c['dtype']} | {c['loss_rel_err']:.1e} | {c['correct']} ({c['ref_correct']}) | "
              f"{c['grad_rel_err']:.1e} | {c['lse_max_abs_err_vs_torch_path']:.1e} | {c['correct_rows_equal']} |"
              for c in checks]
    lines += ["", f"Loss forward + backward over bf16 logits {N} x {V} (median of 20):", "",
              "| implementation | ms | memory beyond the logits, GiB |", "| --- | --- | --- |"]
    lines += [f"| {k} | {ms:.3f} | {gib:.2f} |" for k, (ms, gib) in timings.items()]
    text = "\n".join(lines)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ops_check.json").write_text(json.dumps({"gpu": torch.cuda.get_device_name(),
                                                    "torch": torch.__version__, "checks": checks,
                                                    "timings_ms_gib": timings}, indent=1))
    (out / "ops_check.md").write_text(text + "\n")
    print(text)
    ok = all(c["loss_rel_err"] < 1e-5 and c["grad_rel_err"] < 1e-2 and c["grad_finite"]
             and c["correct"] == c["ref_correct"] and c["ignored_rows_grad_zero"] for c in checks)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
