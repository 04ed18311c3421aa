"""Data: sources (stdlib, text, hf, synthetic), tokenizers (byte, char, bpe, gpt2), the token
cache under data.cache_dir, batching (packed windows: shifted, random or fixed grid; padded
documents) and rank sharding; the `data` section of the config (`config.py`).

    data = build_data(cfg, log=print)
    for batch in data.train_batches(16, rank=0, world_size=1, seed=42, start_step=0): ...
    for batch in data.val_batches(16): ...

Names resolve lazily: `lmprof.config` imports `lmprof.data.config` without torch, and without
the pipeline, which imports `lmprof.config` itself.
"""

from __future__ import annotations

from lmprof.lazy import lazy_getattr

_EXPORTS = {
    "IGNORE_INDEX": "batching",
    "Batch": "batching",
    "DataModule": "datamodule",
    "build_data": "datamodule",
    "Tokenizer": "tokenizers",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
