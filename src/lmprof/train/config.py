"""The run config's `training`, `system`, `logging` and `checkpoint` sections, and their rules:
CUDA graphs against gradient accumulation, the run name as a file name. Torch-free, imported by
`lmprof.config` before anything of the trainer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lmprof import precision
from lmprof.config_fields import NON_NEGATIVE, POSITIVE, option
from lmprof.errors import ConfigError

PRECISIONS = precision.NAMES
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")  # they replay CUDA graphs
COMPILE_SCOPES = ("model", "region", "blocks")
SCHEDULES = ("cosine", "linear", "constant")
DEVICES = ("auto", "cpu", "cuda")
PARALLELISMS = ("ddp", "fsdp")
CHECKPOINTING = ("none", "full", "selective")
RESIDUAL_STREAMS = ("fp32", "compute")
RESUMES = ("none", "auto")


@dataclass
class TrainingConfig:
    batch_size: int = option(16, "sequences per micro-batch per process", **POSITIVE)
    grad_accum_steps: int = option(1, "micro-batches per optimizer step", **POSITIVE)
    max_steps: int = option(200, "optimizer steps", **POSITIVE)
    lr: float = option(3e-4, "peak learning rate", above=0)
    schedule: str = option("cosine", "learning-rate schedule after warm-up", choices=SCHEDULES)
    warmup_steps: int = option(20, "steps of linear warm-up", **NON_NEGATIVE)
    min_lr_ratio: float = option(
        0.1, "the schedule's floor as a fraction of lr", at_least=0, at_most=1
    )
    weight_decay: float = option(0.1, "AdamW weight decay on matrices", at_least=0)
    beta1: float = option(0.9, "AdamW beta1", at_least=0, below=1)
    beta2: float = option(0.95, "AdamW beta2", at_least=0, below=1)
    max_grad_norm: float = option(
        1.0, "gradient clipping norm; 0 disables clipping", **NON_NEGATIVE
    )
    seed: int = option(42, "seed of every random generator", at_least=0, below=2**32)
    diverge_patience: int = option(
        50, "steps of non-finite loss before the run is `diverged`", **POSITIVE
    )


@dataclass
class SystemConfig:
    device: str = option("auto", "where to train", choices=DEVICES)
    precision: str = option(
        "fp32", "numeric precision (see lmprof/precision.py)", choices=PRECISIONS
    )
    # Under autocast the embedding's fp32 output makes every residual add fp32, so each norm and
    # add moves twice the bytes of the compute dtype. compute: the stream in bf16/fp16, as
    # Megatron (no fp32_residual_connection) and FSDP's param_dtype keep it.
    residual_stream: str = option(
        "fp32",
        "the residual stream's dtype under autocast: fp32, or the compute dtype (bf16/fp16; "
        "pre-norm only; FSDP's mixed precision always runs it in the compute dtype)",
        choices=RESIDUAL_STREAMS,
    )
    gradient_checkpointing: str = option(
        "none", "recompute activations in the backward (accepts true/false)", choices=CHECKPOINTING
    )
    compile: bool = option(False, "torch.compile the model")
    # max-autotune tries Triton matmul templates: long compiles.
    compile_mode: str = option(
        "default", "torch.compile's mode (reduce-overhead: CUDA graphs)", choices=COMPILE_MODES
    )
    # Every layer has the same code and shapes, so one layer's compiled code can serve them all
    # (torch.compile inlines nn.Modules: their parameters are inputs). region: still one graph,
    # each block a nested compile region (torch.compiler.nested_compile_region) lowered once;
    # blocks: each block its own torch.compile call, a Python call between layers.
    compile_scope: str = option(
        "model",
        "what torch.compile compiles: the whole model as one graph; region: one graph whose "
        "blocks are one nested region compiled once (a fraction of the compile time); blocks: "
        "each block compiled on its own (one graph all layers reuse, a call per layer)",
        choices=COMPILE_SCOPES,
    )
    num_gpus: int = option(
        1, "processes for this run (gloo processes on a CPU-only machine)", above=0, at_most=4096
    )
    parallelism: str = option("ddp", "how several processes share the model", choices=PARALLELISMS)
    timeout_s: float = option(0.0, "sweeps: a per-run wall-clock limit; 0: none", **NON_NEGATIVE)
    memory_limit_gb: float = option(
        0.0, "sweeps: cap the child's host address space (RLIMIT_AS); 0: none", **NON_NEGATIVE
    )
    allow_predicted_oom: bool = option(
        False, "start a run the memory model says cannot fit (to see the real out-of-memory)"
    )


@dataclass
class LoggingConfig:
    run_name: str = option("", "the run's file name; empty: derived from the config")
    tag: str = option("", "the experiment group the analysis plots together")
    # A run is its configuration (the hash), its seed and its repeat; the name only files it.
    repeat: int = option(
        0,
        "which repeat of its configuration this run is (a sweep's repeat: N sets 1..N)",
        at_least=0,
        at_most=10**6,
    )
    fresh_name: bool = option(
        False, "a run name already used by another configuration: pick a new one (not refuse)"
    )
    attempt: int = option(
        0,
        "which attempt of its run name this is; its files are <run>@<k> from the second "
        "(0: the first free one, chosen at start)",
        at_least=0,
        at_most=10**6,
    )
    output_dir: str = option(".", "folder for results.csv, logs/, results/details/")
    logging_steps: int = option(10, "steps between log lines and metrics rows", **POSITIVE)
    eval_interval: int = option(0, "steps between evaluations; 0: once, at the end", **NON_NEGATIVE)
    eval_max_batches: int = option(
        0, "batches per evaluation; 0: the whole validation split", **NON_NEGATIVE
    )
    eval_compiled: bool = option(
        False,
        "evaluate with the compiled model (system.compile): a second graph, compiled at the "
        "first evaluation; off: the same weights run eagerly and compile nothing",
    )
    timing_warmup_steps: int = option(
        5, "first steps left out of the steady-state figures", **NON_NEGATIVE
    )
    progress: bool = option(True, "a progress bar on a terminal")
    debug_flash: bool = option(False, "time one step with each SDPA backend first, as the seed did")
    tensorboard: bool = option(False, "write TensorBoard event files (with hparams)")
    wandb: bool = option(False, "log to Weights & Biases (pip install lmprof[wandb])")
    wandb_project: str = option("lmprof", "the Weights & Biases project")
    mlflow: bool = option(False, "log to MLflow (pip install lmprof[mlflow])")
    mlflow_uri: str = option("", "MLflow tracking URI; empty: MLflow's default (./mlruns)")
    mlflow_experiment: str = option("lmprof", "the MLflow experiment")


@dataclass
class CheckpointConfig:
    interval: int = option(0, "steps between checkpoints; 0: none", **NON_NEGATIVE)
    keep: int = option(2, "checkpoints kept", **POSITIVE)
    resume: str = option("none", "auto: continue from the newest checkpoint", choices=RESUMES)
    dir: str = option("checkpoints", "folder for checkpoints, under output_dir")


def checkpointing_mode(value: Any) -> str:
    """system.gradient_checkpointing also takes the seed's true/false: full and none."""
    if isinstance(value, bool):
        return "full" if value else "none"
    text = str(value).lower()
    if text in ("true", "yes", "on", "1"):
        return "full"
    if text in ("false", "no", "off", "0"):
        return "none"
    return text


def effective_residual_stream(system: SystemConfig) -> str:
    """The stream's dtype as the run has it: FSDP casts the parameters (MixedPrecisionPolicy),
    so under it an autocast precision's stream is always the compute dtype."""
    lowp = precision.PRECISIONS[system.precision].autocast is not None
    return "compute" if lowp and system.parallelism == "fsdp" else system.residual_stream


def validate_system(system: SystemConfig, training: TrainingConfig) -> None:
    """torch.compile's CUDA-graph modes against gradient accumulation; the region scope
    against FSDP; a compute-dtype residual stream needs a compute dtype other than fp32."""
    if system.residual_stream == "compute" and not precision.PRECISIONS[system.precision].autocast:
        autocasts = [p.name for p in precision.PRECISIONS.values() if p.autocast]
        raise ConfigError(
            "system.residual_stream",
            system.residual_stream,
            f"precision {system.precision} computes in fp32: use residual_stream=fp32, or "
            f"precision {' or '.join(autocasts)}",
        )
    if system.compile_mode in CUDAGRAPH_MODES and training.grad_accum_steps > 1:
        raise ConfigError(
            "system.compile_mode",
            system.compile_mode,
            "CUDA graphs reuse their buffers across micro-steps: use grad_accum_steps=1 or "
            "compile_mode default / max-autotune-no-cudagraphs",
        )
    if system.compile and system.compile_scope == "region" and system.parallelism == "fsdp":
        raise ConfigError(
            "system.compile_scope",
            system.compile_scope,
            "FSDP shards each block with hooks around its call: use compile_scope model or "
            "blocks with parallelism=fsdp",
        )


# A run name is a file name (logs/<run>.log, <run>_metrics.csv, <run>/ folders) on every system
# the results may be copied to: ASCII letters, digits, '.', '_' and '-'; starting with a letter
# or digit (no hidden file, no option); not ending in '.' (Windows drops it); not one of
# Windows' device names, alone or before an extension ("nul.log" is the NUL device there); at
# most 200 characters, so the longest file made of it (`<run>_profile_ops.csv`) fits 255 bytes.
# \Z, not $: `$` also matches before a trailing newline ("abc\n").
_RUN_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_-])?\Z")
_DEVICE_NAMES = re.compile(r"(?i)(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\..*)?\Z")
RUN_NAME_MAX = 200
RUN_NAME_RULE = (
    "must be a plain file name that every system accepts: letters, digits, '.', '_' and '-', starting with a "
    "letter or digit, not ending in '.', not a Windows device name (CON, NUL, COM1, ...), "
    f"at most {RUN_NAME_MAX} characters"
)


def run_name_problem(name: str) -> str | None:
    """Why `name` cannot be a run's file name (RUN_NAME_RULE), or None."""
    if len(name) > RUN_NAME_MAX or not _RUN_NAME.match(name) or _DEVICE_NAMES.match(name):
        return RUN_NAME_RULE
    return None


def validate_logging(lg: LoggingConfig) -> None:
    """The run name, when given, is a file name every system accepts."""
    problem = run_name_problem(lg.run_name) if lg.run_name else None
    if problem:
        raise ConfigError("logging.run_name", lg.run_name, problem)
