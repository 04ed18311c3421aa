"""Step timing without host-device syncs in the step.

On CUDA each step is bracketed by events recorded on the stream; their elapsed times are read
only when `collect()` is called (on logging steps, which sync anyway). On the CPU a host clock is
exact, since the work is synchronous.
"""

from __future__ import annotations

import statistics
import time

import torch


class StepTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._pending: list[tuple[object, object]] = []
        self._start: object = None
        self.step_ms: list[float] = []  # every completed step, in order

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((self._start, end))
        else:
            self.step_ms.append((time.perf_counter() - self._start) * 1e3)

    def collect(self) -> list[float]:
        """Resolve pending CUDA events (waits for the last one); returns all step times so far."""
        if self._pending:
            self._pending[-1][1].synchronize()
            self.step_ms.extend(s.elapsed_time(e) for s, e in self._pending)
            self._pending.clear()
        return self.step_ms


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
        if q < 100
        else max(values)
    )
