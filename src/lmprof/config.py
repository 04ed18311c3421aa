"""The run config: one typed schema, the single source of truth for a run.

A config comes from YAML and `key=value` overrides. Keys may be dotted (`model.d_model`), a
field's unique leaf name (`d_model`, `precision`), or one of the seed assignment's flat names
(`fp16`, `nhead`, `learning_rate`, ...), so a config written for the seed loads unchanged.
Everything is checked before any work starts; mistakes raise `ConfigError` with one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from lmprof import attention_kernels, precision
from lmprof.errors import ConfigError, UserError
from lmprof.ops import losses

ATTENTIONS = attention_kernels.NAMES
LOSSES = losses.NAMES
PRECISIONS = precision.NAMES
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")  # they replay CUDA graphs
SCHEDULES = ("cosine", "linear", "constant")
SOURCES = ("stdlib", "text", "hf", "synthetic")
TOKENIZERS = ("byte", "char", "bpe", "gpt2", "file")
DOCUMENTS = ("auto", "file", "wikitext")  # see lmprof/data/sources.py
PACKED_BATCHINGS = ("shifted", "random", "packed")  # where windows start: data/batching.py
BATCHINGS = (*PACKED_BATCHINGS, "padded")
DEVICES = ("auto", "cpu", "cuda")
PARALLELISMS = ("ddp", "fsdp")
NORMS = ("pre", "post")
NORM_TYPES = ("layernorm", "rmsnorm")
POS_ENCODINGS = ("learned", "sinusoidal", "rope")
ACTIVATIONS = ("gelu", "relu", "swiglu")
CHECKPOINTING = ("none", "full", "selective")
PEAKS = ("table", "measured")
RESUMES = ("none", "auto")

# Integers are passed to torch, numpy and the OS; one that does not fit an int64 (or a seed
# that does not fit numpy's uint32) fails deep inside them, so each has a ceiling.
INT_CEILING = 2**62


@dataclass(frozen=True)
class Spec:
    """What a config field means and which values it allows: validation, `--help-config` and
    the docs read this, so a field's rules live next to the field."""

    help: str
    choices: tuple[str, ...] | None = None
    at_least: float | None = None  # value >= at_least
    above: float | None = None  # value > above
    below: float | None = None  # value < below
    at_most: float | None = None  # value <= at_most
    # The data sources that read this key (None: all). Given for another source, the key is
    # refused rather than ignored: `data.path=my.txt` alone would train on the stdlib corpus.
    read_by: tuple[str, ...] | None = None

    def allowed(self) -> str:
        """The rule in words: "positive", "in [0, 1)", or the choices."""
        if self.choices:
            return ", ".join(self.choices)
        low = self.above if self.above is not None else self.at_least
        high = self.below if self.below is not None else self.at_most
        if low is None and high is None:
            return ""
        if high is None:
            if low == 0:
                return "positive" if self.above is not None else "zero or positive"
            return f"{'>' if self.above is not None else '>='} {_num(low)}"
        if low is None:
            return f"{'<' if self.below is not None else '<='} {_num(high)}"
        left = "(" if self.above is not None else "["
        right = ")" if self.below is not None else "]"
        return f"in {left}{_num(low)}, {_num(high)}{right}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def option(default: Any, help: str, **rules: Any) -> Any:
    """A config field with its meaning and rules (see `Spec`)."""
    return field(default=default, metadata={"spec": Spec(help, **rules)})


POSITIVE = {"above": 0}
NON_NEGATIVE = {"at_least": 0}
TEXT_ONLY = {"read_by": ("text",)}
HF_ONLY = {"read_by": ("hf",)}


@dataclass
class ModelConfig:
    d_model: int = option(256, "width of the residual stream", **POSITIVE)
    n_heads: int = option(4, "attention heads; must divide d_model", **POSITIVE)
    n_kv_heads: int = option(
        0,
        "key/value heads (grouped-query attention); must divide n_heads; 0: n_heads",
        **NON_NEGATIVE,
    )
    n_layers: int = option(4, "Transformer blocks", **POSITIVE)
    d_ff: int = option(
        1024,
        "hidden width of the MLP; 0: 4 d_model, or for swiglu Llama's 8/3 d_model rounded up "
        "to ffn_multiple_of",
        **NON_NEGATIVE,
    )
    ffn_multiple_of: int = option(
        256, "swiglu with d_ff=0: round the hidden width up to a multiple of this", **POSITIVE
    )
    dropout: float = option(0.1, "dropout probability", at_least=0, below=1)
    max_seq_len: int = option(
        0, "rows of the position table; 0: data.sequence_length", **NON_NEGATIVE
    )
    norm: str = option(
        "pre", "LayerNorm placement (post: nn.TransformerEncoderLayer's, the seed's)", choices=NORMS
    )
    # `norm` already names the placement (the seed's key), so the layer is a key of its own.
    norm_type: str = option(
        "layernorm", "the normalization layer (rmsnorm: Llama's)", choices=NORM_TYPES
    )
    pos_encoding: str = option(
        "learned",
        "position encoding (rope: rotary, on q and k in each block)",
        choices=POS_ENCODINGS,
    )
    rope_theta: float = option(10000.0, "pos_encoding=rope: the rotary base", above=0)
    tie_embeddings: bool = option(True, "share the token embedding with the output projection")
    bias: bool = option(True, "biases in the linear layers and LayerNorms")
    activation: str = option(
        "gelu", "MLP activation (relu: the seed's; swiglu: Llama's gated SiLU)", choices=ACTIVATIONS
    )
    attention: str = option(
        "sdpa", "attention kernel (see lmprof/attention_kernels.py)", choices=ATTENTIONS
    )
    vocab_multiple: int = option(
        64, "pad the embedding rows to a multiple of this (tensor-core shapes)", **POSITIVE
    )
    loss: str = option(
        losses.DEFAULT,
        "the LM head and cross-entropy (see lmprof/ops/losses.py; pytorch: the reference)",
        choices=LOSSES,
    )
    loss_chunk_size: int = option(
        0, ">0: cross-entropy over this many tokens at a time, no full logits", **NON_NEGATIVE
    )

    def ffn_hidden(self) -> int:
        """The MLP's hidden width: d_ff, or what d_ff=0 stands for: GPT-2's 4 d_model, or for
        swiglu Llama's 2/3 of that (three matrices, the parameters of a 4 d_model MLP) rounded
        up to ffn_multiple_of."""
        if self.d_ff:
            return self.d_ff
        if self.activation != "swiglu":
            return 4 * self.d_model
        m = self.ffn_multiple_of
        return (8 * self.d_model // 3 + m - 1) // m * m


@dataclass
class DataConfig:
    source: str = option("stdlib", "where the text comes from", choices=SOURCES)
    path: str = option(
        "",
        "source=text: training files or folders (a folder of train/valid/test files: all)",
        **TEXT_ONLY,
    )
    val_path: str = option(
        "", "source=text: validation files; empty: data.val_fraction of path", **TEXT_ONLY
    )
    test_path: str = option("", "source=text: test files, evaluated once at the end", **TEXT_ONLY)
    encoding: str = option(
        "", "text files' encoding; empty: UTF-8, and other bytes are refused", **TEXT_ONLY
    )
    documents: str = option(
        "auto",
        "what a document is: file (a JSONL line, a row); wikitext: an article; auto: wikitext "
        "for WikiText's files and dataset",
        choices=DOCUMENTS,
        read_by=("text", "hf"),
    )
    hf_dataset: str = option(
        "wikitext",
        "source=hf: a hub name, a save_to_disk folder, or json/parquet/text/csv",
        **HF_ONLY,
    )
    hf_config: str = option(
        "", "the dataset's config name; empty: none (wikitext-103-raw-v1)", **HF_ONLY
    )
    hf_revision: str = option(
        "", "the dataset's revision on the hub (a tag, branch or commit)", **HF_ONLY
    )
    hf_split: str = option(
        "", "split names train[,validation[,test]]; empty: the usual names", **HF_ONLY
    )
    data_files: str = option(
        "",
        "files for json/parquet/text/csv: a,b (training) or train=a,validation=b,test=c",
        **HF_ONLY,
    )
    text_column: str = option("text", "the dataset column that holds the text", **HF_ONLY)
    streaming: bool = option(
        False,
        "source=hf: stream the dataset into the cache, stopping at data.max_tokens",
        **HF_ONLY,
    )
    tokenizer: str = option("byte", "how text becomes token ids", choices=TOKENIZERS)
    tokenizer_path: str = option(
        "", "tokenizer=file (or gpt2): a tokenizer.json, or a folder of vocab.json + merges.txt"
    )
    vocab_size: int = option(
        4096, "bpe: the size to train; synthetic: the ids drawn from", above=0, at_most=2**31 - 1
    )
    sequence_length: int = option(256, "tokens per training sequence", **POSITIVE)
    batching: str = option(
        "shifted",
        "documents concatenated into windows on a grid shifted each epoch (shifted), at "
        "random starts (random) or on a fixed grid (packed: lmprof before shifted); or "
        "padded: one document per row, PAD-masked",
        choices=BATCHINGS,
    )
    val_fraction: float = option(
        0.05, "share of the text held out for evaluation", above=0, below=1
    )
    max_tokens: int = option(0, "cap on the training tokens; 0: the whole corpus", **NON_NEGATIVE)
    cache_dir: str = option("processed_datasets", "where tokenised corpora are cached")


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
    gradient_checkpointing: str = option(
        "none", "recompute activations in the backward (accepts true/false)", choices=CHECKPOINTING
    )
    compile: bool = option(False, "torch.compile the model")
    # max-autotune tries Triton matmul templates: long compiles.
    compile_mode: str = option(
        "default", "torch.compile's mode (reduce-overhead: CUDA graphs)", choices=COMPILE_MODES
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
class ProfileConfig:
    enabled: bool = option(False, "a torch.profiler trace of a few steps")
    wait: int = option(5, "profiler schedule: steps skipped first", **NON_NEGATIVE)
    warmup: int = option(2, "profiler schedule: steps traced but discarded", **NON_NEGATIVE)
    active: int = option(3, "profiler schedule: steps recorded", **POSITIVE)
    record_shapes: bool = option(False, "record operator shapes (the roofline table needs them)")
    profile_memory: bool = option(False, "record allocations in the trace")
    with_stack: bool = option(False, "record Python stacks in the trace")
    breakdown: bool = option(False, "per-phase CUDA-event timing; costs syncs, so off by default")
    nvtx: bool = option(False, "NVTX ranges around each step phase, for an Nsight Systems capture")
    memory_snapshot: bool = option(False, "write a torch.cuda.memory._record_memory_history pickle")
    peak: str = option("table", "where MFU's peak FLOP/s comes from", choices=PEAKS)


@dataclass
class EnergyConfig:
    sample: bool = option(True, "sample NVML (GPU) / RAPL (CPU) power over the steady window")
    interval_ms: float = option(
        100.0, "milliseconds between power and clock samples", above=0, at_most=60_000
    )


@dataclass
class CostConfig:
    gpu_hour_usd: str = option(
        "", "USD per GPU-hour: a number, 'list' (profiling/energy.py), or empty for none"
    )


@dataclass
class CheckpointConfig:
    interval: int = option(0, "steps between checkpoints; 0: none", **NON_NEGATIVE)
    keep: int = option(2, "checkpoints kept", **POSITIVE)
    resume: str = option("none", "auto: continue from the newest checkpoint", choices=RESUMES)
    dir: str = option("checkpoints", "folder for checkpoints, under output_dir")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    cost: CostConfig = field(default_factory=CostConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @property
    def seq_len(self) -> int:
        return self.data.sequence_length

    @property
    def max_seq_len(self) -> int:
        return self.model.max_seq_len or self.data.sequence_length

    def hash(self) -> str:
        """The configuration: what it computes, not where it writes, how it shows, its name, or
        which seed and repeat of the configuration it is (`identity` adds those two)."""
        d = self.to_dict()
        for section, key in IDENTITY_EXCLUDED:
            d[section].pop(key, None)
        defaults = RunConfig().to_dict()
        for section, key in IDENTITY_ADDED:
            if d[section][key] == defaults[section][key]:
                del d[section][key]
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def identity(self) -> tuple[str, str, str]:
        """The run: its configuration's hash, seed and repeat (the results row's `config_hash`,
        `seed` and `repeat`, as `lmprof.identity.run_key` reads them back)."""
        return (self.hash(), str(self.training.seed), str(self.logging.repeat))


IDENTITY_EXCLUDED = (
    ("logging", "run_name"),
    ("logging", "repeat"),
    ("logging", "fresh_name"),
    ("logging", "attempt"),
    ("training", "seed"),
    ("logging", "output_dir"),
    ("logging", "progress"),
    ("logging", "tensorboard"),
    ("logging", "wandb"),
    ("logging", "wandb_project"),
    ("logging", "mlflow"),
    ("logging", "mlflow_uri"),
    ("logging", "mlflow_experiment"),
    ("data", "cache_dir"),
    ("system", "timeout_s"),
    ("system", "memory_limit_gb"),
    ("checkpoint", "dir"),
    ("checkpoint", "resume"),
    ("energy", "sample"),
    ("energy", "interval_ms"),
    ("cost", "gpu_hour_usd"),
    ("model", "ffn_multiple_of"),  # read only to resolve d_ff=0, which build_config does
)
# Fields added after results were written: at their defaults they stay out of the identity, so
# a config written before them keeps its hash, and a rerun of its sweep its resume.
IDENTITY_ADDED = (
    ("model", "n_kv_heads"),
    ("model", "norm_type"),
    ("model", "rope_theta"),
    ("model", "loss"),
)

SECTIONS: dict[str, type] = {f.name: f.type for f in fields(RunConfig)}  # type: ignore[misc]
_SECTION_TYPES = {
    "model": ModelConfig,
    "data": DataConfig,
    "training": TrainingConfig,
    "system": SystemConfig,
    "logging": LoggingConfig,
    "profile": ProfileConfig,
    "checkpoint": CheckpointConfig,
    "energy": EnergyConfig,
    "cost": CostConfig,
}
DOTTED_KEYS: dict[str, Any] = {
    f"{s}.{f.name}": f for s, t in _SECTION_TYPES.items() for f in fields(t)
}


def _unique_leaves() -> dict[str, str]:
    seen: dict[str, list[str]] = {}
    for dotted in DOTTED_KEYS:
        seen.setdefault(dotted.split(".", 1)[1], []).append(dotted)
    return {leaf: paths[0] for leaf, paths in seen.items() if len(paths) == 1}


LEAF_KEYS = _unique_leaves()

# The seed assignment's flat names. A value is a dotted key, or a function of the value that
# returns (dotted key, value) pairs.
_SEED_PREFIX = "model_config."


def _bool_alias(target: str, on: Any, off: Any):
    def expand(value: Any) -> list[tuple[str, Any]]:
        flag = _coerce_bool(value, target)
        return [(target, on if flag else off)]

    return expand


def _model_type(value: Any) -> list[tuple[str, Any]]:
    if value != "vanilla_transformer":
        raise ConfigError("model_type", value, "the only model type is 'vanilla_transformer'")
    # The seed's model: nn.TransformerEncoderLayer (post-norm), sinusoidal positions, an
    # explicit causal mask, ReLU. Keys after model_type can change any of these. Its
    # nn.MultiheadAttention hands that mask to SDPA (`sdpa_mask`); `vanilla` is the textbook
    # attention with the T x T scores in memory.
    return [
        ("model.attention", "sdpa_mask"),
        ("model.norm", "post"),
        ("model.pos_encoding", "sinusoidal"),
        ("model.activation", "relu"),
    ]


def _dataset_name(value: Any) -> list[tuple[str, Any]]:
    return [("data.source", "hf"), ("data.hf_dataset", value)]


SEED_ALIASES: dict[str, Any] = {
    "fp16": _bool_alias("system.precision", "fp16", "fp32"),
    "bf16": _bool_alias("system.precision", "bf16", "fp32"),
    "use_flash_attention": _bool_alias("model.attention", "flash", "sdpa_mask"),
    "gradient_checkpointing": "system.gradient_checkpointing",
    "sequence_length": "data.sequence_length",
    "model_config.d_model": "model.d_model",
    "model_config.nhead": "model.n_heads",
    "model_config.num_layers": "model.n_layers",
    "model_config.dim_feedforward": "model.d_ff",
    "model_config.dropout": "model.dropout",
    "nhead": "model.n_heads",
    "num_layers": "model.n_layers",
    "dim_feedforward": "model.d_ff",
    "learning_rate": "training.lr",
    "lr_scheduler": "training.schedule",
    "num_warmup_steps": "training.warmup_steps",
    "weight_decay": "training.weight_decay",
    "max_steps": "training.max_steps",
    "logging_steps": "logging.logging_steps",
    "seed": "training.seed",
    "max_grad_norm": "training.max_grad_norm",
    "batch_size": "training.batch_size",
    "gradient_accumulation_steps": "training.grad_accum_steps",
    "run_name": "logging.run_name",
    "tag": "logging.tag",
    "num_gpus": "system.num_gpus",
    "model_type": _model_type,
    "tokenizer_name": "data.tokenizer",
    "dataset_name": _dataset_name,
    "dataset_config": "data.hf_config",
    "debug_flash": "logging.debug_flash",
}

ALL_KEYS = sorted(set(DOTTED_KEYS) | set(LEAF_KEYS) | set(SEED_ALIASES))


# ---------------------------------------------------------------------------------------------
# Coercion: YAML 1.1 reads `3e-4` as a string and command lines give strings, so numbers written
# as text are accepted; anything else of the wrong type is an error naming the key.


def _coerce_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "true",
        "yes",
        "on",
        "1",
        "false",
        "no",
        "off",
        "0",
    ):
        return value.lower() in ("true", "yes", "on", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(key, value, "expected true or false")


def _coerce(value: Any, ftype: Any, key: str) -> Any:
    ftype = ftype if isinstance(ftype, str) else getattr(ftype, "__name__", str(ftype))
    if ftype == "bool":
        return _coerce_bool(value, key)
    if ftype == "int":
        if isinstance(value, bool):
            raise ConfigError(key, value, "expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                pass
            else:
                if f.is_integer():
                    return int(f)
        raise ConfigError(key, value, "expected an integer")
    if ftype == "float":
        if isinstance(value, bool):
            raise ConfigError(key, value, "expected a number")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(key, value, "expected a number")
    if ftype == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, bool | int | float) and key == "system.gradient_checkpointing":
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(key, value, "expected a string")
    raise AssertionError(f"unhandled field type {ftype}")


# ---------------------------------------------------------------------------------------------
# Flattening and alias resolution


def _flatten(raw: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"{prefix}{key}", value, "config keys must be strings")
        dotted = f"{prefix}{key}"
        is_container = dotted in _SECTION_TYPES or dotted == "model_config"
        if isinstance(value, Mapping) and (is_container or dotted not in _known_keys_set()):
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def _known_keys_set() -> set[str]:
    return set(ALL_KEYS)


def _closest(key: str) -> str:
    match = difflib.get_close_matches(key, ALL_KEYS, n=1, cutoff=0.5)
    leaf = key.rsplit(".", 1)[-1]
    if not match:
        match = difflib.get_close_matches(leaf, ALL_KEYS, n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else "see `lmprof run --help-config` for the keys"


def expand_key(key: str, value: Any) -> list[tuple[str, Any]]:
    """Translate one user key into (dotted key, value) pairs of the schema."""
    if key in DOTTED_KEYS:
        return [(key, value)]
    alias = SEED_ALIASES.get(key)
    if alias is None and key.startswith(_SEED_PREFIX):
        alias = SEED_ALIASES.get(key[len(_SEED_PREFIX) :])
    if alias is not None:
        return alias(value) if callable(alias) else [(alias, value)]
    if key in LEAF_KEYS:
        return [(LEAF_KEYS[key], value)]
    raise ConfigError(key, value, f"unknown key; {_closest(key)}")


def _set(cfg: RunConfig, dotted: str, value: Any) -> None:
    section, name = dotted.split(".", 1)
    f = DOTTED_KEYS[dotted]
    value = _coerce(value, f.type, dotted)
    if dotted == "system.gradient_checkpointing":
        value = _checkpointing_mode(value)
    setattr(getattr(cfg, section), name, value)


def _checkpointing_mode(value: Any) -> str:
    if isinstance(value, bool):
        return "full" if value else "none"
    text = str(value).lower()
    if text in ("true", "yes", "on", "1"):
        return "full"
    if text in ("false", "no", "off", "0"):
        return "none"
    return text


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from a command line; the value is read as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"override '{text}' has an empty key")
    from lmprof.yamlio import parse

    try:
        value = parse(raw, f"override '{key}'") if raw.strip() else ""
    except UserError:  # not YAML: the text itself (a run name, a path)
        value = raw
    return key, value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, or one clear error (the checks: lmprof.yamlio)."""
    from lmprof.yamlio import load_mapping

    return load_mapping(path, "config file")


def build_config(
    *layers: Mapping[str, Any], overrides: Sequence[str] = (), run: str | None = None
) -> RunConfig:
    """Apply mappings in order over the defaults, then `key=value` overrides, then validate."""
    cfg = RunConfig()
    set_at: dict[str, int] = {}  # dotted key -> the layer (1, 2, ...) that set it last
    try:
        for n, layer in enumerate(layers, 1):
            for key, value in _flatten(layer):
                for dotted, v in expand_key(key, value):
                    _set(cfg, dotted, v)
                    set_at[dotted] = n
        for n, text in enumerate(overrides, len(layers) + 1):
            key, value = parse_override(text)
            if isinstance(value, Mapping):
                items = list(_flatten(value, key + "."))
            else:
                items = [(key, value)]
            for k, v in items:
                for dotted, vv in expand_key(k, v):
                    _set(cfg, dotted, vv)
                    set_at[dotted] = n
        _unread_source_keys(cfg, set_at)
        validate(cfg)
    except ConfigError as exc:
        if run and not exc.run:
            raise ConfigError(exc.key, exc.value, exc.allowed, run=run) from None
        raise
    cfg.model.d_ff = cfg.model.ffn_hidden()  # d_ff=0 becomes the width it stands for
    if not cfg.logging.run_name:
        cfg.logging.run_name = default_run_name(cfg)
    return cfg


def _unread_source_keys(cfg: RunConfig, set_at: Mapping[str, int]) -> None:
    """A data key that data.source does not read (Spec.read_by) is refused, one line, when it
    was given with or after the source's choice: the user meant it and it would be ignored. A
    source chosen by a later layer (an override switching the seed's WikiText config to
    `data.source=synthetic`) replaces the earlier source's keys: they return to their defaults,
    so the saved config and the hash record only what the run reads."""
    source, chosen_at = cfg.data.source, set_at.get("data.source", 0)
    defaults = DataConfig()
    for f in fields(DataConfig):
        dotted = f"data.{f.name}"
        read_by = spec(dotted).read_by
        value, default = getattr(cfg.data, f.name), getattr(defaults, f.name)
        if read_by is None or source in read_by or value == default:
            continue
        if set_at.get(dotted, 0) < chosen_at:
            setattr(cfg.data, f.name, default)
            continue
        sources = " or ".join(f"data.source={r}" for r in read_by)
        raise ConfigError(
            dotted,
            value,
            f"is read by {sources} only, and data.source is {source}: set data.source "
            f"or remove {dotted}",
        )


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    layers = [load_yaml(path)] if path else []
    if layers and "experiments" in layers[0]:
        raise UserError(
            f"'{path}' is a sweep file (it has 'experiments'); run it with `lmprof sweep {path}`"
        )
    return build_config(*layers, overrides=overrides)


def from_dict(d: Mapping[str, Any]) -> RunConfig:
    """Rebuild a resolved config saved by `to_dict` (no aliases needed, still validated). A
    config saved before unread data keys were refused may hold some: its source, applied as the
    last layer, drops them (see _unread_source_keys)."""
    source = (d.get("data") or {}).get("source")
    return build_config(d, {"data": {"source": source}} if source else {})


def default_run_name(cfg: RunConfig) -> str:
    m, s = cfg.model, cfg.system
    name = (
        f"L{m.n_layers}_d{m.d_model}_T{cfg.seq_len}_B{cfg.training.batch_size}"
        f"_{s.precision}_{m.attention}"
    )
    if s.gradient_checkpointing != "none":
        name += f"_ckpt{s.gradient_checkpointing}"
    if s.compile:
        name += "_compile" if s.compile_mode == "default" else f"_compile_{s.compile_mode}"
    return name


# ---------------------------------------------------------------------------------------------
# Validation: everything that can be checked without a device. What depends on the machine
# (fp16 without a GPU, too few GPUs) is `check_environment`, so sweeps can plan for other hosts.

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
# Text values become file names, paths, CSV cells and log lines: C0/C1 control characters
# (NUL, a newline, an escape sequence) and lone surrogates (unencodable) are refused.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def run_name_problem(name: str) -> str | None:
    """Why `name` cannot be a run's file name (RUN_NAME_RULE), or None."""
    if len(name) > RUN_NAME_MAX or not _RUN_NAME.match(name) or _DEVICE_NAMES.match(name):
        return RUN_NAME_RULE
    return None


def _get(cfg: RunConfig, dotted: str) -> Any:
    section, name = dotted.split(".", 1)
    return getattr(getattr(cfg, section), name)


def spec(dotted: str) -> Spec:
    """The meaning and rules of a dotted key."""
    return DOTTED_KEYS[dotted].metadata["spec"]


def _check_field(dotted: str, value: Any) -> None:
    s = spec(dotted)
    if s.choices is not None:
        if value not in s.choices:
            raise ConfigError(dotted, value, "allowed: " + s.allowed())
        return
    if isinstance(value, str):
        bad = _CONTROL.search(value)
        if bad:
            raise ConfigError(
                dotted,
                value,
                f"holds the character U+{ord(bad.group()):04X}: control characters and lone "
                "surrogates are not allowed in text",
            )
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(dotted, value, "must be a finite number" + _also(s))
    if isinstance(value, int) and s.at_most is None and s.below is None and value > INT_CEILING:
        raise ConfigError(dotted, value, f"must be at most {INT_CEILING} (2**62)")
    bad = (
        (s.above is not None and not value > s.above)
        or (s.at_least is not None and not value >= s.at_least)
        or (s.below is not None and not value < s.below)
        or (s.at_most is not None and not value <= s.at_most)
    )
    if bad:
        raise ConfigError(dotted, value, "must be " + s.allowed())


def _also(s: Spec) -> str:
    allowed = s.allowed()
    return f" ({allowed})" if allowed else ""


def validate(cfg: RunConfig) -> None:
    """Every field against its own rules, then the rules that tie fields together."""
    for dotted in DOTTED_KEYS:
        _check_field(dotted, _get(cfg, dotted))
    m = cfg.model
    if m.d_model % m.n_heads:
        raise ConfigError("model.n_heads", m.n_heads, f"must divide model.d_model={m.d_model}")
    if m.n_kv_heads and m.n_heads % m.n_kv_heads:
        raise ConfigError(
            "model.n_kv_heads", m.n_kv_heads, f"must divide model.n_heads={m.n_heads}"
        )
    d_head = m.d_model // m.n_heads
    if m.pos_encoding == "rope" and d_head % 2:
        raise ConfigError(
            "model.pos_encoding",
            "rope",
            f"rotates pairs of dimensions: d_model/n_heads={d_head} must be even",
        )
    if m.max_seq_len and m.max_seq_len < cfg.seq_len:
        raise ConfigError(
            "model.max_seq_len", m.max_seq_len, f"must be >= data.sequence_length={cfg.seq_len}"
        )
    if cfg.data.source == "text" and not cfg.data.path:
        raise ConfigError("data.path", "", "data.source=text needs data.path (files or folders)")
    d = cfg.data
    if d.tokenizer == "file" and not d.tokenizer_path:
        raise ConfigError(
            "data.tokenizer_path", "", "tokenizer=file needs a tokenizer.json or a vocab folder"
        )
    if d.tokenizer_path and d.tokenizer not in ("file", "gpt2"):
        raise ConfigError(
            "data.tokenizer_path",
            d.tokenizer_path,
            f"is read by tokenizer=file or gpt2, not {d.tokenizer}",
        )
    if d.streaming and d.tokenizer in ("char", "bpe"):
        raise ConfigError(
            "data.streaming",
            True,
            f"a stream cannot train tokenizer={d.tokenizer}: use byte, gpt2 or file",
        )
    if cfg.data.tokenizer == "bpe" and cfg.data.vocab_size < 257:
        raise ConfigError("data.vocab_size", cfg.data.vocab_size, "bpe needs at least 257")
    if cfg.system.compile_mode in CUDAGRAPH_MODES and cfg.training.grad_accum_steps > 1:
        raise ConfigError(
            "system.compile_mode",
            cfg.system.compile_mode,
            "CUDA graphs reuse their buffers across micro-steps: use grad_accum_steps=1 or "
            "compile_mode default / max-autotune-no-cudagraphs",
        )
    if m.loss_chunk_size and not losses.LOSSES[m.loss].chunks:
        chunked = [n for n, cls in losses.LOSSES.items() if cls.chunks]
        raise ConfigError(
            "model.loss_chunk_size",
            m.loss_chunk_size,
            f"loss {m.loss} is not chunked: set it to 0 or use loss {' or '.join(chunked)}",
        )
    kernel = attention_kernels.kernel(m.attention)
    if 0 < m.n_kv_heads < m.n_heads and kernel.gqa is None:
        others = attention_kernels.names_where(lambda k: k.gqa is not None)
        raise ConfigError(
            "model.attention",
            m.attention,
            f"has no grouped-query attention (n_kv_heads < n_heads): use "
            f"{attention_kernels.or_list(others)}",
        )
    if not kernel.dropout and m.dropout > 0:
        raise ConfigError(
            "model.dropout", m.dropout, f"attention '{kernel.name}' has no dropout: set it to 0"
        )
    prec = cfg.system.precision
    if not attention_kernels.runs_in(kernel, prec):
        others = attention_kernels.names_where(lambda k: attention_kernels.runs_in(k, prec))
        raise ConfigError(
            "model.attention",
            m.attention,
            f"the {m.attention} kernels need precision {attention_kernels.or_list(kernel.precisions)}"
            f" (use {attention_kernels.or_list(others)} in {prec})",
        )
    name = cfg.logging.run_name
    problem = run_name_problem(name) if name else None
    if problem:
        raise ConfigError("logging.run_name", name, problem)
    _validate_energy(cfg)
    # warmup_steps > max_steps is allowed: the seed's batch-size sweeps run 50 steps under its
    # 500-step warmup (the lr just never reaches its peak), and its config must load unchanged;
    # warmup_warning says so in one line.


def warmup_warning(cfg: RunConfig) -> str | None:
    """A legal config that likely does not do what its author meant: the warm-up is as long as
    the run, so the learning rate never reaches training.lr (a warning, not an error)."""
    t = cfg.training
    if t.warmup_steps and t.warmup_steps >= t.max_steps:
        return (
            f"training.warmup_steps={t.warmup_steps} >= training.max_steps={t.max_steps}: "
            f"the learning rate never reaches its peak {t.lr:g}"
        )
    return None


def _validate_energy(cfg: RunConfig) -> None:
    usd = cfg.cost.gpu_hour_usd.strip()
    if usd and usd != "list":
        try:
            ok = float(usd) > 0
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(
                "cost.gpu_hour_usd", usd, "a positive USD per GPU-hour, 'list', or empty"
            )


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from lmprof.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def describe_keys() -> str:
    """The schema as text: every dotted key with its default, allowed values and meaning."""
    defaults = RunConfig().to_dict()
    lines, section_seen = [], ""
    for dotted in DOTTED_KEYS:
        section, name = dotted.split(".", 1)
        if section != section_seen:
            lines.append(f"{section}:" if not lines else f"\n{section}:")
            section_seen = section
        s = spec(dotted)
        allowed = s.allowed()
        lines.append(
            f"  {dotted} = {defaults[section][name]!r}" + (f"  [{allowed}]" if allowed else "")
        )
        lines.append(f"      {s.help}")
    lines.append("")
    lines.append("Seed aliases: " + ", ".join(sorted(SEED_ALIASES)))
    return "\n".join(lines)
