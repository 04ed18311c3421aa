"""The memory model against measured peaks: predicted vs `torch.cuda.max_memory_allocated`.

    python benchmarks/memory_model_check.py benchmarks/results/2026-11-29_h200_sweep

Reads <dir>/results.csv and each run's resolved config (results/details/<run>_config.yaml),
predicts the peak with the current model (no GPU needed) and prints a Markdown table; the
predicted column recorded at run time is shown beside it. Exit status 1 when fewer than 9 runs
in 10 land within 10%.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from lmprof.config import from_dict


def main(folder: str) -> int:
    root = Path(folder)
    with open(root / "results.csv") as f:
        rows = [
            r for r in csv.DictReader(f) if r.get("status") == "ok" and r.get("peak_gpu_mem_gb")
        ]
    from lmprof.profiling.memory_model import estimate_memory
    from lmprof.yamlio import load_mapping

    print("| run | measured GiB | predicted GiB (now) | error | predicted at run time |")
    print("| --- | --- | --- | --- | --- |")
    within = 0
    for r in rows:
        cfg_path = root / "results" / "details" / f"{r['run_name']}_config.yaml"
        cfg = from_dict(load_mapping(cfg_path))
        vocab = int(r["vocab_size"]) if r.get("vocab_size") else 50258
        # results.csv records the padded vocabulary; the model pads again to the same size.
        pred = estimate_memory(cfg, vocab).predicted_peak_bytes / 1024**3
        meas = float(r["peak_gpu_mem_gb"])
        err = pred / meas - 1
        within += abs(err) <= 0.10
        print(
            f"| {r['run_name']} | {meas:.2f} | {pred:.2f} | {err:+.1%} | {r.get('predicted_peak_mem_gb', '')[:6]} |"
        )
    print(f"\n{within} of {len(rows)} runs within 10%")
    return 0 if rows and within >= 0.9 * len(rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
