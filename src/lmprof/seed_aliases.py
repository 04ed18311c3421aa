"""The seed assignment's flat config names (`fp16`, `nhead`, `learning_rate`, ...), so a config
written for the seed loads unchanged. A name maps to a dotted key of the schema, or to a function
of the value that returns (dotted key, value) pairs; `lmprof.config.expand_key` reads them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmprof.config_fields import coerce_bool
from lmprof.errors import ConfigError

# The seed nests its model keys under `model_config:`; `model_config.nhead` is `nhead`.
SEED_PREFIX = "model_config."


def _bool_alias(target: str, on: Any, off: Any) -> Callable[[Any], list[tuple[str, Any]]]:
    def expand(value: Any) -> list[tuple[str, Any]]:
        flag = coerce_bool(value, target)
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


def seed_alias(key: str) -> Any:
    """The alias of a seed key (a dotted key or an expander), or None."""
    alias = SEED_ALIASES.get(key)
    if alias is None and key.startswith(SEED_PREFIX):
        alias = SEED_ALIASES.get(key[len(SEED_PREFIX) :])
    return alias
