"""Call-1 diagnostics for issue 24/29 (ignored scratch driver, not part of the project)."""
import cProfile, gzip, json, os, pstats, subprocess, sys, tempfile, time, io
from pathlib import Path
ROOT = Path.cwd(); sys.path.insert(0, str(ROOT))
from benchmarks import nanogpt_recipe as R

def recipe_overrides(out, scratch, halves, extra):
    return ["run", *R.lmprof_argv(out, scratch, halves, 0, False)[4:], *extra]

def kernel_busy(trace):
    op = gzip.open if str(trace).endswith(".gz") else open
    with op(trace, "rt") as f: ev = json.load(f)["traceEvents"]
    steps = [e for e in ev if str(e.get("name","")).startswith("ProfilerStep#") and "dur" in e]
    ks = sorted((e["ts"], e["ts"]+e["dur"]) for e in ev if e.get("cat") in ("kernel","gpu_memcpy","gpu_memset") and "dur" in e)
    lines = []
    for s in steps:
        a, b = s["ts"], s["ts"]+s["dur"]
        iv = [(max(x,a), min(y,b)) for x,y in ks if y > a and x < b]
        tot = sum(y-x for x,y in iv); cov=0; cur=None
        for x,y in iv:
            if cur is None or x > cur[1]:
                if cur: cov += cur[1]-cur[0]
                cur=[x,y]
            else: cur[1]=max(cur[1],y)
        if cur: cov += cur[1]-cur[0]
        lines.append(f"{s['name']}: step {s['dur']/1e3:.2f} ms, kernels sum {tot/1e3:.2f} ms, busy union {cov/1e3:.2f} ms ({cov/max(s['dur'],1):.0%}), launches {len(iv)}")
    return "\n".join(lines)

def main():
    out = Path(sys.argv[1]); mode = sys.argv[2]; out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp())
    halves = R.prepare(scratch, ROOT / "ext/nanoGPT", ROOT / "ext/tinyshakespeare/input.txt")
    extra = sys.argv[3:]
    argv = recipe_overrides(out / mode, scratch, halves, [f"logging.run_name={mode}", *extra])
    from lmprof.cli import main as lm
    t0 = time.perf_counter()
    if mode.startswith("prof"):
        pr = cProfile.Profile(); pr.enable(); rc = lm(argv); pr.disable()
        s = io.StringIO(); ps = pstats.Stats(pr, stream=s); ps.sort_stats("cumulative").print_stats(60)
        ps.sort_stats("tottime").print_stats(30)
        (out / f"{mode}_pstats.txt").write_text(s.getvalue())
    else:
        rc = lm(argv)
    print(f"RC {rc} in-process wall {time.perf_counter()-t0:.1f} s")
    from torch._dynamo.utils import compile_times, counters
    print(compile_times(repr="str", aggregate=True))
    print({k: dict(v) for k, v in counters.items() if k in ("stats", "graph_break", "recompiles", "frames")})
    for t in (out / mode).rglob("trace.json*"):
        print(t); print(kernel_busy(t))
        subprocess.run([sys.executable, "benchmarks/trace_kernels.py", str(t)], stdout=open(out / f"{mode}_kernels.md", "w"))

if __name__ == "__main__":
    main()
