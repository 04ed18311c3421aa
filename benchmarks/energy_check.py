"""Energy, clocks and the roofline of GPT-2 small on one GPU (issue: what a setup really costs).

Runs, each its own `lmprof run` on synthetic tokens (B16, T1024, steady window after warm-up):
the seed-equivalent model in fp16, cuDNN attention eager and compiled in bf16, the compiled one
again with energy sampling off (the sampler's overhead), and the compiled one profiled with shapes
(the roofline table). Prints one table last; everything lands under --out.

    python benchmarks/energy_check.py --out OUT [--steps 150]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

from lmprof.io import atomic_write_text

BASE = ["configs/gpt2_small.yaml", "data.source=synthetic", "logging.logging_steps=25"]
MATRIX = {
    "seed_equiv_fp16": ["model_type=vanilla_transformer", "precision=fp16"],
    "cudnn_eager": ["attention=cudnn"],
    "cudnn_compiled": ["attention=cudnn", "compile=true"],
    "cudnn_compiled_nosample": ["attention=cudnn", "compile=true", "energy.sample=false"],
    # The roofline against the measured limits: an 8192^3 matmul and a 1 GiB device copy.
    "cudnn_compiled_profiled": [
        "attention=cudnn",
        "compile=true",
        "profile.enabled=true",
        "profile.record_shapes=true",
        "profile.peak=measured",
    ],
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--only", nargs="+", choices=list(MATRIX), help="a subset of the runs")
    ap.add_argument("--set", nargs="*", default=[], help="key=value overrides for every run")
    args = ap.parse_args()
    out = args.out
    for name, extra in MATRIX.items():
        if args.only and name not in args.only:
            continue
        cmd = [sys.executable, "-m", "lmprof", "run", *BASE, *extra, *args.set]
        cmd += [f"training.max_steps={args.steps}", f"logging.output_dir={out}", f"run_name={name}"]
        print("$", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=False)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    cols = ("run_name", "status", "steady_tokens_per_sec", "step_time_cv", "noisy")
    cols += ("avg_power_w", "avg_power_w_sampled", "joules_per_token", "tokens_per_kwh")
    cols += ("sm_clock_mhz_avg", "clock_reasons", "peak_gpu_mem_gb")
    lines = ["| " + " | ".join(cols) + " | counter/sampled |", "|" + " --- |" * (len(cols) + 1)]
    for r in rows:
        a, b = r.get("energy_steady_j"), r.get("energy_steady_j_sampled")
        agree = f"{float(a) / float(b):.3f}" if a and b else ""
        lines.append("| " + " | ".join(r.get(c, "") for c in cols) + f" | {agree} |")
    table = "\n".join(lines)
    atomic_write_text(out / "energy_check.md", table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
