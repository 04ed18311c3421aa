"""The fused LM head + cross-entropy on the GPU: the Triton path against PyTorch, and its cost.

    python benchmarks/ops_check.py [--out DIR] [--losses-only]

Correctness: loss, correct count and the gradients of h and W from
`lmprof.ops.cross_entropy.linear_cross_entropy` (Triton) against `F.cross_entropy(h @ W.T)`
computed in fp32 from the same inputs, and the per-row Triton kernel against the op's PyTorch path, fresh random inputs per
dtype, a third of the targets ignored. Cost: forward + backward of the LM head and the loss alone
at GPT-2 small's shape (16 x 1024 tokens, d 768, vocabulary 50304), median of CUDA-event
timings, and the memory held beyond the inputs at the peak: the fused op (all tokens at once,
and 4096 at a time) against the eager and the compiled `F.cross_entropy(logits.float())` +
argmax it replaces. Then every `model.loss` choice this machine can run (ops/losses.py: fused,
pytorch, and quack and quack_chunked where quack-kernels imports; the others are skipped with a
line) through its lmprof class, summed over real targets, in bf16: its loss, dh and dW against
the fp32 reference, and its forward + backward timed, eager and inside torch.compile.
`--losses-only` runs that part alone. Needs a CUDA GPU; prints a table last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from lmprof.io import atomic_write_text
from lmprof.ops import IGNORE_INDEX, losses
from lmprof.ops import cross_entropy as ce

N, D, V = 16 * 1024, 768, 50304


def _inputs(dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    h = torch.randn(N, D, device="cuda", generator=g).to(dtype)
    w = (torch.randn(V, D, device="cuda", generator=g) * 0.05).to(dtype)
    targets = torch.randint(0, V, (N,), device="cuda", generator=g)
    targets[::3] = IGNORE_INDEX
    return h, w, targets


def _old(h, w, targets):
    logits = h @ w.t()
    loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
    return loss, (logits.detach().argmax(-1) == targets).sum()


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def check(dtype, seed) -> dict:
    h0, w0, targets = _inputs(dtype, seed)
    row = {"dtype": str(dtype).removeprefix("torch.")}
    ref = None
    for chunk in (0, 4096):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        loss, correct = ce.linear_cross_entropy(h, w, targets, chunk)
        gh, gw = torch.autograd.grad(loss, (h, w))
        if ref is None:
            # The reference in fp32 from the same inputs: its fp16 gradient would underflow
            # (softmax / n_valid < 6e-8 for most of the 50k classes) without a loss scale.
            hr, wr = h0.float().requires_grad_(), w0.float().requires_grad_()
            ref_loss, ref_correct = _old(hr, wr, targets)
            ref = (ref_loss.item(), int(ref_correct), *torch.autograd.grad(ref_loss, (hr, wr)))
        row[f"chunk{chunk}"] = {
            "loss_rel_err": abs(loss.item() - ref[0]) / abs(ref[0]),
            "correct": int(correct),
            "ref_correct": ref[1],
            "grad_h_rel_err": _rel(gh, ref[2]),
            "grad_w_rel_err": _rel(gw, ref[3]),
            "finite": bool(torch.isfinite(gh).all() and torch.isfinite(gw).all()),
        }
    logits = h0[:4096] @ w0.t()
    a, b = logits.clone(), logits.clone()
    la, ca = ce._rows_torch(a, targets[:4096], True)
    lb, cb = ce._rows_triton(b, targets[:4096], True)
    row["rows_kernel"] = {
        "loss_max_abs_err": (la - lb).abs().max().item(),
        "correct_equal": bool(torch.equal(ca, cb)),
        "grad_max_abs_err": (a.float() - b.float()).abs().max().item(),
    }
    return row


def _time(fn, h0, w0, targets, reps=20) -> tuple[float, float]:
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    for _ in range(3):
        fn(h, w, targets)[0].backward()
        h.grad = w.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    events = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn(h, w, targets)[0].backward()
        e.record()
        h.grad = w.grad = None
        events.append((s, e))
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    return statistics.median(s.elapsed_time(e) for s, e in events), peak


def _sum_ref(h, w, targets):
    logits = h @ w.t()
    loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, (logits.detach().argmax(-1) == targets).sum()


def check_losses(seed: int = 11) -> tuple[list[dict], list[str]]:
    """Each runnable model.loss, bf16 inputs, against the fp32 reference: relative errors of the
    summed loss, dh and dW, the count right; and forward + backward ms and peak GiB, eager and
    compiled. A loss that cannot run here is a line in the second list."""
    h0, w0, targets = _inputs(torch.bfloat16, seed)
    hr, wr = h0.float().requires_grad_(), w0.float().requires_grad_()
    ref_loss, ref_correct = _sum_ref(hr, wr, targets)
    ref = (ref_loss.item(), int(ref_correct), *torch.autograd.grad(ref_loss, (hr, wr)))
    del hr, wr
    rows, skipped = [], []
    for name in losses.NAMES:
        desc = losses.loss(name)
        reason = desc.unavailable()
        if reason:
            skipped.append(f"{name}: skipped, {reason}")
            continue
        fn = desc.build(None)

        def call(h, w, t, fn=fn):
            return fn(h, w, t, accuracy=True)

        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        out = call(h, w, targets)
        gh, gw = torch.autograd.grad(out.sum, (h, w))
        row = {
            "loss": name,
            "loss_rel_err": abs(out.sum.item() - ref[0]) / abs(ref[0]),
            "correct": int(out.correct),
            "ref_correct": ref[1],
            "grad_h_rel_err": _rel(gh, ref[2]),
            "grad_w_rel_err": _rel(gw, ref[3]),
            "finite": bool(torch.isfinite(gh).all() and torch.isfinite(gw).all()),
        }
        del h, w, out, gh, gw
        for mode, f in (("eager", call), ("compiled", torch.compile(call))):
            try:
                row[f"{mode}_ms"], row[f"{mode}_gib"] = _time(f, h0, w0, targets)
            except Exception as exc:  # a compile failure is a result to report, not a crash
                row[f"{mode}_ms"] = row[f"{mode}_gib"] = None
                row[f"{mode}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        rows.append(row)
    return rows, skipped


def _loss_lines(rows: list[dict], skipped: list[str]) -> list[str]:
    def num(x, fmt):
        return "n/a" if x is None else format(x, fmt)

    lines = [
        f"model.loss choices, bf16, summed over real targets, {N} x {D} x {V}; forward + "
        "backward, median of 20 CUDA-event timings (accuracy asked):",
        "",
        "| loss | loss rel err | correct (ref) | dh rel err | dW rel err | eager ms | eager GiB "
        "| compiled ms | compiled GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['loss']} | {r['loss_rel_err']:.1e} | {r['correct']} ({r['ref_correct']}) | "
            f"{r['grad_h_rel_err']:.1e} | {r['grad_w_rel_err']:.1e} | "
            f"{num(r['eager_ms'], '.3f')} | {num(r['eager_gib'], '.2f')} | "
            f"{num(r['compiled_ms'], '.3f')} | {num(r['compiled_gib'], '.2f')} |"
        )
    lines += [
        f"- {r['loss']} {m}: {r[m + '_error']}"
        for r in rows
        for m in ("eager", "compiled")
        if r.get(m + "_error")
    ]
    return lines + [f"- {s}" for s in skipped]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default=".")
    ap.add_argument("--losses-only", action="store_true", help="only the model.loss choices")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("ops_check: needs a CUDA GPU", file=sys.stderr)
        return 2
    loss_rows, skipped = check_losses()
    loss_ok = all(
        r["loss_rel_err"] < 1e-3
        and r["finite"]
        and abs(r["correct"] - r["ref_correct"]) <= 2  # bf16 logits may flip a near tie
        and max(r["grad_h_rel_err"], r["grad_w_rel_err"]) < 2e-2
        for r in loss_rows
    )
    if a.losses_only:
        return _write(
            Path(a.out),
            {"losses": loss_rows, "skipped": skipped},
            _loss_lines(loss_rows, skipped),
            loss_ok,
        )
    checks = [check(dt, i) for i, dt in enumerate((torch.float32, torch.bfloat16, torch.float16))]
    h, w, targets = _inputs(torch.bfloat16, seed=7)
    timings = {}
    for name, fn in (
        ("fused, all tokens", lambda h, w, t: ce.linear_cross_entropy(h, w, t, 0)),
        ("fused, 4096 tokens a block", lambda h, w, t: ce.linear_cross_entropy(h, w, t, 4096)),
        ("lm_head + F.cross_entropy(fp32), eager", _old),
        ("lm_head + F.cross_entropy(fp32), compiled", torch.compile(_old)),
    ):
        timings[name] = _time(fn, h, w, targets)
    lines = [
        "| dtype | chunk | loss rel err | correct (ref) | dh rel err | dW rel err | row kernel vs torch |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in checks:
        rk = c["rows_kernel"]
        for chunk in (0, 4096):
            r = c[f"chunk{chunk}"]
            lines.append(
                f"| {c['dtype']} | {chunk or 'all'} | {r['loss_rel_err']:.1e} | {r['correct']} "
                f"({r['ref_correct']}) | {r['grad_h_rel_err']:.1e} | {r['grad_w_rel_err']:.1e} | "
                f"loss {rk['loss_max_abs_err']:.1e}, grad {rk['grad_max_abs_err']:.1e}, "
                f"correct equal {rk['correct_equal']} |"
            )
    lines += [
        "",
        f"LM head + loss, forward + backward, bf16, {N} tokens x d {D} x vocabulary {V} "
        "(median of 20 CUDA-event timings):",
        "",
        "| implementation | ms | peak memory beyond inputs, GiB |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {k} | {ms:.3f} | {gib:.2f} |" for k, (ms, gib) in timings.items()]
    lines += ["", *_loss_lines(loss_rows, skipped)]
    tol = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 1e-2}
    ok = all(
        r["loss_rel_err"] < 1e-3
        and r["finite"]
        and r["correct"] == r["ref_correct"]
        and max(r["grad_h_rel_err"], r["grad_w_rel_err"]) < tol[c["dtype"]]
        for c in checks
        for r in (c["chunk0"], c["chunk4096"])
    )
    result = {"checks": checks, "timings_ms_gib": timings, "losses": loss_rows, "skipped": skipped}
    return _write(Path(a.out), result, lines, ok and loss_ok)


def _write(out: Path, result: dict, lines: list[str], ok: bool) -> int:
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, **result}
    atomic_write_text(out / "ops_check.json", json.dumps(result, indent=1))
    atomic_write_text(out / "ops_check.md", text + "\n")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
