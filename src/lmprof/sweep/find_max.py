"""`lmprof find-max`: the largest batch size or sequence length that fits in memory.

A bounded search in isolated processes (the sweep's runner: a crashed or out-of-memory child
never takes this process down), started from the memory model's prediction: grow or shrink by
doubling until one probe fits and one does not, then bisect. Every probe and the boundary are
written to results/find_max/<name>/<name>.csv and .md, with the memory model's error on each probe.
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

from lmprof.config import RunConfig, build_config
from lmprof.errors import UserError
from lmprof.io import atomic_write_text
from lmprof.paths import RunPaths
from lmprof.status import OK

GIB = 1024**3
GRANULARITY = {"batch_size": 1, "sequence_length": 64}
CONFIG_KEY = {"batch_size": "training.batch_size", "sequence_length": "data.sequence_length"}


@dataclasses.dataclass
class Probe:
    batch_size: int
    sequence_length: int
    status: str
    peak_gb: float | None
    predicted_gb: float | None
    detail: str = ""

    @property
    def fits(self) -> bool:
        return self.status == OK

    @property
    def model_error(self) -> float | None:
        if self.fits and self.peak_gb and self.predicted_gb:
            return self.predicted_gb / self.peak_gb - 1
        return None


def _capacity_gb(cfg: RunConfig) -> float:
    import torch

    if cfg.system.memory_limit_gb:
        return cfg.system.memory_limit_gb
    if not torch.cuda.is_available():
        raise UserError(
            "find-max needs a CUDA GPU, or system.memory_limit_gb=N to search under "
            "a host memory cap on the CPU"
        )
    return torch.cuda.mem_get_info()[1] / GIB


def _with(cfg: RunConfig, **values: int) -> RunConfig:
    layer = {CONFIG_KEY[k]: v for k, v in values.items()}
    return build_config(cfg.to_dict(), layer)


def predicted_gb(cfg: RunConfig, vocab_size: int) -> float:
    from lmprof.profiling.memory_model import estimate_memory

    return estimate_memory(cfg, vocab_size).predicted_peak_bytes / GIB


def _predicted_device_gb(cfg: RunConfig, vocab_size: int) -> float:
    """What the device must hold: the allocator's reservation plus the CUDA context."""
    from lmprof.profiling.memory_model import estimate_memory

    return estimate_memory(cfg, vocab_size).predicted_device_bytes / GIB


def model_seed(cfg: RunConfig, vary: str, vocab_size: int, capacity_gb: float, limit: int) -> int:
    """The largest power of two (times the granularity) the memory model says fits.

    Fitting is judged on the reservation plus the context, not on allocated bytes: on the H200,
    batch 144 of GPT-2 small (130.9 GiB allocated predicted, 139.8 GiB card) ran out of memory.
    """
    step = GRANULARITY[vary]
    best, value = step, step
    while value <= limit:
        if _predicted_device_gb(_with(cfg, **{vary: value}), vocab_size) > capacity_gb:
            break
        best, value = value, value * 2
    return best


class Searcher:
    def __init__(self, cfg: RunConfig, vocab_size: int, paths: RunPaths, steps: int, say=print):
        from lmprof.sweep.runner import SweepRunner

        self.cfg, self.vocab_size, self.paths, self.steps, self.say = (
            cfg,
            vocab_size,
            paths,
            steps,
            say,
        )
        self.out_dir = paths.find_max_dir  # the probes' output folder
        self.runner = SweepRunner(out=io.StringIO())  # the probes report through `say`
        self.probes: list[Probe] = []

    def probe(self, batch_size: int, sequence_length: int) -> Probe:
        from lmprof.sweep.plan import RunPlan

        for p in self.probes:
            if (p.batch_size, p.sequence_length) == (batch_size, sequence_length):
                return p
        name = f"{self.cfg.logging.run_name}_B{batch_size}_T{sequence_length}"
        cfg = build_config(
            self.cfg.to_dict(),
            {
                "training.batch_size": batch_size,
                "data.sequence_length": sequence_length,
                "training.max_steps": self.steps,
                "training.warmup_steps": 0,
                "logging.logging_steps": self.steps,
                "logging.eval_max_batches": 1,
                "logging.run_name": name,
                "logging.tag": "find_max",
                "logging.progress": False,
                "logging.output_dir": str(self.out_dir),
                "model.max_seq_len": 0,
            },
        )
        outcome = self.runner.run_one(
            RunPlan(len(self.probes) + 1, name, ("find_max",), "find-max", cfg)
        )
        row = outcome.row or {}
        peak = _float(row.get("peak_gpu_mem_gb"))
        probe = Probe(
            batch_size,
            sequence_length,
            outcome.status,
            peak,
            predicted_gb(cfg, self.vocab_size),
            outcome.detail,
        )
        self.probes.append(probe)
        err = f", model {probe.model_error:+.1%}" if probe.model_error is not None else ""
        peak_s = f", peak {peak:.2f} GiB" if peak else ""
        self.say(f"  probe B={batch_size} T={sequence_length}: {probe.status}{peak_s}{err}")
        return probe

    def search(self, vary: str, start: int, limit: int, max_probes: int) -> int | None:
        """Largest value of `vary` that fits (None if even the smallest does not)."""
        step = GRANULARITY[vary]
        fixed = {"batch_size": self.cfg.training.batch_size, "sequence_length": self.cfg.seq_len}

        def fits(v: int) -> bool:
            return self.probe(**{**fixed, vary: v}).fits

        used = len(self.probes)
        lo, hi = None, None  # lo fits, hi does not
        v = max(step, min(start, limit))
        while len(self.probes) - used < max_probes:
            if fits(v):
                lo = v
                if v >= limit:
                    return v
                v = min(v * 2, limit)
            else:
                hi = v
                if v <= step:
                    return None
                v = max(step, (v // 2) // step * step)
            if lo is not None and hi is not None:
                break
        # Bisect to ~3%: a finer boundary moves with fragmentation from run to run anyway.
        while (
            lo is not None
            and hi is not None
            and hi - lo > max(step, lo // 32)
            and len(self.probes) - used < max_probes
        ):
            mid = (lo + hi) // 2 // step * step
            if mid in (lo, hi):
                break
            if fits(mid):
                lo = mid
            else:
                hi = mid
        return lo

    def write(self, boundary: list[tuple[int, int | None, str]]) -> Path:
        lines = [
            "batch_size,sequence_length,status,peak_gpu_mem_gb,predicted_peak_mem_gb,model_error,detail"
        ]
        for p in self.probes:
            err = "" if p.model_error is None else f"{p.model_error:.4f}"
            detail = p.detail.replace(",", ";")
            lines.append(
                f"{p.batch_size},{p.sequence_length},{p.status},{_s(p.peak_gb)},"
                f"{_s(p.predicted_gb)},{err},{detail}"
            )
        atomic_write_text(self.paths.find_max_table("csv"), "\n".join(lines) + "\n")
        md = [
            "| batch | seq | status | peak GiB | predicted GiB | model error |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for p in self.probes:
            err = "" if p.model_error is None else f"{p.model_error:+.1%}"
            md.append(
                f"| {p.batch_size} | {p.sequence_length} | {p.status} | {_s(p.peak_gb)} | "
                f"{_s(p.predicted_gb)} | {err} |"
            )
        md += ["", "| fixed | largest that fits |", "| --- | --- |"]
        md += [
            f"| {fixed} | {best if best is not None else 'none'} |" for _, best, fixed in boundary
        ]
        errs = [abs(p.model_error) for p in self.probes if p.model_error is not None]
        if errs:
            md.append(
                f"\nMemory model error over {len(errs)} fitting probes: "
                f"mean {sum(errs) / len(errs):.1%}, worst {max(errs):.1%}."
            )
        path = self.paths.find_max_table("md")
        atomic_write_text(path, "\n".join(md) + "\n")
        return path


def _s(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


def _float(text: str | None) -> float | None:
    try:
        v = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) else None


def find_max(
    cfg: RunConfig, vary: list[str], *, limit: int, steps: int, max_probes: int, say=print
) -> Path:
    from lmprof.data import build_data

    capacity = _capacity_gb(cfg)
    vocab = build_data(cfg, log=lambda *_: None).vocab_size
    searcher = Searcher(cfg, vocab, RunPaths.of(cfg), steps, say)
    boundary: list[tuple[int, int | None, str]] = []
    if len(vary) == 1:
        v = vary[0]
        start = model_seed(cfg, v, vocab, capacity, limit)
        say(f"find-max {v}: capacity {capacity:.1f} GiB, the memory model suggests {start}")
        best = searcher.search(v, start, limit, max_probes)
        other = "sequence_length" if v == "batch_size" else "batch_size"
        fixed = f"{other}={cfg.seq_len if other == 'sequence_length' else cfg.training.batch_size}"
        boundary.append((0, best, fixed))
    else:  # the boundary over batch x sequence length: the largest batch at each length
        T = 128
        while cfg.seq_len >= T:
            sub = _with(cfg, sequence_length=T)
            searcher.cfg = sub
            start = model_seed(sub, "batch_size", vocab, capacity, limit)
            say(f"find-max batch_size at sequence_length={T}: the memory model suggests {start}")
            boundary.append(
                (T, searcher.search("batch_size", start, limit, max_probes), f"sequence_length={T}")
            )
            T *= 2
    path = searcher.write(boundary)
    for _, best, fixed in boundary:
        say(
            f"largest that fits at {fixed}: {best if best is not None else 'none (even the smallest ran out of memory)'}"
        )
    say(f"probes and boundary: {path}")
    return path
