"""The vocabulary size a config will train with, known before any data is loaded.

Kept free of numpy and torch: `lmprof estimate` answers without importing either.
"""

from __future__ import annotations

from typing import Any

# Mirrors lmprof/data/tokenizers.py (checked by a test): importing it would import numpy.
BYTE_VOCAB = 258  # 256 bytes, EOS, PAD
GPT2_VOCAB = 50258  # GPT-2's 50257 ids, PAD
CHAR_ASSUMED = 100  # distinct characters assumed for char before its vocabulary exists


def infer_vocab_size(cfg: Any) -> tuple[int, str]:
    """The model's vocabulary size (PAD included) for `cfg`, and where it came from."""
    d = cfg.data
    if d.source == "synthetic":
        return d.vocab_size, f"synthetic data: data.vocab_size={d.vocab_size}"
    if d.tokenizer == "byte":
        return BYTE_VOCAB, "byte tokenizer: 256 bytes + EOS + PAD"
    if d.tokenizer == "gpt2":
        return GPT2_VOCAB, "gpt2 tokenizer: 50257 ids + PAD"
    if d.tokenizer == "bpe":
        return d.vocab_size, (
            f"bpe tokenizer: data.vocab_size={d.vocab_size} (specials included; a small corpus "
            "can train fewer)"
        )
    n = CHAR_ASSUMED + 3
    return n, (
        f"char tokenizer: unknown until built from the text; assuming {CHAR_ASSUMED} characters "
        f"+ UNK + EOS + PAD = {n} (give --vocab-size)"
    )
