"""The run config's `profile`, `energy` and `cost` sections, and the price's rule. Torch-free,
imported by `lmprof.config` before anything of the instruments."""

from __future__ import annotations

from dataclasses import dataclass

from lmprof.config_fields import NON_NEGATIVE, POSITIVE, option
from lmprof.errors import ConfigError

PEAKS = ("table", "measured")


@dataclass
class ProfileConfig:
    enabled: bool = option(False, "a torch.profiler trace of a few steps")
    wait: int = option(5, "profiler schedule: steps skipped first", **NON_NEGATIVE)
    warmup: int = option(2, "profiler schedule: steps traced but discarded", **NON_NEGATIVE)
    active: int = option(3, "profiler schedule: steps recorded", **POSITIVE)
    record_shapes: bool = option(False, "record operator shapes (the roofline table needs them)")
    profile_memory: bool = option(False, "record allocations in the trace")
    with_stack: bool = option(False, "record Python stacks in the trace")
    breakdown: bool = option(False, "per-phase CUDA-event timing; costs syncs, so off by default")
    nvtx: bool = option(False, "NVTX ranges around each step phase, for an Nsight Systems capture")
    memory_snapshot: bool = option(False, "write a torch.cuda.memory._record_memory_history pickle")
    peak: str = option("table", "where MFU's peak FLOP/s comes from", choices=PEAKS)


@dataclass
class EnergyConfig:
    sample: bool = option(True, "sample NVML (GPU) / RAPL (CPU) power over the steady window")
    interval_ms: float = option(
        100.0, "milliseconds between power and clock samples", above=0, at_most=60_000
    )


@dataclass
class CostConfig:
    gpu_hour_usd: str = option(
        "", "USD per GPU-hour: a number, 'list' (profiling/energy.py), or empty for none"
    )


def validate_cost(cost: CostConfig) -> None:
    """The price is a positive number, 'list' (the table in energy.py), or empty."""
    usd = cost.gpu_hour_usd.strip()
    if usd and usd != "list":
        try:
            ok = float(usd) > 0
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(
                "cost.gpu_hour_usd", usd, "a positive USD per GPU-hour, 'list', or empty"
            )
