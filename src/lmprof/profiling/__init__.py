"""Profiling instruments: FLOPs and MFU, GPU peak FLOP/s, the analytic memory model.

`flops_per_token` and `mfu` (flops.py), `peak_flops`, `matmul_precision` and
`measure_peak_flops` (peaks.py), `estimate_memory` (memory_model.py) and `format_estimate` (memory_report.py).
Names resolve lazily, so `import lmprof.profiling` stays cheap (none of these imports torch at
import time; `measure_peak_flops` imports it when called).
"""

from __future__ import annotations

from lmprof.lazy import lazy_getattr

_EXPORTS = {
    "FlopCount": "flops",
    "flops_per_token": "flops",
    "mfu": "flops",
    "peak_flops": "peaks",
    "matmul_precision": "peaks",
    "measure_peak_flops": "peaks",
    "MemoryEstimate": "memory_model",
    "estimate_memory": "memory_model",
    "format_estimate": "memory_report",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
