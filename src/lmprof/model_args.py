"""The model's hyper-parameters: the run config's `model` section plus what the run adds (the
tokenizer's vocabulary, the checkpointing mode, the precision). No torch import, so the memory
model and `lmprof estimate` can use them in a fraction of a second."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lmprof.config import ModelConfig, option
from lmprof.precision import PRECISIONS


@dataclass(kw_only=True)
class ModelArgs(ModelConfig):
    vocab_size: int = option(0, "the tokenizer's, PAD included; padded to vocab_multiple")
    # The config's 0 means "the data's sequence length"; a model built on its own has no data,
    # so it needs a length of its own.
    max_seq_len: int = option(256, "rows of the position table")
    checkpointing: str = option("none", "none | full | selective")
    # attention=auto picks its kernel by the run's precision when the model is built.
    precision: str = option("fp32", "the run's precision (system.precision)")
    residual_stream: str = option("fp32", "fp32 | compute (system.residual_stream)")

    def __post_init__(self) -> None:
        if self.vocab_size <= 0:
            raise ValueError("ModelArgs needs vocab_size > 0")
        if self.d_model % self.n_heads or self.n_heads % self.kv_heads:
            raise ValueError(
                f"ModelArgs needs n_heads | d_model and n_kv_heads | n_heads, got d_model "
                f"{self.d_model}, n_heads {self.n_heads}, n_kv_heads {self.n_kv_heads}"
            )
        self.d_ff = self.ffn_hidden()  # a config's d_ff is resolved already; direct callers' not

    @property
    def stream_dtype(self) -> str:
        """The residual stream's torch dtype name: the autocast dtype with residual_stream
        compute, else fp32 (the embedding's output, to which every residual add promotes)."""
        p = PRECISIONS[self.precision]
        return p.dtype if self.residual_stream == "compute" else "float32"

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads: n_kv_heads, or n_heads (multi-head attention) for 0."""
        return self.n_kv_heads or self.n_heads

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @classmethod
    def from_config(cls, cfg: Any, vocab_size: int) -> ModelArgs:
        fields = {f.name: getattr(cfg.model, f.name) for f in dataclasses.fields(ModelConfig)}
        fields["max_seq_len"] = cfg.max_seq_len
        return cls(
            **fields,
            vocab_size=vocab_size,
            checkpointing=cfg.system.gradient_checkpointing,
            precision=cfg.system.precision,
            residual_stream=cfg.system.residual_stream,
        )
