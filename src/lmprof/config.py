"""The run config: one typed schema, the single source of truth for a run, and its one entry
point (`build_config`, `load_config`, overrides, `--help-config`).

A config comes from YAML and `key=value` overrides. Keys may be dotted (`model.d_model`), a
field's unique leaf name (`d_model`, `precision`), or one of the seed assignment's flat names
(`fp16`, `nhead`, `learning_rate`, ...: seed_aliases.py), so a config written for the seed loads
unchanged. Everything is checked before any work starts; mistakes raise `ConfigError` with one
line.

Each component owns its section and the rules of that section, beside its code:
`model_config.py` (model), `data/config.py` (data), `train/config.py` (training, system,
logging, checkpoint), `profiling/config.py` (profile, energy, cost); a field is declared with
`config_fields.option`. This module assembles them into `RunConfig`, checks every field against
its `Spec`, runs each component's rules and the one rule between components, and re-exports
what callers import from here.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from lmprof.config_fields import (  # noqa: F401  (re-exported)
    INT_CEILING,
    NON_NEGATIVE,
    POSITIVE,
    Spec,
    check_field,
    coerce,
    option,
    spec_of,
)
from lmprof.data.config import (  # noqa: F401  (re-exported)
    BATCHINGS,
    DOCUMENTS,
    HF_ONLY,
    PACKED_BATCHINGS,
    SOURCES,
    TEXT_ONLY,
    TOKENIZERS,
    DataConfig,
    drop_unread_keys,
    validate_data,
)
from lmprof.errors import ConfigError, UserError
from lmprof.model_config import (  # noqa: F401  (re-exported)
    ACTIVATIONS,
    ATTENTIONS,
    LOSSES,
    NORM_TYPES,
    NORMS,
    POS_ENCODINGS,
    ModelConfig,
    validate_model,
)
from lmprof.profiling.config import (  # noqa: F401  (re-exported)
    PEAKS,
    CostConfig,
    EnergyConfig,
    ProfileConfig,
    validate_cost,
)
from lmprof.seed_aliases import SEED_ALIASES, seed_alias
from lmprof.train.config import (  # noqa: F401  (re-exported)
    CHECKPOINTING,
    COMPILE_MODES,
    CUDAGRAPH_MODES,
    DEVICES,
    PARALLELISMS,
    PRECISIONS,
    RESUMES,
    RUN_NAME_MAX,
    RUN_NAME_RULE,
    SCHEDULES,
    CheckpointConfig,
    LoggingConfig,
    SystemConfig,
    TrainingConfig,
    checkpointing_mode,
    run_name_problem,
    validate_logging,
    validate_system,
)


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
    ("logging", "eval_compiled"),
    ("system", "compile_scope"),
    ("system", "residual_stream"),
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

ALL_KEYS = sorted(set(DOTTED_KEYS) | set(LEAF_KEYS) | set(SEED_ALIASES))


# ---------------------------------------------------------------------------------------------
# Flattening and key resolution


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
    alias = seed_alias(key)
    if alias is not None:
        return alias(value) if callable(alias) else [(alias, value)]
    if key in LEAF_KEYS:
        return [(LEAF_KEYS[key], value)]
    raise ConfigError(key, value, f"unknown key; {_closest(key)}")


def _set(cfg: RunConfig, dotted: str, value: Any) -> None:
    section, name = dotted.split(".", 1)
    f = DOTTED_KEYS[dotted]
    value = coerce(value, f.type, dotted)
    if dotted == "system.gradient_checkpointing":
        value = checkpointing_mode(value)
    setattr(getattr(cfg, section), name, value)


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
        drop_unread_keys(cfg.data, set_at)
        validate(cfg)
    except ConfigError as exc:
        if run and not exc.run:
            raise ConfigError(exc.key, exc.value, exc.allowed, run=run) from None
        raise
    cfg.model.d_ff = cfg.model.ffn_hidden()  # d_ff=0 becomes the width it stands for
    if not cfg.logging.run_name:
        cfg.logging.run_name = default_run_name(cfg)
    return cfg


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
    last layer, drops them (see data.config.drop_unread_keys)."""
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
        if s.compile_scope != "model":
            name += f"_{s.compile_scope}"
    if s.residual_stream != "fp32":
        name += f"_stream{s.residual_stream}"
    return name


# ---------------------------------------------------------------------------------------------
# Validation: everything that can be checked without a device. What depends on the machine
# (fp16 without a GPU, too few GPUs) is `check_environment`, so sweeps can plan for other hosts.


def _get(cfg: RunConfig, dotted: str) -> Any:
    section, name = dotted.split(".", 1)
    return getattr(getattr(cfg, section), name)


def spec(dotted: str) -> Spec:
    """The meaning and rules of a dotted key."""
    return spec_of(DOTTED_KEYS[dotted])


def validate(cfg: RunConfig) -> None:
    """Every field against its own rules, then each component's rules, then the one rule
    between components."""
    for dotted, f in DOTTED_KEYS.items():
        check_field(dotted, spec_of(f), _get(cfg, dotted))
    validate_model(cfg.model, cfg.system.precision)
    validate_data(cfg.data)
    validate_system(cfg.system, cfg.training)
    validate_logging(cfg.logging)
    validate_cost(cfg.cost)
    m = cfg.model
    if cfg.system.residual_stream == "compute" and m.norm != "pre":
        # A post-norm block's norms write the stream, and autocast runs them in fp32.
        raise ConfigError(
            "system.residual_stream",
            "compute",
            f"needs model.norm=pre (this model is {m.norm}-norm): use residual_stream=fp32",
        )
    if m.max_seq_len and m.max_seq_len < cfg.seq_len:
        raise ConfigError(
            "model.max_seq_len", m.max_seq_len, f"must be >= data.sequence_length={cfg.seq_len}"
        )
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
