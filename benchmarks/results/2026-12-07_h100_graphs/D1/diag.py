"""The D1 call's diagnostics (issue 24): one 300-step run of nanoGPT's shakespeare-char recipe
through lmprof, in process, its compile times and recompilations printed, under cProfile for a
mode starting with "prof", and for a traced run the GPU's busy share of each profiled step.

    python benchmarks/results/2026-12-07_h100_graphs/D1/diag.py OUT MODE [KEY=VALUE ...]
"""

import cProfile
import gzip
import io
import json
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))


def kernel_busy(trace: Path) -> str:
    """Per ProfilerStep: its wall time, the kernels' summed time and their union."""
    opener = gzip.open if str(trace).endswith(".gz") else open
    with opener(trace, "rt") as f:
        events = json.load(f)["traceEvents"]
    steps = [e for e in events if str(e.get("name", "")).startswith("ProfilerStep#")]
    device = ("kernel", "gpu_memcpy", "gpu_memset")
    spans = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") in device and "dur" in e
    )
    lines = []
    for s in (s for s in steps if "dur" in s):
        a, b = s["ts"], s["ts"] + s["dur"]
        inside = [(max(x, a), min(y, b)) for x, y in spans if y > a and x < b]
        total = sum(y - x for x, y in inside)
        covered, cur = 0.0, None
        for x, y in inside:  # sorted by start: one pass merges the overlaps
            if cur is None or x > cur[1]:
                covered += cur[1] - cur[0] if cur else 0.0
                cur = [x, y]
            else:
                cur[1] = max(cur[1], y)
        covered += cur[1] - cur[0] if cur else 0.0
        lines.append(
            f"{s['name']}: step {s['dur'] / 1e3:.2f} ms, kernels sum {total / 1e3:.2f} ms, "
            f"busy union {covered / 1e3:.2f} ms ({covered / max(s['dur'], 1):.0%}), "
            f"launches {len(inside)}"
        )
    return "\n".join(lines)


def main() -> None:
    from benchmarks import nanogpt_recipe as recipe
    from lmprof.cli import main as lmprof_main

    out, mode = Path(sys.argv[1]), sys.argv[2]
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp())
    text = ROOT / "ext/tinyshakespeare/input.txt"
    halves = recipe.prepare(scratch, ROOT / "ext/nanoGPT", text)
    base = recipe.lmprof_argv(out / mode, scratch, halves, 0, False)[4:]
    argv = ["run", *base, f"logging.run_name={mode}", *sys.argv[3:]]
    t0 = time.perf_counter()
    if mode.startswith("prof"):
        profile = cProfile.Profile()
        rc = profile.runcall(lmprof_main, argv)
        report = io.StringIO()
        stats = pstats.Stats(profile, stream=report)
        stats.sort_stats("cumulative").print_stats(60)
        stats.sort_stats("tottime").print_stats(30)
        (out / f"{mode}_pstats.txt").write_text(report.getvalue())
    else:
        rc = lmprof_main(argv)
    print(f"RC {rc} in-process wall {time.perf_counter() - t0:.1f} s")
    from torch._dynamo.utils import compile_times, counters

    print(compile_times(repr="str", aggregate=True))
    keys = ("stats", "graph_break", "recompiles", "frames")
    print({k: dict(v) for k, v in counters.items() if k in keys})
    for trace in (out / mode).rglob("trace.json*"):
        print(trace)
        print(kernel_busy(trace))
        with open(out / f"{mode}_kernels.md", "w") as table:
            cmd = [sys.executable, "benchmarks/trace_kernels.py", str(trace)]
            subprocess.run(cmd, stdout=table, check=False)


if __name__ == "__main__":
    main()
