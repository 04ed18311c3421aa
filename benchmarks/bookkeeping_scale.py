"""The host-side bookkeeping of runs and sweeps at scale, on the CPU (issue 24).

    python benchmarks/bookkeeping_scale.py            # the issue's sizes, a table at the end
    python benchmarks/bookkeeping_scale.py --quick    # a tenth of them, a self-test

Each case builds its input first (not timed), then times the bookkeeping itself, best of
`--repeat` (time.perf_counter), at size n and 10n: a ratio well above 10 is growth faster than
the work. The cases are also what tests/test_bookkeeping_scale.py compares at small n.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

# Each case: (name, what n counts, the issue's n, setup(n, folder) -> the timed call).
Setup = Callable[[int, Path], Callable[[], object]]


def _step_times(n: int) -> list[float]:
    rng = random.Random(n)
    return [100.0 + rng.gauss(0.0, 2.0) for _ in range(n)]


def summary(n: int, folder: Path) -> Callable[[], object]:
    """The steady window's statistics and interval: timing.steady_noise over n step times."""
    from lmprof.train.timing import steady_noise

    times = _step_times(n)
    return lambda: steady_noise(times, say=False)


def metrics_csv(n: int, folder: Path) -> Callable[[], object]:
    """A run's metrics CSV, one flushed line per logged step (train/outputs._CsvLog)."""
    from lmprof.columns import METRICS_COLUMNS
    from lmprof.train.outputs import _CsvLog

    points = [
        {"step": s, "loss": 2.0 + 1 / s, "perplexity": math.exp(2.0), "accuracy": 0.5, "lr": 1e-3}
        for s in range(1, n + 1)
    ]

    def write() -> None:
        log = _CsvLog(folder / f"m{n}_metrics.csv", METRICS_COLUMNS, fresh=True)
        for p in points:
            log.append(p)

    return write


def _table(n: int, folder: Path) -> Path:
    """A results.csv of n rows (written directly: n appends would rewrite it n times)."""
    from lmprof.results import append_row

    path = folder / f"results_{n}.csv"
    path.unlink(missing_ok=True)
    append_row(path, _result_row(0))
    header = next(csv.reader(path.open()))
    with path.open("a", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        for i in range(1, n):
            row = _result_row(i)
            w.writerow([row.get(c, "") for c in header])
    return path


def _result_row(i: int) -> dict[str, str]:
    return {
        "run_name": f"seq_len_{128 << (i % 4)}_rep{i // 4}",
        "tag": f"seq_len{i // 400}",
        "status": "ok" if i % 7 else "oom",
        "sequence_length": str(128 << (i % 4)),
        "batch_size": "16",
        "precision": "bf16",
        "attention": "sdpa",
        "steady_tokens_per_sec": str(1e5 + i),
        "throughput": str(9e4 + i),
        "peak_gpu_mem_gb": "4.5",
        "eval_loss": "3.1",
        "config_hash": f"h{i}",
        "output_dir": ".",
    }


def results_append(n: int, folder: Path) -> Callable[[], object]:
    """results.append_row onto a table of n rows (a new column each time: the table widens)."""
    from lmprof.results import append_row

    path = _table(n, folder)
    count = iter(range(10**9))
    return lambda: append_row(path, {"run_name": "new", f"extra_{next(count)}": 1})


def analysis_load(n: int, folder: Path) -> Callable[[], object]:
    """analysis.load.load_table over n rows (replicates merged, superseded runs found)."""
    from lmprof.analysis.load import load_table

    path = _table(n, folder)
    return lambda: load_table(path)


def analysis_curve(n: int, folder: Path) -> Callable[[], object]:
    """analysis.load.read_curve of an n-step metrics file."""
    from lmprof.analysis.load import read_curve

    with open(folder / f"c{n}_metrics.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["step", "loss", "perplexity", "accuracy", "lr", "tokens_seen"])
        w.writerows([s, 2 + 1 / s, 7.4, 0.5, 1e-3, s * 4096] for s in range(1, n + 1))
    return lambda: read_curve(folder, f"c{n}")


def sweep_resume(n: int, folder: Path) -> Callable[[], object]:
    """sweep.resume: the history of a results.csv of n rows read once, then n decisions."""
    from lmprof.sweep.resume import decide, load_history

    _table(n, folder)
    (folder / "results.csv").unlink(missing_ok=True)
    (folder / f"results_{n}.csv").rename(folder / "results.csv")
    cfg = SimpleNamespace(logging=SimpleNamespace(output_dir=str(folder)))
    plans = [SimpleNamespace(cfg=cfg, config_hash=f"h{i}", unrunnable=None) for i in range(n)]

    def plan_all() -> list:
        history = load_history(plans)
        return [decide(p, history.get(p.config_hash, [])) for p in plans]

    return plan_all


def _trace(n: int) -> dict:
    """A profiler trace of n kernels, each with its operator (shapes recorded) and launch."""
    events = []
    for i in range(n):
        ts = i * 10
        if i % 100 == 0:
            events.append({"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{i}"})
        mm = {"Input Dims": [[64, 128], [128, 64]], "Input type": ["float", "float"]}
        events.append(
            {
                "ph": "X",
                "cat": "cpu_op",
                "name": "aten::mm" if i % 2 else "aten::add_",
                "ts": ts,
                "dur": 6,
                "args": {"External id": i, **mm},
            }
        )
        events.append(
            {
                "ph": "X",
                "cat": "cuda_runtime",
                "name": "cudaLaunchKernel",
                "args": {"correlation": i, "External id": i},
            }
        )
        events.append(
            {
                "ph": "X",
                "cat": "kernel",
                "name": "sm90_xmma_gemm" if i % 2 else "vectorized_elementwise_kernel",
                "ts": ts + 1,
                "dur": 4,
                "args": {"correlation": i, "device": 0},
            }
        )
    return {"traceEvents": events}


def roofline(n: int, folder: Path) -> Callable[[], object]:
    """profiling.roofline.analyze over a trace of n kernels."""
    from lmprof.profiling.roofline import analyze

    trace = _trace(n)
    return lambda: analyze(trace)


def checkpoint_trim(n: int, folder: Path) -> Callable[[], object]:
    """train.checkpoint.continue_csv: a resumed run's metrics CSV of n rows cut back."""
    from lmprof.train.checkpoint import continue_csv

    path = folder / f"t{n}_metrics.csv"
    lines = ["step,loss,lr"] + [f"{s},{2 + 1 / s},0.001" for s in range(1, n + 1)]
    text = "\n".join(lines) + "\n"
    path.write_text(text)

    def trim() -> None:
        path.write_text(text)  # the cut rewrote it: the same input each repeat
        continue_csv(path, n - 1)

    return trim


CASES: list[tuple[str, str, int, Setup]] = [
    ("step-time summary", "step times", 1_000_000, summary),
    ("metrics CSV", "logged steps", 100_000, metrics_csv),
    ("results.csv append", "rows", 5_000, results_append),
    ("analysis load_table", "rows", 5_000, analysis_load),
    ("analysis read_curve", "steps", 1_000_000, analysis_curve),
    ("sweep resume", "runs", 5_000, sweep_resume),
    ("roofline", "kernels", 200_000, roofline),
    ("checkpoint trim", "rows", 100_000, checkpoint_trim),
]


def best_of(fn: Callable[[], object], repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of the issue's sizes")
    ap.add_argument("--repeat", type=int, default=3, help="timed repeats; the best is kept")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        print("bookkeeping_scale: --repeat must be at least 1", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="lmprof-bookkeeping-") as tmp:
        for name, unit, n_issue, setup in CASES:
            n = max(n_issue // 100, 10) if args.quick else n_issue // 10
            t_n = best_of(setup(n, Path(tmp)), args.repeat)
            t_10n = best_of(setup(10 * n, Path(tmp)), args.repeat)
            rows.append((name, f"{10 * n:,} {unit}", t_n, t_10n))
            print(f"{name}: n={n:,} {t_n:.4f} s, 10n={10 * n:,} {t_10n:.4f} s", flush=True)
    print("\n| case | at 10n | n: s | 10n: s | 10n / n |\n| --- | --- | --- | --- | --- |")
    for name, size, t_n, t_10n in rows:
        print(f"| {name} | {size} | {t_n:.4f} | {t_10n:.4f} | {t_10n / t_n:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
