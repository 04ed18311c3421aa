"""Kernel table of a Chrome/Perfetto trace written by `profile.enabled=true`: self device time
per kernel and the share per category (attention, matmul, optimizer, communication, ...).

    python benchmarks/trace_kernels.py results/traces/<run>/trace.json[.gz] > kernels.md
"""

from __future__ import annotations

import gzip
import json
import sys
from collections import defaultdict

from lmprof.train.instruments import categorize


def main(path: str) -> int:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        events = json.load(f)["traceEvents"]
    per_kernel: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "kernel" and "dur" in e:
            per_kernel[e["name"]].append(e["dur"] / 1e3)
    rows = sorted(((k, len(v), sum(v)) for k, v in per_kernel.items()), key=lambda r: -r[2])
    total = sum(r[2] for r in rows) or 1.0
    shares: dict[str, float] = defaultdict(float)
    for name, _, ms in rows:
        shares[categorize(name)] += ms / total
    print(
        f"Kernels of `{path}`: {total:.1f} ms of device time in {sum(r[1] for r in rows)} launches.\n"
    )
    print("| kernel | launches | device ms | share | category |\n| --- | --- | --- | --- | --- |")
    for k, n, ms in rows[:25]:
        print(f"| `{k[:90]}` | {n} | {ms:.3f} | {ms / total:.1%} | {categorize(k)} |")
    print("\n| category | share of kernel time |\n| --- | --- |")
    for c, s in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"| {c} | {s:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
