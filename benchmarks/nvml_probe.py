"""What one NVML power read costs and which reading agrees with the energy counter.

While bf16 8192^3 matmuls keep the GPU busy for --seconds, a thread reads the averaged power
(nvmlDeviceGetPowerUsage) and the instantaneous field (NVML_FI_DEV_POWER_INSTANT) every
--interval-ms; each read is timed. The two integrals are compared with the counter
(nvmlDeviceGetTotalEnergyConsumption) over the same window. Prints one table.

    python benchmarks/nvml_probe.py [--seconds 8] [--interval-ms 20]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import pynvml
import torch

from lmprof.profiling.energy import integrate_power
from lmprof.profiling.power import NVML_FI_DEV_POWER_INSTANT


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--interval-ms", type=float, default=20.0)
    args = ap.parse_args()
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())

    def avg_w() -> float:
        return pynvml.nvmlDeviceGetPowerUsage(h) / 1e3

    def inst_w() -> float:
        (v,) = pynvml.nvmlDeviceGetFieldValues(h, [NVML_FI_DEV_POWER_INSTANT])
        return v.value.uiVal / 1e3 if v.nvmlReturn == 0 else float("nan")

    samples: dict[str, list[tuple[float, float]]] = {"average": [], "instant": []}
    cost: dict[str, list[float]] = {"average": [], "instant": []}
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            for name, read in (("average", avg_w), ("instant", inst_w)):
                t0 = time.perf_counter()
                w = read()
                cost[name].append(time.perf_counter() - t0)
                samples[name].append((t0, w))
            time.sleep(args.interval_ms / 1e3)

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    time.sleep(0.5)
    e0, t0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3, time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < args.seconds:
        for _ in range(10):
            a @ a
        n += 10
        torch.cuda.synchronize()
    e1, t1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3, time.perf_counter()
    stop.set()
    th.join()
    counter = e1 - e0
    print(f"{n} matmuls, {2 * 8192**3 * n / (t1 - t0) / 1e12:.0f} TFLOP/s, window {t1 - t0:.2f} s")
    print("| reading | samples | read median us | read p99 us | integral J | counter / integral |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in ("average", "instant"):
        pts = [(t, {"power_w": w}) for t, w in samples[name] if t0 <= t <= t1]
        # Scaled to the counter's span (the first and last samples fall just inside it).
        integral = integrate_power(pts) * (t1 - t0) / (pts[-1][0] - pts[0][0])
        c = sorted(cost[name])
        p99 = c[int(0.99 * (len(c) - 1))]
        print(
            f"| {name} | {len(pts)} | {statistics.median(c) * 1e6:.0f} | {p99 * 1e6:.0f} "
            f"| {integral:.0f} | {counter / integral:.3f} |"
        )
    print(f"counter: {counter:.0f} J, {counter / (t1 - t0):.0f} W average")


if __name__ == "__main__":
    main()
