"""Each kernel group's gap to its limit, for an existing trace (profile.enabled=true writes
results/traces/<run>/trace.json; record its shapes with profile.record_shapes=true).

    python benchmarks/roofline.py results/traces/<run>/trace.json --gpu H200 > roofline.md
    python benchmarks/roofline.py TRACE --peak-tflops 790 --bw-gbs 4000 --csv out.csv

Limits: --peak-tflops / --bw-gbs (e.g. measured ones), else the datasheet tables for --gpu
(peaks.py's bf16 rate and roofline.HBM_BYTES_PER_S).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys

from lmprof.io import atomic_write_text
from lmprof.ops.catalog import AdamW
from lmprof.profiling.peaks import gpu_key, peak_flops
from lmprof.profiling.roofline import HBM_BYTES_PER_S, Limits, analyze, load_trace
from lmprof.profiling.roofline_report import markdown


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--gpu", default="H200", help="device name for the datasheet limits")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--bw-gbs", type=float, default=None)
    ap.add_argument("--csv", default=None)
    ap.add_argument(
        "--params", type=int, default=None, help="parameters AdamW updates (optimizer bytes)"
    )
    a = ap.parse_args(argv)
    key = gpu_key(a.gpu)
    lim = Limits(
        a.peak_tflops * 1e12 if a.peak_tflops else peak_flops(a.gpu, a.precision),
        a.bw_gbs * 1e9 if a.bw_gbs else HBM_BYTES_PER_S.get(key or ""),
        "given" if a.peak_tflops else f"datasheet {key}",
        "given" if a.bw_gbs else f"datasheet {key} HBM",
    )
    opt = AdamW.bytes_per_step(a.params, clipping=True) if a.params else None
    rl = analyze(load_trace(a.trace), lim, opt)
    print(markdown(rl, a.trace))
    if a.csv:
        rows = rl.table()
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["group"])
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(a.csv, buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
