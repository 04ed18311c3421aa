"""Loss curves of each optimisation against the fp32 vanilla reference, at equal tokens.

    python benchmarks/curves_check.py benchmarks/results/2026-11-29_h200_curves

The run-to-run noise is the reference against a second seed of itself; an optimisation passes
when its largest gap to the reference (logged training loss, and evaluation loss) is no larger.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

REF, NOISE = "curve_fp32_vanilla_ref", "curve_fp32_vanilla_seed2"


def _curve(root: Path, run: str, kind: str, column: str) -> dict[int, float]:
    path = root / "results" / "details" / f"{run}_{kind}.csv"
    with open(path) as f:
        return {int(r["step"]): float(r[column]) for r in csv.DictReader(f)}


def main(folder: str) -> int:
    root = Path(folder)
    with open(root / "results.csv") as f:
        # The folder may hold other runs (an end-to-end check made in the same call).
        runs = [
            r["run_name"]
            for r in csv.DictReader(f)
            if r["status"] == "ok" and r.get("tag") == "curves"
        ]
    ref_train = _curve(root, REF, "metrics", "loss")
    ref_eval = _curve(root, REF, "eval", "eval_loss")

    def gaps(run: str) -> tuple[float, float, float]:
        tr, ev = _curve(root, run, "metrics", "loss"), _curve(root, run, "eval", "eval_loss")
        g_train = max(abs(tr[s] - ref_train[s]) for s in ref_train if s in tr)
        g_eval = max(abs(ev[s] - ref_eval[s]) for s in ref_eval if s in ev)
        return g_train, g_eval, ev[max(ev)]

    noise_train, noise_eval, _ = gaps(NOISE)
    print("| run | max gap, train loss | max gap, eval loss | final eval loss | within noise |")
    print("| --- | --- | --- | --- | --- |")
    ok = True
    for run in runs:
        if run == REF:
            print(f"| {run} | 0 | 0 | {ref_eval[max(ref_eval)]:.4f} | reference |")
            continue
        t, e, final = gaps(run)
        within = run == NOISE or (t <= noise_train and e <= noise_eval)
        ok &= within
        print(
            f"| {run} | {t:.4f} | {e:.4f} | {final:.4f} | {'noise' if run == NOISE else within} |"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
