"""Before any work: can the run write its outputs, and can the device hold it?

`check_outputs(paths)` is the one output-folder check; `lmprof run` calls it before it builds
anything and the sweep before its first child, so a mistake costs one line, not a run. It
refuses a file where a folder belongs, a results.csv that is a folder or not a CSV table, a file
its owner made read-only, a symbolic link planted where the run writes a file or folder
(lmprof.io would not write through it anyway: better said now than after training), a folder
that takes no writes (read-only, no permission) and a disk with less than `MIN_FREE_BYTES` free.

`predicted_oom(cfg)` asks the memory model (milliseconds, nothing allocated) whether the run
needs clearly more memory than the device has.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lmprof.errors import OutputError
from lmprof.io import existing_mode, output_error, probe_writable
from lmprof.paths import RunPaths

# A run writes a few MiB (CSV rows, logs, the config); less free space than this fails it late.
MIN_FREE_BYTES = 64 * 1024**2
# The memory model is within a few % of the allocator; a run is refused only when it needs this
# many times what the device has, so configurations near the limit still meet the real allocator
# (find-max probes there) and only the hopeless ones are refused.
REFUSE_FACTOR = 1.5


def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p) and p.parent != p:
        p = p.parent
    return p


def _check_folder(path: Path, output_dir: Path) -> None:
    if path.is_symlink() and path != output_dir:
        raise OutputError(
            f"'{path}' is a symbolic link (to '{os.readlink(path)}'): lmprof writes only inside "
            "the output folder; remove the link"
        )
    if os.path.lexists(path) and not path.is_dir():
        raise OutputError(f"'{path}' is a file where lmprof needs a folder: move it away")


def _check_file(path: Path) -> None:
    if path.is_symlink():
        raise OutputError(
            f"'{path}' is a symbolic link (to '{os.readlink(path)}'): lmprof does not write "
            "through links; remove it"
        )
    if path.is_dir():
        raise OutputError(f"'{path}' is a folder where lmprof writes a file: move it away")
    existing_mode(path)  # one its owner made read-only is refused


def check_outputs(paths: Iterable[RunPaths]) -> None:
    """Refuse, as one OutputError line, any run whose outputs cannot be written. Creates nothing."""
    from lmprof.results import read_rows

    checked: set[Path] = set()
    for rp in paths:
        out = rp.output_dir
        if out not in checked:
            checked.add(out)
            base = _nearest_existing(out)
            if not base.is_dir():
                raise OutputError(
                    f"cannot create the output folder '{out}': '{base}' is a file, not a folder"
                )
            probe_writable(base)
            try:
                free = shutil.disk_usage(base).free
            except OSError as exc:
                raise output_error(base, exc) from None
            if free < MIN_FREE_BYTES:
                raise OutputError(
                    f"cannot write to '{out}': the disk is full ({free / 1024**2:.1f} MiB free, "
                    f"a run needs at least {MIN_FREE_BYTES // 1024**2} MiB)"
                )
            _check_file(rp.results_csv)
            _check_file(rp.results_lock)
            read_rows(rp.results_csv)  # a results.csv that is not a table: one line now
        folders = (
            rp.details_dir.parent,
            rp.details_dir,
            rp.log.parent,
            rp.tables_dir,
            rp.checkpoints_dir.parent,
            rp.checkpoints_dir,
        )
        for folder in folders:
            _check_folder(folder, out)
        for f in (rp.log, rp.metrics_csv, rp.eval_csv, rp.config_yaml):
            _check_file(f)


# ---------------------------------------------------------------------------------------------
# Memory


def available_memory(device: str, local_rank: int = 0) -> tuple[int, str]:
    """Bytes the run can use on `device` ("cuda" or "cpu"), and what they are, in words."""
    if device == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info(local_rank)
        name = torch.cuda.get_device_name(local_rank)
        return free, f"{name} has {free / 1024**3:.1f} GiB free of {total / 1024**3:.1f} GiB"
    avail = _host_available()
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and soft < avail:  # system.memory_limit_gb in a sweep
        return soft, f"the process may map {soft / 1024**3:.1f} GiB (RLIMIT_AS)"
    return avail, f"the host has {avail / 1024**3:.1f} GiB available"


def _host_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def predicted_oom(cfg: Any, device: str) -> tuple[int, str] | None:
    """(predicted bytes, one line) when the memory model says `cfg` cannot fit on `device`
    ("cuda" or "cpu") by a wide margin; None when it may fit. Nothing is allocated."""
    from lmprof.profiling.memory_model import estimate_memory
    from lmprof.profiling.vocab import infer_vocab_size

    vocab, _ = infer_vocab_size(cfg)
    world = cfg.system.num_gpus
    est = estimate_memory(cfg, vocab, world, device=device)
    need = est.predicted_peak_bytes
    if device == "cpu":
        need *= world  # gloo processes on one host share its memory
    have, what = available_memory(device, int(os.environ.get("LOCAL_RANK", "0")))
    if need <= have * REFUSE_FACTOR:
        return None
    gib = 1024**3
    return need, (
        f"out of memory predicted: the memory model puts the peak at {need / gib:,.1f} GiB "
        f"({est.peak_phase}), {what}; not started (system.allow_predicted_oom=true runs it)"
    )
