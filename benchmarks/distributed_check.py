"""One-GPU checks of the distributed code paths that the CPU tests cannot reach.

1. Throughput and memory: GPT-2 small (12 x 768, 12 heads), bf16, batch 16 x 1024 tokens of
   synthetic data, with no wrapper (autocast) and with FSDP2 on one rank (MixedPrecisionPolicy,
   NCCL on a one-rank mesh): what FSDP's own machinery costs when there is nothing to shard.
2. Checkpoint -> SIGKILL -> resume on CUDA, for no wrapper and for FSDP2: an uninterrupted run,
   a second one (the run-to-run noise), and one killed after step 15 (checkpoints every 10) then
   resumed with checkpoint.resume=auto; the resumed loss curve must equal the uninterrupted one
   (dropout on, so the CUDA RNG state is part of it; deterministic algorithms on, so equal means
   bitwise; the check passes when the resumed curve differs from the reference no more than
   the second uninterrupted run does).

Every run is a real `lmprof run` child process, so peak memory is the run's own.

    python benchmarks/distributed_check.py --out $OUT            # both parts, about 3 minutes
    python benchmarks/distributed_check.py --out $OUT --only resume

Writes <out>/distributed_check.json and <out>/distributed_check.md and prints the tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lmprof.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]

GPT2_SMALL = [
    "model.n_layers=12",
    "model.d_model=768",
    "model.n_heads=12",
    "model.d_ff=3072",
    "data.vocab_size=50257",
]
COMMON = [
    "data.source=synthetic",
    "system.device=cuda",
    "logging.progress=false",
    "logging.eval_max_batches=1",
]

# Makes the child SIGKILL itself right after logging step T_KILL_AT and, with T_DETERMINISTIC,
# turns on deterministic algorithms so that "equal" can mean bitwise (resume part only: they
# can be slower, so the throughput runs leave them off).
WRAPPER = r"""
import os, signal, sys
import torch
if os.environ.get("T_DETERMINISTIC"):
    torch.use_deterministic_algorithms(True, warn_only=True)
from lmprof.train import loop
at = int(os.environ.get("T_KILL_AT", "0"))
_log_point = loop.Trainer._log_point
def log_point(self, *a, **k):
    _log_point(self, *a, **k)
    if at and self.state.step == at:
        os.kill(os.getpid(), signal.SIGKILL)
loop.Trainer._log_point = log_point
from lmprof.cli import main
sys.exit(main(["run", *sys.argv[1:]]))
"""


EXTRA: list[str] = []  # --override: appended to every run


def lmprof(
    out: Path, args: list[str], kill_at: int = 0, deterministic: bool = False, timeout: int = 600
) -> tuple[int, float]:
    args = [*args, *EXTRA]
    wrapper = out / "_wrapper.py"
    wrapper.write_text(WRAPPER)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONUNBUFFERED="1")
    if deterministic:
        env |= {"T_DETERMINISTIC": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    if kill_at:
        env["T_KILL_AT"] = str(kill_at)
    t0 = time.perf_counter()
    name = next(a.split("=", 1)[1] for a in args if a.startswith("run_name="))
    with open(out / f"{name}{'_killed' if kill_at else ''}.log", "a") as log:
        proc = subprocess.run(
            [sys.executable, str(wrapper), *args, f"output_dir={out}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
    return proc.returncode, time.perf_counter() - t0


def last_row(out: Path, name: str) -> dict[str, str]:
    path = out / "results.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["run_name"] == name]
    return rows[-1] if rows else {}


def curve(out: Path, name: str) -> list[tuple[int, str]]:
    path = out / "results" / "details" / f"{name}_metrics.csv"
    with open(path, newline="") as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f)]


def fmt_table(rows: list[dict], cols: list[str]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _float(row: dict, key: str) -> float | str:
    try:
        return float(row[key])
    except (KeyError, ValueError):
        return ""


# ---------------------------------------------------------------------------------------------


def throughput(out: Path, steps: int, compile_too: bool) -> list[dict]:
    out = out / "throughput"
    out.mkdir(parents=True, exist_ok=True)
    variants = [
        ("single_gpu", ["system.parallelism=ddp"]),
        ("fsdp2_1gpu", ["system.parallelism=fsdp"]),
    ]
    if compile_too:
        variants += [(n + "_compile", [*a, "system.compile=true"]) for n, a in variants]
    rows = []
    for name, extra in variants:
        args = [
            *COMMON,
            *GPT2_SMALL,
            *extra,
            "system.precision=bf16",
            "model.dropout=0",
            "data.sequence_length=1024",
            "training.batch_size=16",
            f"training.max_steps={steps}",
            "training.warmup_steps=5",
            "logging.logging_steps=10",
            "logging.timing_warmup_steps=10",
            f"run_name={name}",
        ]
        rc, wall = lmprof(out, args)
        r = last_row(out, name)
        rows.append(
            {
                "variant": name,
                "status": r.get("status", f"rc={rc}"),
                "tokens_per_s": _float(r, "steady_tokens_per_sec"),
                "step_ms_p50": _float(r, "step_time_p50_ms"),
                "peak_alloc_gib": _float(r, "peak_gpu_mem_gb"),
                "peak_reserved_gib": _float(r, "peak_gpu_reserved_gb"),
                "mfu": _float(r, "mfu"),
                "final_loss": _float(r, "final_train_loss"),
                "wall_s": round(wall, 1),
                "detail": r.get("status_detail", ""),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["tokens_per_s"]
    for r in rows:
        if isinstance(base, float) and isinstance(r["tokens_per_s"], float):
            r["vs_single"] = r["tokens_per_s"] / base
    return rows


def resume(out: Path) -> list[dict]:
    out = out / "resume"
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for par in ("ddp", "fsdp"):
        base = [
            *COMMON,
            "model.n_layers=4",
            "model.d_model=256",
            "model.n_heads=4",
            "model.d_ff=1024",
            "data.vocab_size=4096",
            "data.sequence_length=256",
            "training.batch_size=8",
            "system.precision=bf16",
            "model.dropout=0.1",
            f"system.parallelism={par}",
            "training.max_steps=30",
            "training.warmup_steps=5",
            "logging.logging_steps=1",
            "checkpoint.interval=10",
            "checkpoint.keep=2",
            "checkpoint.resume=auto",
        ]
        names = {k: f"{par}_{k}" for k in ("ref", "ref2", "cut")}
        for k in ("ref", "ref2"):
            lmprof(out, [*base, f"run_name={names[k]}"], deterministic=True)
        rc_kill, _ = lmprof(
            out, [*base, f"run_name={names['cut']}"], kill_at=15, deterministic=True
        )
        ckpts = sorted(p.name for p in (out / "checkpoints" / names["cut"]).glob("step_*"))
        lmprof(out, [*base, f"run_name={names['cut']}"], deterministic=True)
        ref, ref2, cut = (curve(out, names[k]) for k in ("ref", "ref2", "cut"))

        def diff(a, b):
            if [s for s, _ in a] != [s for s, _ in b]:
                return float("inf")
            return max(abs(float(x) - float(y)) for (_, x), (_, y) in zip(a, b, strict=True))

        noise, resumed = diff(ref, ref2), diff(ref, cut)
        row = last_row(out, names["cut"])
        results.append(
            {
                "parallelism": "none" if par == "ddp" else "fsdp2_1gpu",
                "killed_rc": rc_kill,
                "checkpoints_at_kill": " ".join(ckpts),
                "steps_logged": f"{len(cut)} (unique {len({s for s, _ in cut})})",
                "max_diff_resumed": resumed,
                "max_diff_rerun": noise,
                "bitwise_equal": [x for _, x in cut] == [x for _, x in ref],
                "final_loss": row.get("final_train_loss", ""),
                "status": row.get("status", ""),
                "pass": row.get("status") == "ok" and resumed <= noise and len(cut) == 30,
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/distributed_check")
    ap.add_argument("--only", choices=("throughput", "resume"))
    ap.add_argument("--steps", type=int, default=40, help="steps per throughput run")
    ap.add_argument("--compile", action="store_true", help="also the torch.compile variants")
    ap.add_argument(
        "--override",
        nargs="*",
        default=[],
        metavar="key=value",
        help="appended to every run (e.g. model.attention=flash)",
    )
    args = ap.parse_args()
    EXTRA[:] = args.override
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    md = []
    if args.only in (None, "throughput"):
        report["throughput"] = throughput(out, args.steps, args.compile)
        md += [
            "## GPT-2 small, bf16, batch 16 x 1024, one GPU",
            "",
            fmt_table(
                report["throughput"],
                [
                    "variant",
                    "status",
                    "tokens_per_s",
                    "vs_single",
                    "step_ms_p50",
                    "peak_alloc_gib",
                    "peak_reserved_gib",
                    "mfu",
                    "final_loss",
                ],
            ),
            "",
        ]
    if args.only in (None, "resume"):
        report["resume"] = resume(out)
        md += [
            "## checkpoint -> SIGKILL after step 15 -> resume (CUDA, bf16, dropout 0.1)",
            "",
            fmt_table(
                report["resume"],
                [
                    "parallelism",
                    "killed_rc",
                    "checkpoints_at_kill",
                    "steps_logged",
                    "max_diff_resumed",
                    "max_diff_rerun",
                    "bitwise_equal",
                    "final_loss",
                    "status",
                    "pass",
                ],
            ),
            "",
        ]
    atomic_write_text(out / "distributed_check.json", json.dumps(report, indent=1))
    atomic_write_text(out / "distributed_check.md", "\n".join(md))
    print("\n".join(md))
    ok = all(r["pass"] for r in report.get("resume", [])) and all(
        r["status"] == "ok" for r in report.get("throughput", [])
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
