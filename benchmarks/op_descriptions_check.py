"""The op descriptions (ops/spec.py) against a GPU: three checks, about 3 minutes on an H100.

    python -m benchmarks.op_descriptions_check --out $OUT/op_check
    python -m benchmarks.op_descriptions_check --quick --out op_check_cpu   # CPU self-test

1. memory: the memory model's peak against torch.cuda.max_memory_allocated over attention
   vanilla/sdpa/cudnn/fa4 x checkpointing none/full/selective x loss fused/pytorch (GPT-2
   small, bf16, T=1024, B=8; memory_calibration.measure's step). Kernels this machine cannot
   run are rows saying why.
2. roofline: a short traced training step with sdpa and with fa4; the roofline's attention
   GFLOP a step (from the trace's shapes and each kernel's description) beside FlopCounterMode's
   attention GFLOP for the same step; `ratio` is the roofline's over half of FlopCounterMode's
   (which counts the causal mask's skipped half too). It should be 1 within a few percent for
   both; before the descriptions FA4's was ~85x too low.
3. loss: fused vs pytorch on the same weights and batch (bf16 autocast): the summed loss and
   every gradient, largest relative difference (expect below ~2e-2, bf16 rounding).
Writes <out>/op_check.json (all rows) and prints the three tables last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from lmprof.io import atomic_write_text

ATTENTIONS = ("vanilla", "sdpa", "cudnn", "fa4")
MODES = ("none", "full", "selective")
LOSSES = ("fused", "pytorch")


def _shape(quick: bool) -> list[str]:
    from benchmarks.memory_calibration import GPT2_SMALL

    if quick:
        return ["d_model=64", "nhead=4", "num_layers=2", "dim_feedforward=128", "tokenizer=byte"]
    return [*GPT2_SMALL, "norm=pre", "activation=gelu", "pos_encoding=learned"]


def memory_rows(quick: bool) -> list[dict[str, Any]]:
    from benchmarks.memory_calibration import GPT2_VOCAB, measure

    rows = []
    for attention in ATTENTIONS:
        for mode in MODES:
            for loss in LOSSES:
                over = [
                    *_shape(quick),
                    "dropout=0.0",  # cudnn and fa4 have none
                    "bf16=true",
                    f"attention={attention}",
                    f"gradient_checkpointing={mode}",
                    f"loss={loss}",
                    "sequence_length=1024",
                    "batch_size=8",
                ]
                label = {"attention": attention, "checkpointing": mode, "loss": loss}
                try:
                    r = measure(over, vocab_size=GPT2_VOCAB, steps=2)
                except Exception as exc:  # a kernel this machine lacks: say why, go on
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    rows.append({**label, "status": f"error: {first[:100]}"})
                    continue
                rows.append(
                    {
                        **label,
                        "status": r["status"],
                        "measured_gib": r["max_allocated"] / 2**30,
                        "predicted_gib": r["predicted"] / 2**30,
                        "error": r["max_allocated"] / r["predicted"] - 1,
                        "phase": r["predicted_phase"],
                    }
                )
                print(rows[-1], flush=True)
    return rows


def _model(attention: str, loss: str, device, quick: bool):
    import torch

    from lmprof.model import ModelArgs, Transformer

    if quick:
        args = ModelArgs(vocab_size=256, d_model=64, n_heads=4, n_layers=2, d_ff=128, dropout=0.0)
    else:
        args = ModelArgs(
            vocab_size=50258, d_model=768, n_heads=12, n_layers=12, d_ff=3072, dropout=0.0
        )
    args = dataclasses.replace(args, attention=attention, loss=loss, max_seq_len=1024)
    torch.manual_seed(0)
    with torch.device(device):
        return Transformer(args)


def _batch(device, vocab: int, B: int, T: int):
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab - 1, (B, T + 1), generator=g).to(device)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def _autocast(device):
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16)


def roofline_rows(device, out: Path, quick: bool) -> list[dict[str, Any]]:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from lmprof.profiling.roofline import analyze, limits_for, load_trace

    rows = []
    B, T = (2, 64) if quick else (8, 1024)
    for attention in ("sdpa", "fa4"):
        try:
            model = _model(attention, "fused", device, quick)
            x, y = _batch(device, model.args.vocab_size, B, T)

            def step(model=model, x=x, y=y):
                with _autocast(device):
                    loss, _ = model(x, y)
                loss.backward()
                model.zero_grad(set_to_none=True)

            step()  # warm-up: kernel selection, compilation of FA4's kernels
            counter = FlopCounterMode(display=False)
            with counter:
                step()
            counts = counter.get_flop_counts().get("Global", {})
            analytic = sum(
                n for op, n in counts.items() if "attention" in str(op) or "fa4" in str(op)
            )
            acts = [ProfilerActivity.CPU] + (
                [ProfilerActivity.CUDA] if device.type == "cuda" else []
            )
            with profile(activities=acts, record_shapes=True) as prof:
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
            path = out / f"trace_{attention}.json"
            prof.export_chrome_trace(str(path))
            rl = analyze(load_trace(path), limits_for(device, "bf16"))
            att = next((r for r in rl.table() if r["group"] == "attention"), {})
            got = (att.get("gflop_per_step") or 0.0) * 1e9
            rows.append(
                {
                    "attention": attention,
                    "roofline_gflop": got / 1e9,
                    "flop_counter_gflop": analytic / 1e9,
                    # FlopCounterMode counts causal attention in full (torch's flop_counter.py:
                    # "We aren't accounting for causal attention here"); a causal kernel, and the
                    # roofline, count the half it computes.
                    "ratio": got / (analytic / 2) if analytic else None,
                    "attention_ms": att.get("ms_per_step"),
                    "step_ms": rl.step_ms(),
                }
            )
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            rows.append({"attention": attention, "error": first[:100]})
        print(rows[-1], flush=True)
    return rows


def loss_rows(device, quick: bool) -> list[dict[str, Any]]:
    B, T = (2, 64) if quick else (8, 1024)
    results = {}
    for loss in LOSSES:
        model = _model("sdpa", loss, device, quick)
        x, y = _batch(device, model.args.vocab_size, B, T)
        with _autocast(device):
            out = model(x, y, accuracy=True)
        out.sum.backward()
        grads = {n: p.grad.float().clone() for n, p in model.named_parameters()}
        results[loss] = (float(out.sum.detach()) / y.numel(), int(out.correct), grads)
        del model
    (l0, c0, g0), (l1, c1, g1) = results["fused"], results["pytorch"]
    rel = {n: float((a - g1[n]).norm() / g1[n].norm().clamp(min=1e-30)) for n, a in g0.items()}
    where = max(rel, key=rel.get)
    worst = rel[where]
    return [
        {
            "fused_loss": l0,
            "pytorch_loss": l1,
            "loss_rel_diff": abs(l0 - l1) / abs(l1),
            "fused_correct": c0,
            "pytorch_correct": c1,
            "worst_grad_rel_diff": worst,
            "worst_grad": where,
        }
    ]


def _table(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v if v is not None else "")

    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for op_check.json and the traces")
    ap.add_argument("--quick", action="store_true", help="a tiny model; on a CPU, no memory")
    a = ap.parse_args(argv)
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not a.quick:
        print("op_descriptions_check needs a CUDA GPU (or --quick for the CPU self-test)")
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "memory": memory_rows(a.quick) if device.type == "cuda" else [],
        "roofline": roofline_rows(device, out, a.quick),
        "loss": loss_rows(device, a.quick),
    }
    atomic_write_text(out / "op_check.json", json.dumps(report, indent=1))
    print(f"\n# {report['device']}, torch {report['torch']}")
    for part in ("memory", "roofline", "loss"):
        if report[part]:
            print(f"\n## {part}\n{_table(report[part])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
