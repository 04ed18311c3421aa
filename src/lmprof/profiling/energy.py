"""Energy, clocks and money per token.

A background thread samples the device during the steady window (the steps after
`logging.timing_warmup_steps`): never the step's hot path. Two readings of the same energy are
kept, so one checks the other:

- the device's own counter, read once at the window's start and end: NVML's
  `nvmlDeviceGetTotalEnergyConsumption` (mJ since the driver loaded) on a GPU, RAPL's
  `/sys/class/powercap/intel-rapl:*/energy_uj` (µJ, wrapping at `max_energy_range_uj`) on a CPU;
- the integral (trapezoids) of the power sampled every `energy.interval_ms` (GPU only: NVML's
  power reading is averaged over about a second and lags a change of load, so the integral
  reads a few percent under the counter; the H200 check wants them within 5%).

Alongside: SM and memory clocks, temperature, and the clock-event ("throttle") reasons seen,
decoded to names. The summary is per GPU, and summed over ranks under DDP (one all-reduce at the
end of the run, nothing during it).

Money: `cost.gpu_hour_usd` (a number, or `list` for the list price of the GPU in
LIST_PRICES_USD_PER_GPU_HOUR) gives USD per million tokens and per run.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from lmprof.results import ColumnGroup

from .power import RaplSource, nvml_source, rapl_zones

log = logging.getLogger("lmprof")

# NVML's clock-event reason bits (nvml.h, nvmlClocksEventReason*; formerly ClocksThrottleReason*).
CLOCK_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "app_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# Reasons that mean the clock was pulled down under load (idle and the user's application-clock
# setting are not throttling).
THROTTLE_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80

# Indicative on-demand prices, USD per GPU-hour, read by `cost.gpu_hour_usd=list`: round figures
# of the public per-GPU price pages of GPU clouds (2025), a starting point only. Prices change,
# differ by provider and contract (reserved and spot are far lower): give your own number.
LIST_PRICES_USD_PER_GPU_HOUR: dict[str, float] = {
    "H200": 3.50,
    "H100 SXM": 2.99,
    "H100 PCIe": 2.49,
    "A100": 1.79,
    "L40S": 1.25,
    "L4": 0.80,
    "A10G": 1.01,
}


def decode_reasons(mask: int) -> list[str]:
    """Names of the bits set in an NVML clock-event reason mask (unknown bits as hex)."""
    names = [name for bit, name in CLOCK_REASONS.items() if mask & bit]
    rest = mask & ~sum(CLOCK_REASONS)
    if rest:
        names.append(hex(rest))
    return names


# ---- the sampler -----------------------------------------------------------------------------


@dataclass
class Window:
    """What one window measured on one device."""

    seconds: float = 0.0
    counter_j: float | None = None
    sampled_j: float | None = None
    samples: list[tuple[float, dict]] = field(default_factory=list)

    def stat(self, key: str, how=max) -> float | None:
        values = [s[key] for _, s in self.samples if key in s]
        return how(values) if values else None


def integrate_power(samples: list[tuple[float, dict]]) -> float | None:
    """Trapezoid integral (J) of (time s, {"power_w": W}) samples; None under two samples."""
    pts = [(t, s["power_w"]) for t, s in samples if "power_w" in s]
    if len(pts) < 2:
        return None
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(pts, pts[1:], strict=False))


class EnergySampler:
    """Counter at start and stop, samples in a daemon thread in between.

    `clock` is injectable so the tests run without sleeping.
    """

    def __init__(self, source: Any, interval_s: float = 0.1, clock=time.perf_counter):
        self.source, self.interval_s, self.clock = source, interval_s, clock
        self.run_start_j = source.energy_j()
        self.run_start_t = clock()
        self.window: Window | None = None
        self.run_j: float | None = None
        self.run_s = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._e0: float | None = None

    def sample_once(self) -> None:
        if self.window is not None:
            self.window.samples.append((self.clock(), self.source.sample()))

    def start(self, thread: bool = True) -> None:
        self.window = Window()
        self._t0, self._e0 = self.clock(), self.source.energy_j()
        self.sample_once()
        if thread:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="lmprof-energy", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample_once()

    def stop(self) -> Window | None:
        if self.window is None:
            return None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.sample_once()
        w = self.window
        t1, e1 = self.clock(), self.source.energy_j()
        w.seconds = t1 - self._t0
        if e1 is not None and self._e0 is not None:
            w.counter_j = e1 - self._e0
        w.sampled_j = integrate_power(w.samples)
        if e1 is not None and self.run_start_j is not None:
            self.run_j = e1 - self.run_start_j
        self.run_s = t1 - self.run_start_t
        return w


# ---- the summary -----------------------------------------------------------------------------

ENERGY_COLUMNS = ColumnGroup(
    "energy",
    "power, energy, clocks and cost over the steady window and the run: energy_row",
    (
        "energy_source",
        "avg_power_w",
        "avg_power_w_sampled",
        "energy_steady_j",
        "energy_steady_j_sampled",
        "energy_run_j",
        "energy_steady_j_total",
        "energy_run_j_total",
        "joules_per_token",
        "tokens_per_kwh",
        "sm_clock_mhz_avg",
        "mem_clock_mhz_avg",
        "gpu_temp_c_max",
        "clock_throttled",
        "clock_reasons",
        "gpu_hour_usd",
        "usd_per_million_tokens",
        "usd_per_run",
    ),
)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def energy_columns(
    window: Window | None,
    kind: str,
    run_j: float | None,
    window_tokens: float,
    reduce=None,
) -> dict[str, Any]:
    """Per-device columns, and the rank sums through `reduce` (a function summing a list of
    floats over ranks, `all_reduce_sum` under DDP; identity on one process).

    joules_per_token is the steady energy of all ranks over the real tokens of all ranks in the
    window; tokens_per_kwh its reciprocal scaled (3.6e6 J per kWh).
    """
    row: dict[str, Any] = {"energy_source": kind if window is not None else ""}
    if window is None:
        return row
    reduce = reduce or (lambda xs: xs)
    e = window.counter_j if window.counter_j is not None else window.sampled_j
    row["energy_steady_j"] = window.counter_j
    row["energy_steady_j_sampled"] = window.sampled_j
    row["energy_run_j"] = run_j
    if window.seconds > 0:
        if window.counter_j is not None:
            row["avg_power_w"] = window.counter_j / window.seconds
        if window.sampled_j is not None:
            row["avg_power_w_sampled"] = window.sampled_j / window.seconds
    for key, col in (("sm_mhz", "sm_clock_mhz_avg"), ("mem_mhz", "mem_clock_mhz_avg")):
        row[col] = window.stat(key, _mean)
    row["gpu_temp_c_max"] = window.stat("temp_c", max)
    masks = [int(s["reasons"]) for _, s in window.samples if "reasons" in s]
    if masks:
        seen = 0
        for m in masks:
            seen |= m
        row["clock_throttled"] = bool(seen & THROTTLE_MASK)
        row["clock_reasons"] = "+".join(decode_reasons(seen & ~0x1)) or "none"
    # One collective: steady J, run J, tokens, ranks, ranks with a steady / a run reading.
    e_total, run_total, tok_total, n_ranks, n_e, n_run = reduce(
        [
            e or 0.0,
            run_j or 0.0,
            float(window_tokens),
            1.0,
            float(e is not None),
            float(run_j is not None),
        ]
    )
    if n_e == n_ranks and e is not None:
        row["energy_steady_j_total"] = e_total
        if tok_total > 0 and e_total > 0:
            row["joules_per_token"] = e_total / tok_total
            row["tokens_per_kwh"] = tok_total / e_total * 3.6e6
    if n_run == n_ranks and run_j is not None:
        row["energy_run_j_total"] = run_total
    return row


def resolve_gpu_hour_usd(setting: str, device_name: str) -> float | None:
    """`cost.gpu_hour_usd`: '' (none), a number, or 'list' (the table's price for the GPU)."""
    setting = (setting or "").strip()
    if not setting:
        return None
    if setting == "list":
        from lmprof.profiling.peaks import gpu_key

        key = gpu_key(device_name or "")
        return LIST_PRICES_USD_PER_GPU_HOUR.get(key) if key else None
    return float(setting)


def cost_columns(
    gpu_hour_usd: float | None, n_gpus: int, tokens_per_sec: float | None, run_seconds: float
) -> dict[str, Any]:
    """USD per million tokens at the steady rate (all GPUs' hours over all GPUs' tokens) and
    for the run's training wall time."""
    if not gpu_hour_usd:
        return {}
    usd_per_s = gpu_hour_usd * n_gpus / 3600.0
    row: dict[str, Any] = {"gpu_hour_usd": gpu_hour_usd, "usd_per_run": usd_per_s * run_seconds}
    if tokens_per_sec and tokens_per_sec > 0:
        row["usd_per_million_tokens"] = usd_per_s / tokens_per_sec * 1e6
    return row


# ---- the run's meter -------------------------------------------------------------------------

_said: set[str] = set()


def _say_once(why: str) -> None:
    if why not in _said:
        _said.add(why)
        log.info("energy columns left empty: %s", why)


class EnergyMeter:
    """What Instruments holds: made at setup (the run's counter starts), started and stopped at
    the steady window's boundaries."""

    def __init__(self, device: Any, interval_ms: float = 100.0, enabled: bool = True, **sources):
        self.sampler: EnergySampler | None = None
        self.kind = ""
        self.window: Window | None = None
        if not enabled:
            return
        source, why = None, ""
        if getattr(device, "type", device) == "cuda":
            source, why = nvml_source(device.index or 0, sources.get("nvml"))
        else:
            zones, why = rapl_zones(sources.get("rapl_root", "/sys/class/powercap"))
            source = RaplSource(zones) if zones else None
        if source is None:
            _say_once(why)
            return
        self.kind = source.kind
        self.sampler = EnergySampler(source, interval_ms / 1e3)

    def start(self) -> None:
        if self.sampler is not None and self.sampler.window is None:
            self.sampler.start()

    def stop(self) -> None:
        if self.sampler is not None and self.window is None and self.sampler.window is not None:
            self.window = self.sampler.stop()

    def columns(self, window_tokens: float, reduce=None) -> dict[str, Any]:
        self.stop()
        run_j = self.sampler.run_j if self.sampler else None
        return energy_columns(self.window, self.kind, run_j, window_tokens, reduce)
