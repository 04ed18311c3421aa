"""The model's hyper-parameters, derived from the run config: no torch import, so the memory
model and `lmprof estimate` can use them in a fraction of a second."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ModelArgs:
    vocab_size: int  # the tokenizer's, PAD included; padded up to vocab_multiple for the matmuls
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 1024
    dropout: float = 0.1
    max_seq_len: int = 256
    norm: str = "pre"
    pos_encoding: str = "learned"
    tie_embeddings: bool = True
    bias: bool = True
    activation: str = "gelu"
    attention: str = "sdpa"
    vocab_multiple: int = 64
    loss_chunk_size: int = 0
    checkpointing: str = "none"  # none | full | selective
    # The run's precision: attention=auto picks its kernel by it when the model is built.
    precision: str = "fp32"

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @classmethod
    def from_config(cls, cfg: Any, vocab_size: int) -> ModelArgs:
        m = cfg.model
        return cls(
            vocab_size=vocab_size,
            d_model=m.d_model,
            n_heads=m.n_heads,
            n_layers=m.n_layers,
            d_ff=m.d_ff,
            dropout=m.dropout,
            max_seq_len=cfg.max_seq_len,
            norm=m.norm,
            pos_encoding=m.pos_encoding,
            tie_embeddings=m.tie_embeddings,
            bias=m.bias,
            activation=m.activation,
            attention=m.attention,
            vocab_multiple=m.vocab_multiple,
            loss_chunk_size=m.loss_chunk_size,
            checkpointing=cfg.system.gradient_checkpointing,
            precision=cfg.system.precision,
        )
