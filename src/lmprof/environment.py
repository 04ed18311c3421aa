"""What this machine can run, and the facts about it that every results row carries."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
from pathlib import Path

import torch

from lmprof import __version__, attention_kernels, precision
from lmprof.config import RunConfig
from lmprof.results import ColumnGroup

ENVIRONMENT_COLUMNS = ColumnGroup(
    "environment",
    "the machine and software the run saw: environment_info",
    (
        "device",
        "device_name",
        "gpu_count",
        "torch_version",
        "cuda_version",
        "nccl_version",
        "driver_version",
        "lmprof_version",
        "git_commit",
    ),
)


def check_environment(cfg: RunConfig) -> str | None:
    """Why this machine cannot run `cfg`, or None. Cheap: initialises no CUDA context."""
    has_cuda = torch.cuda.is_available()
    device = cfg.system.device
    if device == "cuda" and not has_cuda:
        return "system.device=cuda but this machine has no CUDA GPU"
    on_cpu = device == "cpu" or not has_cuda
    if on_cpu and precision.PRECISIONS[cfg.system.precision].cuda_only:
        cpu = tuple(p.name for p in precision.PRECISIONS.values() if not p.cuda_only)
        return (
            f"precision {cfg.system.precision} needs a CUDA GPU "
            f"(use {attention_kernels.or_list(cpu)} on a CPU)"
        )
    if on_cpu and attention_kernels.kernel(cfg.model.attention).cuda_only:
        cpu = attention_kernels.names_where(lambda k: not k.cuda_only)
        return (
            f"attention '{cfg.model.attention}' needs a CUDA GPU "
            f"(use {attention_kernels.or_list(cpu)} on a CPU)"
        )
    kernel = attention_kernels.kernel(cfg.model.attention)
    if not kernel.dropout and cfg.model.dropout > 0:
        # A rule of the config, checked here until config validation reads the table's column.
        return (
            f"attention '{kernel.name}' has no attention dropout: set model.dropout=0 "
            f"(it is {cfg.model.dropout})"
        )
    if kernel.name == "fa4":
        # The optional package and an sm90+ GPU. The one check that reads the compute
        # capability (CUDA's runtime initialises; no context is made), and only for fa4 runs.
        from lmprof.ops.flash_attn4 import unavailable_reason

        reason = unavailable_reason()
        if reason:
            return reason
    if not on_cpu and cfg.system.num_gpus > torch.cuda.device_count():
        return (
            f"system.num_gpus={cfg.system.num_gpus} but this machine has "
            f"{torch.cuda.device_count()} GPU(s)"
        )
    return None


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return None if out.returncode else out.stdout.strip()


def _is_lmprof_checkout(toplevel: Path) -> bool:
    """The checkout's toplevel holds the pyproject.toml of a project named lmprof."""
    try:
        text = (toplevel / "pyproject.toml").read_text()
    except OSError:
        return False
    import tomllib

    try:
        return tomllib.loads(text).get("project", {}).get("name") == "lmprof"
    except tomllib.TOMLDecodeError:
        return False


@functools.cache
def git_commit(package_dir: str | None = None) -> str:
    """The commit of lmprof's own checkout ("-dirty" when its tracked files changed), or "".

    Only when the package's source directory lies in a git checkout whose toplevel is lmprof's
    (its pyproject names lmprof): an installed lmprof inside some other repository (a
    site-packages under a project's venv) records nothing rather than that repository's commit.
    """
    pkg = Path(package_dir) if package_dir else Path(__file__).resolve().parent
    top = _git(pkg, "rev-parse", "--show-toplevel")
    if not top or not _is_lmprof_checkout(Path(top)):
        return ""
    root = Path(top)
    # The package must be the checkout's own src/lmprof, not a copy vendored somewhere in it.
    if pkg.resolve() != (root / "src" / "lmprof").resolve():
        return ""
    commit = _git(root, "rev-parse", "--short=12", "HEAD")
    if not commit:
        return ""
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".")
    return commit + ("-dirty" if dirty else "")


def _driver_version() -> str:
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:  # NVML absent or no driver: the column stays empty
        return ""


def environment_info(device: torch.device) -> dict[str, object]:
    """The environment columns of a results row."""
    info: dict[str, object] = {
        "device": device.type,
        "torch_version": torch.__version__,
        "lmprof_version": __version__,
        "git_commit": git_commit(),
        "cuda_version": torch.version.cuda or "",
        "device_name": "cpu",
        "gpu_count": 0,
        "nccl_version": "",
        "driver_version": "",
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["gpu_count"] = int(os.environ.get("WORLD_SIZE", "1"))
        with contextlib.suppress(Exception):  # builds without NCCL leave the cell empty
            info["nccl_version"] = ".".join(map(str, torch.cuda.nccl.version()))
        info["driver_version"] = _driver_version()
    return info
