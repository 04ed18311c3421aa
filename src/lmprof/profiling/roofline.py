"""Each kernel group's gap to its limit, from a Chrome/Perfetto trace of `profile.enabled=true`.

Pure Python on the trace's JSON (no torch needed to read one), so a synthetic trace tests it:

- Kernels (`cat` kernel, gpu_memcpy, gpu_memset) are linked to the CPU operator that launched
  them through their `External id` (or their `correlation` with the launching runtime call), and
  grouped by the one classifier (`ops.catalog.classify`, over the ops' descriptions): matmul,
  attention, normalisation, pointwise, loss, optimizer, communication, copies. Gaps between
  kernels, when no stream of the device runs any, are the `idle` row.
- Work from the operator's shapes (the trace needs `profile.record_shapes=true`), as the
  operator's own description computes it (`ops.catalog.work`): FLOPs for matmuls (2 M N K) and
  attention (4 B H Tq Tk D forward on the operator's layout, 2.5x that backward, which
  recomputes the scores; halved when causal without a mask), bytes moved for the memory-bound
  groups (an Inductor kernel's launch tensors, each read or written once; an eager operator's
  inputs plus one output the size of its largest input; the fused loss's logits; a copy's bytes
  read and written). An operator launching several kernels shares its work among them by
  duration.
- Limits: the matmul peak (`profile.peak=measured` times an 8192^3 matmul, else the datasheet
  table of peaks.py) for matmul and attention; the copy bandwidth (measured: a 1 GiB
  device-to-device copy with CUDA events, else HBM_BYTES_PER_S) for the memory-bound groups.
  Communication and host copies have no limit here (no gain is claimed for them).
- Headroom: the step time if every group ran at its limit (and nothing idled), the groups taken
  as serial, and the group with the most to gain.

    python benchmarks/roofline.py results/traces/<run>/trace.json [--peak-tflops X --bw-gbs Y]
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmprof.ops import catalog, spec
from lmprof.ops.spec import COMPUTE_GROUPS, MEMORY_GROUPS

GROUPS = (*spec.GROUPS, "idle")

# Peak HBM bandwidth, bytes/s, from the vendors' datasheets (the fallback when not measured;
# a device-to-device copy reaches about 85-90% of it).
HBM_BYTES_PER_S: dict[str, float] = {
    "H200": 4.8e12,
    "H200 NVL": 4.8e12,
    "GH200": 4.0e12,
    "H100 SXM": 3.35e12,
    "H100 NVL": 3.9e12,
    "H100 PCIe": 2.0e12,
    "A100": 2.0e12,
    "B200": 8.0e12,
    "L40S": 0.864e12,
    "L4": 0.3e12,
    "A10G": 0.6e12,
    "A10": 0.6e12,
    "RTX 4090": 1.008e12,
    "RTX 3090": 0.936e12,
    "V100 SXM2": 0.9e12,
    "V100 PCIe": 0.9e12,
    "V100S PCIe": 1.134e12,
    "T4": 0.32e12,
}

# ---- the trace -------------------------------------------------------------------------------


@dataclass
class Limits:
    matmul_flops: float | None = None  # FLOP/s
    bandwidth: float | None = None  # bytes/s
    matmul_source: str = ""
    bandwidth_source: str = ""


@dataclass
class GroupRow:
    group: str
    launches: int = 0
    time_us: float = 0.0
    flops: float = 0.0
    bytes: float = 0.0
    unknown_us: float = 0.0  # kernel time with no work known (no shapes)

    def limit_and_work(self, lim: Limits) -> tuple[float | None, float, str]:
        if self.group in COMPUTE_GROUPS:
            return lim.matmul_flops, self.flops, "flop"
        if self.group in MEMORY_GROUPS:
            return lim.bandwidth, self.bytes, "byte"
        return None, 0.0, ""


@dataclass
class Roofline:
    rows: dict[str, GroupRow]
    steps: int
    span_us: float
    limits: Limits
    notes: list[str] = field(default_factory=list)

    def at_limit_us(self, r: GroupRow) -> float:
        if r.group == "idle":
            return 0.0
        limit, work, _ = r.limit_and_work(self.limits)
        if not limit or work <= 0:
            return r.time_us
        known = r.time_us - r.unknown_us
        return min(known, work / limit * 1e6) + r.unknown_us

    @property
    def total_us(self) -> float:
        return sum(r.time_us for r in self.rows.values())

    def step_ms(self) -> float:
        return self.total_us / self.steps / 1e3

    def step_at_limit_ms(self) -> float:
        return sum(self.at_limit_us(r) for r in self.rows.values()) / self.steps / 1e3

    def most_to_gain(self) -> tuple[str, float]:
        gains = {
            g: (r.time_us - self.at_limit_us(r)) / self.steps / 1e3 for g, r in self.rows.items()
        }
        g = max(gains, key=gains.get) if gains else ""
        return g, gains.get(g, 0.0)

    def table(self) -> list[dict[str, Any]]:
        out, total = [], self.total_us or 1.0
        for g in GROUPS:
            r = self.rows.get(g)
            if r is None:
                continue
            limit, work, unit = r.limit_and_work(self.limits)
            known_s = (r.time_us - r.unknown_us) / 1e6
            achieved = work / known_s if work > 0 and known_s > 0 else None
            at = self.at_limit_us(r)
            out.append(
                {
                    "group": g,
                    "launches": r.launches,
                    "ms_per_step": r.time_us / self.steps / 1e3,
                    "share": r.time_us / total,
                    "gflop_per_step": r.flops / self.steps / 1e9 if unit == "flop" else None,
                    "gb_per_step": r.bytes / self.steps / 1e9 if unit == "byte" else None,
                    "achieved": achieved,
                    "unit": {"flop": "TFLOP/s", "byte": "GB/s"}.get(unit, ""),
                    "limit": limit,
                    "fraction_of_limit": achieved / limit if achieved and limit else None,
                    "ms_at_limit": at / self.steps / 1e3,
                    "gain_ms": (r.time_us - at) / self.steps / 1e3,
                    "no_work_ms": r.unknown_us / self.steps / 1e3,
                }
            )
        return out


def load_trace(path: str | Path) -> dict:
    p = str(path)
    opener = gzip.open if p.endswith(".gz") else open
    with opener(p, "rt") as f:
        return json.load(f)


def analyze(
    trace: dict | list, limits: Limits | None = None, optimizer_bytes_per_step: float | None = None
) -> Roofline:
    """The roofline of a trace (its JSON, loaded). `optimizer_bytes_per_step` (from the model's
    parameter count: `adamw_bytes_per_step`) is the optimizer group's work where the trace's
    launch records carry none (`ops.catalog.AdamW.bytes_per_step`)."""
    limits = limits or Limits()
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    ops: dict[int, dict] = {}
    cpu_ops: list[dict] = []
    runtime_ext: dict[int, int] = {}
    kernels: list[dict] = []
    steps = 0
    for e in events:
        if e.get("ph") != "X":
            continue
        cat, args = e.get("cat", ""), e.get("args") or {}
        if cat in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e:
            kernels.append(e)
        elif cat == "cpu_op":
            cpu_ops.append(e)
            ext = args.get("External id")
            if ext is not None and (ext not in ops or e.get("dur", 0) < ops[ext].get("dur", 0)):
                ops[ext] = e
        elif (
            cat in ("cuda_runtime", "cuda_driver")
            and "correlation" in args
            and "External id" in args
        ):
            runtime_ext[args["correlation"]] = args["External id"]
        if cat in ("user_annotation", "cpu_op") and str(e.get("name", "")).startswith(
            "ProfilerStep#"
        ):
            steps += 1
    notes: list[str] = []
    if not kernels:
        return Roofline({}, max(steps, 1), 0.0, limits, ["the trace has no GPU kernels"])

    def op_of(k: dict) -> dict | None:
        a = k.get("args") or {}
        ext = a.get("External id")
        if ext is None or ext not in ops:
            ext = runtime_ext.get(a.get("correlation"))
        return ops.get(ext)

    def counted_as(k: dict, op: dict | None) -> spec.Op:
        name = op.get("name", "") if op else ""
        return catalog.classify(k.get("name", ""), name, k.get("cat", "kernel"))

    parent = _parents(cpu_ops)

    def with_work(k: dict, op: dict | None, by: spec.Op) -> tuple[dict | None, float | None]:
        # The launching operator, else the nearest enclosing one that knows the work: a
        # torch.library op with autograd (FA4's) launches its forward kernel inside the
        # generated autograd node's own cpu_op, which records no query and key.
        first = op
        while True:
            work = _work(k, op, by)
            if work is not None or op is None or id(op) not in parent:
                return (op, work) if work is not None else (first, None)
            op = parent[id(op)]

    # Per-operator work of a group, shared among that operator's kernels of that group by
    # duration (a fused operator such as the LM head + loss launches matmuls and a loss kernel:
    # each group's work goes to its own kernels).
    linked = []
    for k in kernels:
        op = op_of(k)
        by = counted_as(k, op)
        linked.append((k, by, *with_work(k, op, by)))
    op_kernel_us: dict[tuple[int, str], float] = defaultdict(float)
    for k, by, op, _ in linked:
        if op is not None:
            op_kernel_us[(id(op), by.group)] += k["dur"]
    rows: dict[str, GroupRow] = {}
    shapes_seen = False
    for k, by, op, work in linked:
        g = by.group
        r = rows.setdefault(g, GroupRow(g))
        r.launches += 1
        r.time_us += k["dur"]
        if op is not None and "Input Dims" in (op.get("args") or {}):
            shapes_seen = True
        if work is None:
            r.unknown_us += k["dur"]
            continue
        total = op_kernel_us[(id(op), g)] if op is not None else 0.0
        share = k["dur"] / total if total else 1
        if g in COMPUTE_GROUPS:
            r.flops += work * share
        else:
            r.bytes += work * share
    if not shapes_seen:
        notes.append("no operator shapes in the trace: set profile.record_shapes=true for work")
    opt = rows.get("optimizer")
    if opt is not None and opt.bytes == 0 and optimizer_bytes_per_step:
        opt.bytes = optimizer_bytes_per_step * max(steps, 1)
        opt.unknown_us = 0.0
        notes.append("optimizer bytes from the parameter count (the trace has no list shapes)")
    idle, span = idle_us(kernels)
    if idle > 0:
        rows["idle"] = GroupRow("idle", time_us=idle)
    return Roofline(rows, max(steps, 1), span, limits, notes)


def _parents(cpu_ops: list[dict]) -> dict[int, dict]:
    """Each operator's enclosing operator on its thread (by id), from their intervals: one sort
    and a stack, n log n."""
    parent: dict[int, dict] = {}
    by_thread: dict[tuple, list[dict]] = defaultdict(list)
    for e in cpu_ops:
        by_thread[(e.get("pid"), e.get("tid"))].append(e)
    for events in by_thread.values():
        events.sort(key=lambda e: (e.get("ts", 0), -e.get("dur", 0)))
        stack: list[dict] = []
        for e in events:
            start, end = e.get("ts", 0), e.get("ts", 0) + e.get("dur", 0)
            while stack and stack[-1].get("ts", 0) + stack[-1].get("dur", 0) < end:
                stack.pop()
            if stack and stack[-1].get("ts", 0) <= start:
                parent[id(e)] = stack[-1]
            stack.append(e)
    return parent


def _work(k: dict, op: dict | None, by: spec.Op) -> float | None:
    """FLOPs (compute groups) or bytes (memory groups) of one kernel's operator, or None."""
    a = k.get("args") or {}
    if k.get("cat") in catalog.COPY_CATEGORIES:
        nbytes = a.get("bytes")
        return None if nbytes is None else catalog.Copies.transfer_bytes(k.get("name", ""), nbytes)
    if op is None or by.group not in COMPUTE_GROUPS + MEMORY_GROUPS:
        return None
    oa = op.get("args") or {}
    dims, types = oa.get("Input Dims"), oa.get("Input type") or []
    if not dims:
        return None
    return catalog.work(by, op.get("name", ""), dims, types)


def idle_us(kernels: list[dict]) -> tuple[float, float]:
    """(time no stream of the device runs a kernel, first start to last end), per device,
    summed over devices."""
    by_dev: dict[Any, list[tuple[float, float]]] = defaultdict(list)
    for k in kernels:
        dev = (k.get("args") or {}).get("device", k.get("pid"))
        by_dev[dev].append((float(k["ts"]), float(k["ts"]) + float(k["dur"])))
    idle = span = 0.0
    for ivs in by_dev.values():
        ivs.sort()
        busy, (cur_s, cur_e) = 0.0, ivs[0]
        for s, e in ivs[1:]:
            if s > cur_e:
                busy += cur_e - cur_s
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        busy += cur_e - cur_s
        width = max(e for _, e in ivs) - ivs[0][0]
        idle += width - busy
        span += width
    return idle, span


# ---- limits on a device ----------------------------------------------------------------------


def measure_copy_bandwidth(device: Any, nbytes: int = 1 << 30, iters: int = 10) -> float:
    """Bytes/s of a device-to-device copy (read + write counted): median of CUDA-event timings."""
    import statistics

    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        dst.copy_(src)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del src, dst
    return 2.0 * nbytes / statistics.median(times)


def limits_for(device: Any, precision: str, peak: str = "table") -> Limits:
    """The device's limits: measured (`profile.peak=measured`) or from the tables."""
    if getattr(device, "type", device) != "cuda":
        return Limits()
    import torch

    from lmprof.profiling.peaks import gpu_key, matmul_precision, measure_peak_flops, peak_flops

    name = torch.cuda.get_device_name(device)
    if peak == "measured":
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        return Limits(
            measure_peak_flops(device, dtype),
            measure_copy_bandwidth(device),
            "measured 8192^3 matmul",
            "measured 1 GiB device copy",
        )
    key = gpu_key(name)
    return Limits(
        peak_flops(name, matmul_precision(precision)),
        HBM_BYTES_PER_S.get(key) if key else None,
        "datasheet",
        "datasheet HBM",
    )
