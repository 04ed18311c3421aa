"""Instruments around the training step: NVTX ranges, an optional per-phase CUDA-event
breakdown, a torch.profiler trace, memory by phase and allocator statistics, memory snapshots.

Everything that would cost a host-device sync is off unless asked for (`profile.breakdown`,
`profile.enabled`, `profile.memory_snapshot`); so are NVTX ranges (`profile.nvtx`: host calls
every phase of every step that only an Nsight Systems capture reads). Allocator statistics are
read once, for the results row.
"""

from __future__ import annotations

import csv
import io
import logging
import statistics
from collections import defaultdict
from pathlib import Path

import torch

from lmprof.config import RunConfig
from lmprof.io import atomic_output, atomic_write_text
from lmprof.ops.catalog import classify
from lmprof.ops.spec import GROUPS
from lmprof.paths import RunPaths
from lmprof.results import ColumnGroup
from lmprof.train.timing import EventPool

log = logging.getLogger("lmprof")
GIB = 1024**3
PHASES = ("data", "forward", "backward", "optimizer")

# Names built from PHASES and the trace's groups (ops/spec.py), so a new phase or group needs no
# edit here.
INSTRUMENT_COLUMNS = ColumnGroup(
    "instruments",
    "per-phase times and memory (profile.breakdown), allocator counters and the trace's time "
    "shares by kernel category: Instruments.summary",
    ("alloc_retries", "alloc_ooms", "nvml_used_gb"),
    patterns=(
        "(" + "|".join(PHASES) + ")_ms_p50",
        "mem_after_(" + "|".join(PHASES) + ")_gb",
        "profile_share_(" + "|".join(GROUPS) + ")",
    ),
)


def categorize(name: str) -> str:
    """The group a kernel (on a GPU) or an operator (on a CPU) of the table is counted under:
    the roofline's classifier (ops/catalog.py), from the name alone."""
    return classify(name, name).group


def op_rows(events, use_device: bool) -> list[tuple[str, int, float]]:
    """(name, calls, self ms) per kernel on a GPU, per operator on a CPU.

    On a GPU, kernels only: operator rows would count their kernels' time twice, and user
    annotations (`ProfilerStep#N`, `Optimizer.step#...`) also appear as device-side ranges that
    span every kernel inside them.
    """
    from torch.autograd import DeviceType

    rows = []
    for evt in events:
        if use_device and (
            evt.device_type != DeviceType.CUDA
            or getattr(evt, "is_user_annotation", False)
            or evt.key.startswith(("ProfilerStep", "Optimizer."))
        ):
            continue
        t = evt.self_device_time_total if use_device else evt.self_cpu_time_total
        if t > 0:
            rows.append((evt.key, evt.count, t / 1e3))
    return rows


class _Phase:
    """Context for one phase of a step: the phase's name only, unless NVTX, the breakdown or
    the memory probe is on."""

    __slots__ = ("instr", "name")

    def __init__(self, instr: Instruments, name: str):
        self.instr, self.name = instr, name

    def __enter__(self):
        ins = self.instr
        ins.state_phase = self.name
        if ins.cuda:
            if ins.nvtx:
                torch.cuda.nvtx.range_push(self.name)
            if ins.breakdown:
                ins._open[self.name] = ins._pool.recorded()

    def __exit__(self, *exc):
        ins = self.instr
        if ins.cuda:
            if ins.breakdown and self.name in ins._open:
                ins._events.append((self.name, ins._open.pop(self.name), ins._pool.recorded()))
            if ins.nvtx:
                torch.cuda.nvtx.range_pop()
            if ins.probe_memory:
                ins.memory_by_phase[self.name] = torch.cuda.memory_allocated() / GIB
        return False


class Instruments:
    def __init__(self, cfg: RunConfig, device: torch.device, is_main: bool):
        p = cfg.profile
        self.cfg, self.device, self.is_main = cfg, device, is_main
        self.cuda = device.type == "cuda"
        self.breakdown = p.breakdown and self.cuda
        self.nvtx = p.nvtx and self.cuda
        self._pool = EventPool()  # the breakdown's events, reused once read
        self.state_phase = "setup"
        self._open: dict[str, torch.cuda.Event] = {}
        self._events: list[tuple[str, object, object]] = []
        self.phase_ms: dict[str, list[float]] = defaultdict(list)
        self.memory_by_phase: dict[str, float] = {}
        self.probe_memory = False
        # The optimizer step's HBM traffic, set by the trainer (the trace cannot tell it).
        self.optimizer_bytes_per_step: float | None = None
        self.probe_step = max(2, cfg.logging.timing_warmup_steps)
        self.paths = RunPaths.of(cfg)
        self.trace_dir = self.paths.traces_dir
        self.tables_dir = self.paths.tables_dir
        self.profiler = self._start_profiler() if (p.enabled and is_main) else None
        self.snapshot = p.memory_snapshot and self.cuda
        if self.snapshot:
            torch.cuda.memory._record_memory_history(max_entries=200_000)
        from lmprof.profiling.energy import EnergyMeter

        # The run's energy counter starts now; its sampler runs over the steady window only.
        self.energy = EnergyMeter(device, cfg.energy.interval_ms, cfg.energy.sample)
        self._trace_path: Path | None = None
        if self.breakdown and is_main:
            log.info("profile.breakdown is on: per-phase CUDA events cost a sync per logged step")

    def phase(self, name: str) -> _Phase:
        return _Phase(self, name)

    def step_begin(self, step: int) -> None:
        self.probe_memory = self.cuda and step + 1 == self.probe_step
        sampler = self.energy.sampler
        # The steady window opens once, at the first step after warm-up.
        if step >= self.cfg.logging.timing_warmup_steps and sampler and sampler.window is None:
            self._drain()
            self.energy.start()

    def step_end(self, step: int) -> None:
        self.probe_memory = False
        if step >= self.cfg.training.max_steps and self.energy.window is None:
            self._drain()  # the window closes when the GPU has done the last step
            self.energy.stop()
        if self.profiler is not None:
            self.profiler.step()
            p = self.cfg.profile
            if step >= p.wait + p.warmup + p.active:
                self._stop_profiler()

    def _drain(self) -> None:
        if self.cuda and self.energy.sampler is not None:
            torch.cuda.synchronize(self.device)

    def collect(self) -> None:
        """Resolve breakdown events (called on logging steps, which sync anyway)."""
        if self._events:
            self._events[-1][2].synchronize()
            for name, start, end in self._events:
                self.phase_ms[name].append(start.elapsed_time(end))
                self._pool.give_back(start, end)
            self._events.clear()

    # ---- torch.profiler ---------------------------------------------------------------------

    def _start_profiler(self):
        from torch.profiler import ProfilerActivity, profile, schedule

        p = self.cfg.profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        prof = profile(
            activities=activities,
            schedule=schedule(wait=p.wait, warmup=p.warmup, active=p.active, repeat=1),
            record_shapes=p.record_shapes,
            profile_memory=p.profile_memory,
            with_stack=p.with_stack,
            on_trace_ready=self._trace_ready,
        )
        prof.start()
        return prof

    def _stop_profiler(self) -> None:
        prof, self.profiler = self.profiler, None
        if prof is not None:
            prof.stop()

    def _trace_ready(self, prof) -> None:
        trace = self.paths.profiler_trace
        with atomic_output(trace) as tmp:  # the profiler writes the file itself
            prof.export_chrome_trace(str(tmp))
        self._trace_path = trace
        self._write_op_table(prof)
        log.info("profiler trace: %s (open in https://ui.perfetto.dev or chrome://tracing)", trace)

    def _write_op_table(self, prof) -> None:
        use_device = self.cuda
        rows = op_rows(prof.key_averages(), use_device)
        rows.sort(key=lambda r: -r[2])
        total = sum(r[2] for r in rows) or 1.0
        shares: dict[str, float] = defaultdict(float)
        for name, _, ms in rows:
            shares[categorize(name)] += ms / total
        self.category_shares = dict(shares)
        clock = "device" if use_device else "cpu"
        lines = [
            f"| operator / kernel | calls | self {clock} ms | share | category |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| `{k[:90]}` | {c} | {ms:.3f} | {ms / total:.1%} | {categorize(k)} |"
            for k, c, ms in rows[:30]
        ]
        lines += ["", "| category | share of profiled self time |", "| --- | --- |"]
        lines += [f"| {c} | {s:.1%} |" for c, s in sorted(shares.items(), key=lambda kv: -kv[1])]
        self.tables_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.paths.profile_ops_table("md"), "\n".join(lines) + "\n")
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["name", "calls", f"self_{clock}_ms", "share", "category"])
        for k, c, ms in rows:
            w.writerow([k, c, f"{ms:.4f}", f"{ms / total:.5f}", categorize(k)])
        atomic_write_text(self.paths.profile_ops_table("csv"), buf.getvalue())

    def _write_roofline(self, trace: Path) -> None:
        """Each kernel group's gap to its limit (profiling/roofline.py), after training."""
        from lmprof.profiling.roofline import limits_for
        from lmprof.profiling.roofline_report import write_roofline

        try:
            limits = limits_for(self.device, self.cfg.system.precision, self.cfg.profile.peak)
            paths = write_roofline(trace, self.paths, limits, self.optimizer_bytes_per_step)
            log.info("roofline table: %s", paths[0])
        except Exception as exc:  # noqa: BLE001 -- a report, never the run's failure
            log.warning("roofline table not written: %s", exc)

    # ---- memory -----------------------------------------------------------------------------

    def dump_snapshot(self, reason: str) -> Path | None:
        if not self.snapshot:
            return None
        path = self.paths.memory_snapshot(reason)
        with atomic_output(path) as tmp:  # torch writes the pickle itself
            torch.cuda.memory._dump_snapshot(str(tmp))
        log.info("memory snapshot (%s): %s (open in https://pytorch.org/memory_viz)", reason, path)
        return path

    def summary(self) -> dict[str, object]:
        """Columns for the results row."""
        row: dict[str, object] = {}
        self.collect()
        for name in PHASES:
            if self.phase_ms.get(name):
                row[f"{name}_ms_p50"] = statistics.median(self.phase_ms[name])
        for name, gb in self.memory_by_phase.items():
            row[f"mem_after_{name}_gb"] = gb
        if self.cuda:
            stats = torch.cuda.memory_stats(self.device)
            row["alloc_retries"] = stats.get("num_alloc_retries", 0)
            row["alloc_ooms"] = stats.get("num_ooms", 0)
            row["nvml_used_gb"] = _nvml_used_gb(self.device)
        for category, share in getattr(self, "category_shares", {}).items():
            row[f"profile_share_{category}"] = share
        return row

    def close(self, oom: bool = False) -> None:
        self._stop_profiler()
        self.energy.stop()
        if self._trace_path is not None:
            self._write_roofline(self._trace_path)
            self._trace_path = None
        if self.snapshot:
            self.dump_snapshot("oom" if oom else "end")
            torch.cuda.memory._record_memory_history(enabled=None)


def _nvml_used_gb(device: torch.device) -> float | str:
    """The device's used memory as NVML sees it: CUDA context and NCCL buffers included."""
    try:
        free, total = torch.cuda.mem_get_info(device)
    except Exception:  # a driver without the query: leave the cell empty
        return ""
    return (total - free) / GIB
