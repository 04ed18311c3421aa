"""Where FlashAttention-4 overtakes cuDNN: attention alone across sequence lengths, then the model.

    python benchmarks/attention_crossover.py --out DIR [--reps 20] [--warmup 5] [--skip-model]

Attention alone, bf16, causal, at a fixed B*T = 16384 tokens per batch (B = 1 from T = 16384 on,
so T = 32768 runs with B = 1), T = 512..32768 in powers of 2, heads x head dim 12 x 64 (GPT-2
small) and 16 x 128: the median of `--reps` CUDA-event timings (after `--warmup` untimed calls)
of one forward + backward, for SDPA forced to cuDNN, SDPA forced to FlashAttention(-2) and FA4
through lmprof's custom op `lmprof::fa4_attention` (ops/flash_attn4.py), each on its own layout
as model.py hands it over ((B, H, T, D) views of (B, T, H, D) for SDPA; (B, T, H, D) for FA4);
TFLOP/s counts the causal half of the T x T work (2 matmuls forward, 5 backward). Accuracy: the
largest |error| of O and of dQ, dK, dV against SDPA's math kernel in fp32 from the same bf16
inputs, on batch row 0 and as many heads as keep the fp32 T x T reference within 4 GiB a tensor
(all heads up to T = 8192 at H = 12; one at T = 32768).

Then the model: GPT-2 small shaped (12 layers, d 768, 12 heads, vocabulary 50304, no dropout)
under torch.compile and bf16 autocast, forward + backward of the loss at T = 1024 (B = 16) and
T = 8192 (B = 2), attention=fa4 against attention=cudnn: graph breaks of the compiled forward
(torch._dynamo.explain), tokens/s from the median step, the loss of the same weights and batch
(the two should agree to bf16 rounding).

The `vs cuDNN` column is cuDNN's time over the kernel's: the crossover length, the smallest T
from which FA4's stays above 1 for both shapes, is printed under the table (and is the JSON's
meta.crossover_seq_len): the value lmprof.attention_kernels.FA4_MIN_SEQ_LEN should hold. Needs a CUDA GPU; without flash-attn-4
(`pip install 'lmprof[fa4]'`) or on a GPU older than sm90 it says so in one line and times the
SDPA kernels alone. Writes attention_crossover.md and .json under --out; the table prints last.
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
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lmprof.ops import flash_attn4

TOKENS = 16384
SEQ_LENS = [2**i for i in range(9, 16)]  # 512 .. 32768
SHAPES = [(12, 64), (16, 128)]  # (heads, head dim)
REF_BYTES = 4 * 2**30  # the fp32 reference's T x T tensors, each at most this
MODEL_POINTS = [(1024, 16), (8192, 2)]  # (T, B) for the model


def _sdpa(backend):
    def run(q, k, v):  # q, k, v: (B, T, H, D); SDPA sees (B, H, T, D) views, as in model.py
        with sdpa_kernel([backend]):
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
            )
        return out.transpose(1, 2)

    return run


def _fa4(q, k, v):
    return flash_attn4.fa4_attention(q, k, v, 1.0 / math.sqrt(q.size(-1)), causal=True)


def _inputs(B, T, H, D, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v, dout = (
        torch.randn(B, T, H, D, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(4)
    )
    return q, k, v, dout


def _fwd_bwd(fn, q, k, v, dout):
    out = fn(q, k, v)
    return out, torch.autograd.grad(out, (q, k, v), dout)


def _time(fn, q, k, v, dout, reps: int, warmup: int) -> float:
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    for _ in range(warmup):
        _fwd_bwd(fn, q, k, v, dout)
    torch.cuda.synchronize()
    events = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        _fwd_bwd(fn, q, k, v, dout)
        e.record()
        events.append((s, e))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def _errors(fn, q, k, v, dout, ref) -> dict:
    """Largest |kernel - fp32 math| of O, dQ, dK, dV on the reference's rows and heads."""
    b, h = ref["rows"]
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    out, grads = _fwd_bwd(fn, qg, kg, vg, dout)
    got = (out, *grads)
    names = ("out", "dq", "dk", "dv")
    return {
        f"err_{n}": (g[:b, :, :h].float() - r).abs().max().item()
        for n, g, r in zip(names, got, ref["values"], strict=True)
    }


def _reference(q, k, v, dout) -> dict:
    B, T, H, _ = q.shape
    h = max(1, min(H, REF_BYTES // (T * T * 4)))
    b = 1
    qf, kf, vf = (t[:b, :, :h].float().requires_grad_() for t in (q, k, v))
    out, grads = _fwd_bwd(_sdpa(SDPBackend.MATH), qf, kf, vf, dout[:b, :, :h].float())
    values = tuple(t.detach() for t in (out, *grads))
    scale = {
        f"ref_max_{n}": t.abs().max().item() for n, t in zip(("out", "dq"), values[:2], strict=True)
    }
    return {"rows": (b, h), "values": values, "heads_checked": h, **scale}


def attention_rows(kernels: dict, reps: int, warmup: int) -> list[dict]:
    rows = []
    for H, D in SHAPES:
        for T in SEQ_LENS:
            B = max(1, TOKENS // T)
            q, k, v, dout = _inputs(B, T, H, D)
            try:
                ref = _reference(q, k, v, dout)
            except torch.OutOfMemoryError:
                ref = None
            torch.cuda.empty_cache()
            # causal: half the T x T; 2 matmuls forward and 5 backward of 2*T*T*D FLOPs each
            flops = 7 * 2 * B * H * T * T * D / 2
            for name, fn in kernels.items():
                row = {"heads": H, "head_dim": D, "seq_len": T, "batch": B, "kernel": name}
                try:
                    ms = _time(fn, q, k, v, dout, reps, warmup)
                    row |= {"status": "ok", "ms": ms, "tflops": flops / ms / 1e9}
                    if ref is not None:
                        row |= _errors(fn, q, k, v, dout, ref)
                        # the reference's magnitudes, to read the errors against
                        row |= {k: v for k, v in ref.items() if k.startswith(("ref_", "heads_"))}
                except torch.OutOfMemoryError:
                    row["status"] = "oom"
                except Exception as exc:  # a kernel that refuses the shape: say which and why
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    row["status"] = f"error: {type(exc).__name__}: {first[:100]}"
                rows.append(row)
                print(json.dumps(row), flush=True)
                gc.collect()
                torch.cuda.empty_cache()
            del ref, q, k, v, dout
            gc.collect()
            torch.cuda.empty_cache()
    return rows


def model_rows(attentions: list[str], reps: int, warmup: int) -> list[dict]:
    from lmprof.model import ModelArgs, Transformer

    rows = []
    for T, B in MODEL_POINTS:
        for attention in attentions:
            row = {"attention": attention, "seq_len": T, "batch": B}
            try:
                torch._dynamo.reset()
                torch.manual_seed(0)
                args = ModelArgs(
                    vocab_size=50304,
                    d_model=768,
                    n_heads=12,
                    n_layers=12,
                    d_ff=3072,
                    dropout=0.0,
                    max_seq_len=T,
                    attention=attention,
                )
                with torch.device("cuda"):
                    model = Transformer(args)
                g = torch.Generator(device="cuda").manual_seed(1)
                ids = torch.randint(0, 50257, (B, T), device="cuda", generator=g)
                targets = torch.randint(0, 50257, (B, T), device="cuda", generator=g)

                def loss_fn(m, ids=ids, targets=targets):
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        return m(ids, targets)[0]

                explained = torch._dynamo.explain(loss_fn)(model)
                row["graphs"] = explained.graph_count
                row["graph_breaks"] = explained.graph_break_count
                row["break_reasons"] = [str(r.reason)[:120] for r in explained.break_reasons]
                torch._dynamo.reset()
                compiled = torch.compile(model)
                t0 = time.perf_counter()
                loss = loss_fn(compiled)
                loss.backward()
                torch.cuda.synchronize()
                row["compile_s"] = time.perf_counter() - t0
                row["loss"] = loss.item()
                for _ in range(warmup):
                    model.zero_grad(set_to_none=True)
                    loss_fn(compiled).backward()
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                events = []
                for _ in range(reps):
                    model.zero_grad(set_to_none=True)
                    s, e = (
                        torch.cuda.Event(enable_timing=True),
                        torch.cuda.Event(enable_timing=True),
                    )
                    s.record()
                    loss_fn(compiled).backward()
                    e.record()
                    events.append((s, e))
                torch.cuda.synchronize()
                ms = statistics.median(s.elapsed_time(e) for s, e in events)
                row |= {
                    "status": "ok",
                    "step_ms": ms,
                    "tokens_per_s": B * T / ms * 1e3,
                    "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                }
            except torch.OutOfMemoryError:
                row["status"] = "oom"
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                row["status"] = f"error: {type(exc).__name__}: {first[:100]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
            model = compiled = None
            torch._dynamo.reset()
            gc.collect()
            torch.cuda.empty_cache()
    return rows


def crossover(rows: list[dict]) -> int | None:
    """The smallest T from which FA4 is faster than cuDNN at every larger T, for every shape."""
    ms = {(r["heads"], r["seq_len"], r["kernel"]): r.get("ms") for r in rows}
    for T in SEQ_LENS:
        later = [t for t in SEQ_LENS if t >= T]
        if all(
            ms.get((H, t, "fa4"))
            and ms.get((H, t, "cudnn"))
            and ms[(H, t, "fa4")] < ms[(H, t, "cudnn")]
            for H, _ in SHAPES
            for t in later
        ):
            return T
    return None


def error_ratio(rows: list[dict]) -> dict[str, float]:
    """For O, dQ, dK, dV: the largest FA4 error / cuDNN error over the points both measured."""
    by = {(r["heads"], r["seq_len"], r["kernel"]): r for r in rows}
    out: dict[str, float] = {}
    for (H, T, kernel), r in by.items():
        base = by.get((H, T, "cudnn"))
        if kernel != "fa4" or base is None:
            continue
        for key in ("err_out", "err_dq", "err_dk", "err_dv"):
            if key in r and base.get(key):
                out[key] = max(out.get(key, 0.0), r[key] / base[key])
    return out


def _e(r: dict, key: str) -> str:
    return f"{r[key]:.1e}" if key in r else ""


def markdown(att: list[dict], model: list[dict], note: str) -> str:
    lines = [
        "| H x D | T | B | kernel | ms (fwd+bwd) | TFLOP/s | vs cuDNN | max err O | dQ | dK | dV |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    cudnn = {(r["heads"], r["seq_len"]): r.get("ms") for r in att if r["kernel"] == "cudnn"}
    for r in att:
        head = f"| {r['heads']} x {r['head_dim']} | {r['seq_len']} | {r['batch']} | {r['kernel']} |"
        if r["status"] != "ok":
            lines.append(f"{head} {r['status']} | | | | | | |")
            continue
        base = cudnn.get((r["heads"], r["seq_len"]))
        speed = f"{base / r['ms']:.2f}x" if base else ""
        lines.append(
            f"{head} {r['ms']:.3f} | {r['tflops']:.0f} | {speed} | {_e(r, 'err_out')} | "
            f"{_e(r, 'err_dq')} | {_e(r, 'err_dk')} | {_e(r, 'err_dv')} |"
        )
    cross = crossover(att)
    ratio = error_ratio(att)
    if ratio:
        lines += [
            "",
            "FA4's error over cuDNN's, the largest ratio over shapes and T: "
            + ", ".join(f"{k.removeprefix('err_')} {v:.2f}" for k, v in ratio.items()),
        ]
    lines += [
        "",
        f"FA4 faster than cuDNN from T = {cross} on, for both shapes"
        if cross
        else "FA4 is not faster than cuDNN at every T from some length on (or was not run)",
    ]
    if model:
        lines += [
            "",
            "GPT-2 small shaped, torch.compile, bf16 autocast, forward + backward of the loss:",
            "",
            "| attention | T | B | graphs | graph breaks | tokens/s | step ms | peak GiB | loss | compile s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in model:
            head = f"| {r['attention']} | {r['seq_len']} | {r['batch']} |"
            if r["status"] != "ok":
                lines.append(
                    f"{head} {r.get('graphs', '')} | {r.get('graph_breaks', '')} | {r['status']} | | | | |"
                )
                continue
            lines.append(
                f"{head} {r['graphs']} | {r['graph_breaks']} | {r['tokens_per_s'] / 1e3:.1f}k | "
                f"{r['step_ms']:.1f} | {r['peak_gib']:.1f} | {r['loss']:.4f} | {r['compile_s']:.0f} |"
            )
    if note:
        lines += ["", note]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--skip-model", action="store_true", help="attention alone, no model")
    a = ap.parse_args()
    if a.reps < 20:
        print("attention_crossover: --reps must be at least 20", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("attention_crossover: needs a CUDA GPU", file=sys.stderr)
        return 2
    kernels = {
        "cudnn": _sdpa(SDPBackend.CUDNN_ATTENTION),
        "flash": _sdpa(SDPBackend.FLASH_ATTENTION),
    }
    note = ""
    reason = flash_attn4.unavailable_reason()
    if reason:
        note = f"FA4 not measured: {reason}"
        print(f"attention_crossover: {note}", flush=True)
    else:
        kernels["fa4"] = _fa4
    att = attention_rows(kernels, a.reps, a.warmup)
    attentions = ["cudnn"] + (["fa4"] if "fa4" in kernels else [])
    model = [] if a.skip_model else model_rows(attentions, a.reps, a.warmup)
    meta = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "crossover_seq_len": crossover(att),
        "fa4_over_cudnn_error": error_ratio(att),
        "note": note,
    }
    try:
        from importlib.metadata import version

        meta["flash_attn_4"] = version("flash-attn-4")
    except Exception:
        meta["flash_attn_4"] = ""
    text = markdown(att, model, note)
    header = (
        f"GPU {meta['gpu']}, torch {meta['torch']} (CUDA {meta['cuda']}, cuDNN {meta['cudnn']}), "
        f"flash-attn-4 {meta['flash_attn_4'] or 'absent'}, {meta['date']}\n\n`{meta['command']}`\n\n"
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention_crossover.json").write_text(
        json.dumps({"meta": meta, "attention": att, "model": model}, indent=1)
    )
    (out / "attention_crossover.md").write_text(header + text + "\n")
    print(header + text)
    return 0 if all(r["status"] == "ok" for r in att + model) else 1


if __name__ == "__main__":
    raise SystemExit(main())
