import gzip
import json
import sys


def kernel_busy(trace):
    op = gzip.open if str(trace).endswith(".gz") else open
    with op(trace, "rt") as f:
        ev = json.load(f)["traceEvents"]
    steps = [e for e in ev if str(e.get("name", "")).startswith("ProfilerStep#") and "dur" in e]
    ks = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in ev
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e
    )
    lines = []
    for s in steps:
        a, b = s["ts"], s["ts"] + s["dur"]
        iv = [(max(x, a), min(y, b)) for x, y in ks if y > a and x < b]
        tot = sum(y - x for x, y in iv)
        cov = 0
        cur = None
        for x, y in iv:
            if cur is None or x > cur[1]:
                if cur:
                    cov += cur[1] - cur[0]
                cur = [x, y]
            else:
                cur[1] = max(cur[1], y)
        if cur:
            cov += cur[1] - cur[0]
        lines.append(
            f"{s['name']}: step {s['dur'] / 1e3:.2f} ms, kernels sum {tot / 1e3:.2f} ms, busy union {cov / 1e3:.2f} ms ({cov / max(s['dur'], 1):.0%}), launches {len(iv)}"
        )
    return "\n".join(lines)


print(kernel_busy(sys.argv[1]))
