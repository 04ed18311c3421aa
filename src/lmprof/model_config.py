"""The run config's `model` section and the rules of the model alone: heads, rotary pairs, the
loss's chunking, and what the attention kernel can run (grouped-query heads, dropout, the
precisions it needs; the kernels' table: attention_kernels.py)."""

from __future__ import annotations

from dataclasses import dataclass

from lmprof import attention_kernels
from lmprof.config_fields import NON_NEGATIVE, POSITIVE, option
from lmprof.errors import ConfigError
from lmprof.ops import losses

ATTENTIONS = attention_kernels.NAMES
LOSSES = losses.NAMES
NORMS = ("pre", "post")
NORM_TYPES = ("layernorm", "rmsnorm")
POS_ENCODINGS = ("learned", "sinusoidal", "rope")
ACTIVATIONS = ("gelu", "relu", "swiglu")


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
        "the LM head and cross-entropy (see lmprof/ops/losses.py; pytorch: the reference; quack, "
        "quack_chunked: quack-kernels' CUDA kernels, lmprof[quack])",
        choices=LOSSES,
    )
    loss_chunk_size: int = option(
        0,
        ">0: cross-entropy over this many tokens at a time, no full logits (0: all of them; "
        "quack_chunked: 4096)",
        **NON_NEGATIVE,
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


def validate_model(m: ModelConfig, precision: str) -> None:
    """The rules that tie model fields together, and the attention kernel's: the precision
    (system.precision) is the one outside value it needs."""
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
    if m.loss_chunk_size and not losses.LOSSES[m.loss].chunks:
        chunked = [n for n, cls in losses.LOSSES.items() if cls.chunks]
        raise ConfigError(
            "model.loss_chunk_size",
            m.loss_chunk_size,
            f"loss {m.loss} is not chunked: set it to 0 or use loss {' or '.join(chunked)}",
        )
    multiple = losses.LOSSES[m.loss].chunk_multiple
    if m.loss_chunk_size % multiple:
        raise ConfigError(
            "model.loss_chunk_size",
            m.loss_chunk_size,
            f"loss {m.loss} takes blocks of a multiple of {multiple} tokens (0: its default)",
        )
    _validate_attention(m, precision)


def _validate_attention(m: ModelConfig, precision: str) -> None:
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
    if not attention_kernels.runs_in(kernel, precision):
        others = attention_kernels.names_where(lambda k: attention_kernels.runs_in(k, precision))
        raise ConfigError(
            "model.attention",
            m.attention,
            f"the {m.attention} kernels need precision {attention_kernels.or_list(kernel.precisions)}"
            f" (use {attention_kernels.or_list(others)} in {precision})",
        )
