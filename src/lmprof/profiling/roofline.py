"""Each kernel group's gap to its limit, from a Chrome/Perfetto trace of `profile.enabled=true`.

Pure Python on the trace's JSON (no torch needed to read one), so a synthetic trace tests it:

- Kernels (`cat` kernel, gpu_memcpy, gpu_memset) are linked to the CPU operator that launched
  them through their `External id` (or their `correlation` with the launching runtime call), and
  grouped: matmul, attention, normalisation, pointwise, loss, optimizer, communication, copies.
  Gaps between kernels, when no stream of the device runs any, are the `idle` row.
- Work from the operator's shapes (the trace needs `profile.record_shapes=true`): FLOPs for
  matmuls (2 M N K) and attention (4 B H Tq Tk D forward, 2.5x that backward, which recomputes
  the scores; halved when causal without a mask), bytes moved for the memory-bound groups (the
  tensors an Inductor kernel is launched with, each read or written once; for an eager operator
  its inputs plus one output the size of its largest input; a copy's bytes read and written).
  An operator launching several kernels shares its work among them by duration.
- Limits: the matmul peak (`profile.peak=measured` times an 8192^3 matmul, else the datasheet
  table of peaks.py) for matmul and attention; the copy bandwidth (measured: a 1 GiB
  device-to-device copy with CUDA events, else HBM_BYTES_PER_S) for the memory-bound groups.
  Communication and host copies have no limit here (no gain is claimed for them).
- Headroom: the step time if every group ran at its limit (and nothing idled), the groups taken
  as serial, and the group with the most to gain.

    python benchmarks/roofline.py results/traces/<run>/trace.json [--peak-tflops X --bw-gbs Y]
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GROUPS = (
    "matmul",
    "attention",
    "normalisation",
    "pointwise",
    "loss",
    "optimizer",
    "communication",
    "copies",
    "idle",
)
COMPUTE_GROUPS = ("matmul", "attention")
MEMORY_GROUPS = ("normalisation", "pointwise", "loss", "optimizer", "copies")

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

DTYPE_BYTES = {
    "float": 4,
    "double": 8,
    "c10::half": 2,
    "c10::bfloat16": 2,
    "half": 2,
    "bfloat16": 2,
    "long int": 8,
    "long": 8,
    "int": 4,
    "short int": 2,
    "bool": 1,
    "unsigned char": 1,
    "signed char": 1,
    "c10::float8_e4m3fn": 1,
    "c10::float8_e5m2": 1,
    "c10::complex<float>": 8,
}

MATMUL_OPS = {
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_addmm_activation",
    "aten::linear",
    "aten::matmul",
}
_KEYS = {
    "communication": ("nccl", "all_reduce", "allreduce", "reduce_scatter", "all_gather", "gloo"),
    "attention": (
        "flash",
        "fmha",
        "attention",
        "sdpa",
        "cudnn_generated_fort_native_sdpa",
    ),
    "matmul": ("gemm", "nvjet", "xmma", "cutlass", "cublas", "matmul", "triton_tem_fused_mm"),
    "optimizer": ("adam", "multi_tensor", "foreach", "optimizer", "sgd"),
    "loss": ("cross_entropy", "nll_loss", "log_softmax", "logsumexp", "lmprof_ce"),
    "normalisation": ("layer_norm", "layernorm", "rms_norm", "rmsnorm", "gammabeta", "batch_norm"),
    "copies": ("copy", "memcpy", "memset", "aten::cat", "aten::clone", "contiguous", "_to_copy"),
}


def group_of(kernel: str, op: str = "", cat: str = "kernel") -> str:
    """The group of a kernel, from its name and the operator that launched it."""
    if cat in ("gpu_memcpy", "gpu_memset"):
        return "copies"
    k, o = kernel.lower(), op.lower()
    for g in ("communication", "attention"):
        if any(s in k or s in o for s in _KEYS[g]):
            return g
    if any(s in k for s in _KEYS["matmul"]) or o in MATMUL_OPS:
        return "matmul"
    for g in ("optimizer", "loss", "normalisation", "copies"):
        if any(s in k or s in o for s in _KEYS[g]):
            return g
    return "pointwise"


# ---- work from shapes ------------------------------------------------------------------------


def _numel(dims: Any) -> int:
    if not isinstance(dims, list) or not all(isinstance(d, int) for d in dims):
        return 0
    return math.prod(dims) if dims else 1


# The trace records a TensorList's shapes but not its dtype: the optimizer's lists are lmprof's
# parameters, gradients and AdamW states, all fp32 (autocast keeps the master weights in fp32).
TENSOR_LIST_BYTES = 4


def tensor_bytes(dims: list, types: list) -> list[int]:
    """Bytes of each tensor argument (0 for scalars and unknown dtypes); a TensorList counts the
    sum of its tensors."""
    out = []
    for i, d in enumerate(dims):
        t = (types[i] if i < len(types) else "").lower()
        if t == "tensorlist" and isinstance(d, list):
            out.append(sum(_numel(x) for x in d if isinstance(x, list)) * TENSOR_LIST_BYTES)
            continue
        size = DTYPE_BYTES.get(t, 0)
        out.append(_numel(d) * size if size and isinstance(d, list) and d else 0)
    return out


# lmprof's fused LM head + loss (ops/cross_entropy.py): its inputs are the hidden states and the
# head's weight, but its loss kernel streams the (tokens x vocabulary) logits it made.
LINEAR_CROSS_ENTROPY_OP = "lmprof::linear_cross_entropy"


def linear_cross_entropy_bytes(dims: list, types: list) -> float | None:
    """The loss kernel's traffic: the logits read once and the gradient written over them, in
    the hidden states' dtype (hidden (N, D) and weight (V, D) are the first two inputs)."""
    if len(dims) < 2 or not all(isinstance(d, list) and len(d) == 2 for d in dims[:2]):
        return None
    (n, _), (v, _) = dims[0], dims[1]
    size = DTYPE_BYTES.get((types[0] if types else "").lower(), 0)
    return 2.0 * n * v * size if size else None


def _written_lists(op: str) -> tuple[int, ...]:
    """Which TensorList arguments an optimizer operator writes back (it reads them all): fused
    Adam/AdamW update params, exp_avg and exp_avg_sq in place; an in-place foreach op its first."""
    name = op.lower()
    if "_fused_adam" in name:
        return (0, 2, 3)
    if "_foreach_" in name and name.endswith("_"):
        return (0,)
    return ()


def matmul_flops(op: str, dims: list) -> float | None:
    o = op.lower()
    shapes = [d for d in dims if isinstance(d, list) and d]
    try:
        if o == "aten::mm":
            (m, k), (_, n) = shapes[0], shapes[1]
            return 2.0 * m * n * k
        if o in ("aten::addmm", "aten::_addmm_activation"):
            (m, k), (_, n) = shapes[-2], shapes[-1]
            return 2.0 * m * n * k
        if o == "aten::bmm":
            (b, m, k), (_, _, n) = shapes[0], shapes[1]
            return 2.0 * b * m * n * k
        if o == "aten::baddbmm":
            (b, m, k), (_, _, n) = shapes[-2], shapes[-1]
            return 2.0 * b * m * n * k
        if o == "aten::linear":
            x, w = shapes[0], shapes[1]
            return 2.0 * math.prod(x[:-1]) * x[-1] * w[0]
        if o == "aten::matmul":
            a, b = shapes[0], shapes[1]
            if len(a) >= 2 and len(b) == 2:
                return 2.0 * math.prod(a[:-1]) * a[-1] * b[1]
            if len(a) >= 3 and len(a) == len(b):
                return 2.0 * math.prod(a[:-2]) * a[-2] * a[-1] * b[-1]
    except (ValueError, IndexError, TypeError):
        return None
    return None


def is_attention_op(op: str) -> bool:
    o = op.lower()
    return "attention" in o and (
        "scaled_dot_product" in o or "_attention_" in o or o.endswith("attention")
    )


def attention_flops(op: str, dims: list) -> float | None:
    """Forward 4 B H Tq Tk D, backward 2.5x; causal (no mask tensor) halves it.

    The first 4-D tensor is taken as the query (the backward's first is the output gradient,
    of the query's shape), the next 4-D one as the key. A further tensor whose last two dims are
    (Tq, Tk) is a mask: the kernel then computes every score."""
    four = [d for d in dims if isinstance(d, list) and len(d) == 4 and _numel(d)]
    if len(four) < 2:
        return None
    b, h, tq, dh = four[0]
    backward = "backward" in op.lower()
    key = four[2] if backward and len(four) > 2 else four[1]
    tk = key[2]
    masked = any(
        isinstance(d, list) and len(d) >= 2 and d[-2:] == [tq, tk] and d[-1] != dh for d in dims
    )
    flops = 4.0 * b * h * tq * tk * dh
    if backward:
        flops *= 2.5
    return flops if masked else flops / 2


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


def adamw_bytes_per_step(n_params: int, clipping: bool) -> float:
    """HBM bytes of one fused AdamW step over fp32 parameters, gradients and states: it reads
    params, grads, exp_avg and exp_avg_sq and writes params, exp_avg and exp_avg_sq (7 x 4 B a
    parameter); gradient clipping adds the norm's read and the scaling's read and write (3 x 4 B).
    The trace cannot say this itself: it records a TensorList's shapes as empty."""
    return float(n_params) * 4 * (7 + (3 if clipping else 0))


def analyze(
    trace: dict | list, limits: Limits | None = None, optimizer_bytes_per_step: float | None = None
) -> Roofline:
    """The roofline of a trace (its JSON, loaded). `optimizer_bytes_per_step` (from the model's
    parameter count: `adamw_bytes_per_step`) is the optimizer group's work where the trace's
    launch records carry none."""
    limits = limits or Limits()
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    ops: dict[int, dict] = {}
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

    # Per-operator work of a group, shared among that operator's kernels of that group by
    # duration (a fused operator such as the LM head + loss launches matmuls and a loss kernel:
    # each group's work goes to its own kernels).
    linked = [(k, op_of(k)) for k in kernels]

    def group_key(k: dict, op: dict | None) -> str:
        return group_of(k.get("name", ""), op.get("name", "") if op else "", k.get("cat", "kernel"))

    op_kernel_us: dict[tuple[int, str], float] = defaultdict(float)
    for k, op in linked:
        if op is not None:
            op_kernel_us[(id(op), group_key(k, op))] += k["dur"]
    rows: dict[str, GroupRow] = {}
    shapes_seen = False
    for k, op in linked:
        g = group_key(k, op)
        r = rows.setdefault(g, GroupRow(g))
        r.launches += 1
        r.time_us += k["dur"]
        work = _work(k, op, g)
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


def _work(k: dict, op: dict | None, group: str) -> float | None:
    """FLOPs (compute groups) or bytes (memory groups) of one kernel's operator, or None."""
    a = k.get("args") or {}
    if k.get("cat") in ("gpu_memcpy", "gpu_memset"):
        nbytes = a.get("bytes")
        if nbytes is None:
            return None
        name = k.get("name", "").lower()
        if "htod" in name or "dtoh" in name or "htoh" in name:
            return None  # over PCIe / host: not the HBM limit
        return float(nbytes) * (2 if "memcpy" in name else 1)
    if op is None or group not in COMPUTE_GROUPS + MEMORY_GROUPS:
        return None
    oa = op.get("args") or {}
    dims, types = oa.get("Input Dims"), oa.get("Input type") or []
    if not dims:
        return None
    name = op.get("name", "")
    if group == "matmul":
        return matmul_flops(name, dims)
    if group == "attention":
        return attention_flops(name, dims) if is_attention_op(name) else None
    if group == "loss" and name == LINEAR_CROSS_ENTROPY_OP:
        return linear_cross_entropy_bytes(dims, types)
    sizes = tensor_bytes(dims, types)
    if not any(sizes):
        return None
    if name.startswith("triton_"):  # Inductor's launch record: inputs and outputs alike
        return float(sum(sizes))
    written = _written_lists(name)
    if written:  # in place: each list read once, the updated ones written once
        return float(sum(sizes) + sum(sizes[i] for i in written if i < len(sizes)))
    return float(sum(sizes) + max(sizes))


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


# ---- output ----------------------------------------------------------------------------------


def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def markdown(rl: Roofline, title: str = "") -> str:
    lim = rl.limits
    lines = [f"## Roofline{': ' + title if title else ''}", ""]
    lines.append(
        f"{rl.steps} profiled step(s); limits: matmul/attention "
        + (
            f"{lim.matmul_flops / 1e12:.0f} TFLOP/s ({lim.matmul_source})"
            if lim.matmul_flops
            else "unknown"
        )
        + ", memory-bound "
        + (
            f"{lim.bandwidth / 1e9:.0f} GB/s ({lim.bandwidth_source})"
            if lim.bandwidth
            else "unknown"
        )
        + "."
    )
    lines += [
        "",
        "| group | launches | ms/step | share | work/step | achieved | fraction of limit | ms at limit | gain ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in rl.table():
        if t["gflop_per_step"] is not None:
            work = f"{t['gflop_per_step']:.1f} GFLOP"
            ach = f"{t['achieved'] / 1e12:.1f} TFLOP/s" if t["achieved"] else ""
        elif t["gb_per_step"] is not None:
            work = f"{t['gb_per_step']:.3f} GB"
            ach = f"{t['achieved'] / 1e9:.0f} GB/s" if t["achieved"] else ""
        else:
            work = ach = ""
        frac = f"{t['fraction_of_limit']:.0%}" if t["fraction_of_limit"] is not None else ""
        lines.append(
            f"| {t['group']} | {t['launches']} | {t['ms_per_step']:.3f} | {t['share']:.1%} | "
            f"{work} | {ach} | {frac} | {t['ms_at_limit']:.3f} | {t['gain_ms']:.3f} |"
        )
    g, gain = rl.most_to_gain()
    lines += [
        "",
        f"Headroom: {rl.step_ms():.2f} ms of kernels and idle per step; at every group's limit "
        f"(groups serial, no idle; no gain claimed where the work is unknown) "
        f"{rl.step_at_limit_ms():.2f} ms. Most to gain: **{g}** ({gain:.2f} ms per step).",
    ]
    lines += [f"- {n}" for n in rl.notes]
    return "\n".join(lines) + "\n"


def write_roofline(
    trace_path: str | Path,
    tables_dir: str | Path,
    run_name: str,
    limits: Limits,
    optimizer_bytes_per_step: float | None = None,
) -> tuple[Path, Path]:
    from lmprof.io import atomic_write_text

    rl = analyze(load_trace(trace_path), limits, optimizer_bytes_per_step)
    tables_dir = Path(tables_dir)
    tables_dir.mkdir(parents=True, exist_ok=True)
    md, csv_path = tables_dir / f"{run_name}_roofline.md", tables_dir / f"{run_name}_roofline.csv"
    atomic_write_text(md, markdown(rl, run_name))
    rows = rl.table()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["group"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(csv_path, buf.getvalue())
    return md, csv_path


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
