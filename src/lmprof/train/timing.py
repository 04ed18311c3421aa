"""Step timing without host-device syncs in the step.

On CUDA each step is bracketed by events recorded on the stream; their elapsed times are read
only when `collect()` is called (on logging steps, which sync anyway), and the events go back to
a pool for the next steps, so after the first log point no step creates one. On the CPU a host
clock is exact, since the work is synchronous.
"""

from __future__ import annotations

import logging
import time

import torch

from lmprof.results import ColumnGroup
from lmprof.stats import Noise, noise

log = logging.getLogger("lmprof")


TIMING_COLUMNS = ColumnGroup(
    "timing",
    "the steady window's step times, throughput and noise: Trainer.steady_state with "
    "timing.steady_noise",
    (
        "steady_tokens_per_sec",
        "steady_tokens_per_sec_per_gpu",
        "processed_tokens_per_sec",
        "step_time_p50_ms",
        "step_time_p90_ms",
        "step_time_p10_ms",
        "step_time_cv",
        "step_time_p50_ci_low_ms",
        "step_time_p50_ci_high_ms",
        "noisy",
        "noisy_reason",
        "steady_steps",
        "compile_time_sec",
    ),
)


class EventPool:
    """Timing CUDA events handed out and taken back once read: as many as are pending at most
    (two a step between log points), none created in the steady state."""

    def __init__(self) -> None:
        self._free: list[torch.cuda.Event] = []

    def recorded(self) -> torch.cuda.Event:
        ev = self._free.pop() if self._free else torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def give_back(self, *events: torch.cuda.Event) -> None:
        self._free.extend(events)


class StepTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._events = EventPool()
        self._pending: list[tuple[object, object]] = []
        self._start: object = None
        self.step_ms: list[float] = []  # every completed step, in order

    def start(self) -> None:
        self._start = self._events.recorded() if self.cuda else time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            self._pending.append((self._start, self._events.recorded()))
        else:
            self.step_ms.append((time.perf_counter() - self._start) * 1e3)

    def collect(self) -> list[float]:
        """Resolve pending CUDA events (waits for the last one); returns all step times so far."""
        if self._pending:
            self._pending[-1][1].synchronize()
            self.step_ms.extend(s.elapsed_time(e) for s, e in self._pending)
            for pair in self._pending:
                self._events.give_back(*pair)
            self._pending.clear()
        return self.step_ms


def steady_noise(steady_ms: list[float], run_name: str = "", say: bool = True) -> Noise:
    """The steady window summarised once (quantiles, CV, the median's 95% interval, `noisy` and
    why; `Noise.row()` is its results columns), said on the console too. Pure host arithmetic
    on times already read: one sort, O(n log n) in the steps."""
    n = noise(steady_ms)
    if n.n and say:
        msg = (
            f"steady window: {n.n} steps, step time p10/p50/p90 {n.p10:.1f}/{n.p50:.1f}/"
            f"{n.p90:.1f} ms, CV {n.cv:.1%}, median 95% interval "
            f"[{n.ci_low:.1f}, {n.ci_high:.1f}] ms"
        )
        log.info("%s%s", f"{run_name}: " if run_name else "", msg)
    if n.noisy and say:
        log.warning("noisy timing%s: %s", f" ({run_name})" if run_name else "", n.reason)
    return n
