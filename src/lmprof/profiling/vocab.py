"""The vocabulary size a config will train with, known before any data is loaded.

Kept free of numpy and torch: `lmprof estimate` answers without importing either.
"""

from __future__ import annotations

from typing import Any

# Mirrors lmprof/data/tokenizers.py (checked by a test): importing it would import numpy.
BYTE_VOCAB = 258  # 256 bytes, EOS, PAD
GPT2_VOCAB = 50258  # GPT-2's 50257 ids, PAD
CHAR_ASSUMED = 100  # distinct characters assumed for char before its vocabulary exists
# The names a tokenizer file may give its end-of-text token, in order of preference (read by
# lmprof/data/tokenizers.py's file_tokenizer too: this module is its numpy-free home).
EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")


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
    if d.tokenizer == "file":
        n_file = _file_vocab(d.tokenizer_path)
        if n_file:
            return (
                n_file,
                f"tokenizer file {d.tokenizer_path}: its ids + PAD (+ EOS if it has none)",
            )
    n = CHAR_ASSUMED + 3
    return n, (
        f"char tokenizer: unknown until built from the text; assuming {CHAR_ASSUMED} characters "
        f"+ UNK + EOS + PAD = {n} (give --vocab-size)"
    )


def _file_vocab(path: str) -> int:
    """The vocabulary of data.tokenizer_path read as JSON (no tokenizers import), 0 if unreadable;
    the rule (ids, then EOS if missing, then PAD) is lmprof/data/tokenizers.py's file_tokenizer."""
    import json

    from lmprof.errors import UserError
    from lmprof.paths import user_path

    try:
        p = user_path(path, "data.tokenizer_path")
    except UserError:
        return 0
    p = p / "tokenizer.json" if (p / "tokenizer.json").is_file() else p
    try:
        if p.is_dir():
            vocab = json.loads((p / "vocab.json").read_text())
            added: list[dict] = []
        else:
            obj = json.loads(p.read_text())
            vocab, added = obj["model"]["vocab"], obj.get("added_tokens", [])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    tokens = {**vocab, **{a["content"]: a["id"] for a in added}}
    n = max(tokens.values(), default=-1) + 1
    has_eos = any(
        t in tokens for t in ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
    )
    return n + 1 + (0 if has_eos else 1)
