"""The readers of a device's energy and power: NVML on a GPU, RAPL on a CPU.

A source has `kind`, `energy_j()` (the device's counter, joules since the source was made or the
driver loaded; None where the device has none) and `sample()` (power, clocks, temperature and
clock-event reasons now, each left out where the device does not report it). energy.py's sampler
thread reads them during the steady window.
"""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path
from typing import Any


class NvmlSource:
    """One GPU through NVML (`nvidia-ml-py`'s module `pynvml`, or any object with its API)."""

    kind = "nvml"

    def __init__(self, nvml: Any, handle: Any):
        self.nvml, self.handle = nvml, handle

    def energy_j(self) -> float | None:
        try:
            return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3
        except Exception:  # noqa: BLE001 -- pre-Volta GPUs have no counter
            return None

    def sample(self) -> dict[str, float]:
        n, h, out = self.nvml, self.handle, {}
        reads = (
            ("power_w", lambda: _power_w(n, h)),
            ("sm_mhz", lambda: n.nvmlDeviceGetClockInfo(h, getattr(n, "NVML_CLOCK_SM", 1))),
            ("mem_mhz", lambda: n.nvmlDeviceGetClockInfo(h, getattr(n, "NVML_CLOCK_MEM", 2))),
            (
                "temp_c",
                lambda: n.nvmlDeviceGetTemperature(h, getattr(n, "NVML_TEMPERATURE_GPU", 0)),
            ),
            ("reasons", lambda: _reasons(n, h)),
        )
        for key, read in reads:
            # A field this GPU or driver does not report is left out.
            with contextlib.suppress(Exception):
                out[key] = read()
        return out


# NVML's field for the instantaneous board power. nvmlDeviceGetPowerUsage is a one-second
# average on Ampere and later: integrated, it lags every change of load and read 5-8% below the
# energy counter over a steady window on the H200 (benchmarks/results/2026-12-03_h200_energy).
NVML_FI_DEV_POWER_INSTANT = 186


def _power_w(n: Any, h: Any) -> float:
    """The board's power in watts: the instantaneous field where the driver has it, else the
    averaged reading."""
    with contextlib.suppress(Exception):
        field = getattr(n, "NVML_FI_DEV_POWER_INSTANT", NVML_FI_DEV_POWER_INSTANT)
        (v,) = n.nvmlDeviceGetFieldValues(h, [field])
        if v.nvmlReturn == 0 and v.value.uiVal > 0:
            return v.value.uiVal / 1e3
    return n.nvmlDeviceGetPowerUsage(h) / 1e3


def _reasons(n: Any, h: Any) -> int:
    fn = (
        getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None)
        or n.nvmlDeviceGetCurrentClocksThrottleReasons
    )
    return int(fn(h))


class RaplSource:
    """The CPU packages' energy through RAPL (powercap sysfs), summed over packages; only the
    counter (no power samples: its integral would be the counter itself)."""

    kind = "rapl"

    def __init__(self, zones: list[Path]):
        self.zones = zones
        self.ranges = [_read_int(z / "max_energy_range_uj") for z in zones]
        self.last = [_read_int(z / "energy_uj") for z in zones]
        self.total_uj = 0.0

    def energy_j(self) -> float | None:
        """Energy since the source was made, wraparounds unwound (call at least once per wrap
        period, minutes to hours, which the sampler thread does)."""
        for i, z in enumerate(self.zones):
            now = _read_int(z / "energy_uj")
            delta = now - self.last[i]
            if delta < 0:
                delta += self.ranges[i] + 1
            self.total_uj += delta
            self.last[i] = now
        return self.total_uj / 1e6

    def sample(self) -> dict[str, float]:
        self.energy_j()  # keeps the wraparound bookkeeping current
        return {}


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def rapl_zones(root: str | Path = "/sys/class/powercap") -> tuple[list[Path], str]:
    """The readable package-level RAPL zones (intel-rapl:N, not its sub-zones), or why none."""
    paths = sorted(Path(p) for p in glob.glob(str(Path(root) / "intel-rapl:*")))
    zones = [p for p in paths if p.name.count(":") == 1]
    if not zones:
        return [], f"no RAPL zones under {root}"
    readable = []
    for z in zones:
        try:
            _read_int(z / "energy_uj")
            _read_int(z / "max_energy_range_uj")
            readable.append(z)
        except (OSError, ValueError):
            pass
    if not readable:
        return [], f"RAPL under {root} is not readable (root only on most kernels since 2020)"
    return readable, ""


def nvml_source(device_index: int, nvml: Any = None) -> tuple[NvmlSource | None, str]:
    """An NVML source for the CUDA device, or (None, why)."""
    if nvml is None:
        try:
            import pynvml as nvml  # type: ignore[import-not-found, no-redef]
        except ImportError:
            return None, "nvidia-ml-py is not installed (pip install lmprof[energy])"
    try:
        nvml.nvmlInit()
        handle = None
        try:
            import torch

            bus = torch.cuda.get_device_properties(device_index).pci_bus_id  # type: ignore[attr-defined]
            handle = nvml.nvmlDeviceGetHandleByPciBusId(bus)
        except Exception:  # noqa: BLE001 -- older torch: map through CUDA_VISIBLE_DEVICES
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            ids = [v for v in visible.split(",") if v.strip()]
            index = int(ids[device_index]) if ids and ids[device_index].isdigit() else device_index
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        return NvmlSource(nvml, handle), ""
    except Exception as exc:  # noqa: BLE001
        return None, f"NVML unavailable: {exc}"
