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
from lmprof.ops import losses
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


def _needs_cuda(what: str, cpu_choices) -> str:
    """The refusal of a CUDA-only choice on a CPU, naming the choices that run there."""
    return f"{what} needs a CUDA GPU (use {attention_kernels.or_list(cpu_choices)} on a CPU)"


def check_environment(cfg: RunConfig) -> str | None:
    """Why this machine cannot run `cfg` (a GPU, a kernel, a package it lacks), or None; a
    mistake in the config (a data path that does not exist) raises UserError instead. Cheap:
    initialises no CUDA context."""
    has_cuda = torch.cuda.is_available()
    device = cfg.system.device
    if device == "cuda" and not has_cuda:
        return "system.device=cuda but this machine has no CUDA GPU"
    on_cpu = device == "cpu" or not has_cuda
    if on_cpu and precision.PRECISIONS[cfg.system.precision].cuda_only:
        cpu = tuple(p.name for p in precision.PRECISIONS.values() if not p.cuda_only)
        return _needs_cuda(f"precision {cfg.system.precision}", cpu)
    if on_cpu and attention_kernels.kernel(cfg.model.attention).cuda_only:
        cpu = attention_kernels.names_where(lambda k: not k.cuda_only)
        return _needs_cuda(f"attention '{cfg.model.attention}'", cpu)
    loss = losses.loss(cfg.model.loss)
    # An optional package or a GPU generation: the op's own check (`availability`; for FA4 it
    # reads the compute capability: CUDA's runtime initialises, no context is made).
    for op in (attention_kernels.Attention(attention_kernels.kernel(cfg.model.attention)), loss):
        reason = op.unavailable()
        if reason:
            return reason
    if on_cpu and loss.cuda_only:
        cpu = tuple(n for n, cls in losses.LOSSES.items() if not cls.cuda_only)
        return _needs_cuda(f"loss '{cfg.model.loss}'", cpu)
    if not on_cpu and cfg.system.num_gpus > torch.cuda.device_count():
        return (
            f"system.num_gpus={cfg.system.num_gpus} but this machine has "
            f"{torch.cuda.device_count()} GPU(s)"
        )
    if on_cpu and cfg.system.num_gpus > cpu_process_limit():
        return (
            f"system.num_gpus={cfg.system.num_gpus} asks for {cfg.system.num_gpus} processes, and "
            f"without a GPU each is a gloo process on the CPU: at most {cpu_process_limit()} here "
            f"({available_cpus()} CPU core(s))"
        )
    return check_prerequisites(cfg)


def available_cpus() -> int:
    """The CPU cores this process may use (its affinity, not the whole host)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_process_limit() -> int:
    """How many gloo processes a run without a GPU may ask for: one per core (two at least, so
    a DDP run can be tried on any machine); more only time-slice the same cores."""
    return max(2, available_cpus())


def has_package(name: str) -> bool:
    """Whether `name` can be imported, without importing it (transformers alone takes seconds)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_prerequisites(cfg: RunConfig) -> str | None:
    """Why `cfg` cannot start here for want of something other than a device: a package its
    data or tokenizer needs while no token cache of them exists (a built cache needs neither).
    Reads no data. A data path or tokenizer file that does not exist is the config's mistake,
    not the machine's: it raises UserError (one line, exit 2, in `lmprof run` and the sweep)."""
    data = cfg.data
    if data.source == "synthetic":
        return None  # ids are the text: no source and no tokenizer to load
    from lmprof.data.sources import make_source
    from lmprof.data.tokenizers import tokenizer_spec

    source = make_source(data)  # a source checks that its paths exist
    spec = tokenizer_spec(data.tokenizer, data.vocab_size, data.tokenizer_path)
    if _token_cache_exists(cfg, source, spec):
        return None
    gpt2_tools = has_package("tiktoken") or has_package("transformers")
    if data.tokenizer == "gpt2" and not data.tokenizer_path and not gpt2_tools:
        return (
            "data.tokenizer=gpt2 needs tiktoken (pip install 'lmprof[gpt2]'), transformers with "
            "GPT-2's files in its cache, or data.tokenizer_path; none is here, nor a token cache "
            f"of this corpus in {data.cache_dir}/ (byte, char and bpe need nothing)"
        )
    if data.source == "hf" and not has_package("datasets"):
        return (
            f"data.source=hf needs the datasets package (pip install 'lmprof[hf]') to read "
            f"'{data.hf_dataset}', and no token cache of it is in {data.cache_dir}/"
        )
    return None


def _token_cache_exists(cfg: RunConfig, source: object, spec: dict) -> bool:
    """A complete token cache of this source and tokenizer: the run reads no source text and
    loads no tokenizer."""
    from lmprof.data.cache import MANIFEST, cache_path

    try:
        path = cache_path(cfg.data.cache_dir, source, spec, cfg.data.val_fraction)  # type: ignore[arg-type]
    except Exception:  # a cache layout this check does not know: let the run find out
        return False
    return (path / MANIFEST).is_file()


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
