"""Data: sources (stdlib, text, hf, synthetic), tokenizers (byte, char, bpe, gpt2), the token
cache under data.cache_dir, batching (packed windows: shifted, random or fixed grid; padded
documents) and rank sharding.

    data = build_data(cfg, log=print)
    for batch in data.train_batches(16, rank=0, world_size=1, seed=42, start_step=0): ...
    for batch in data.val_batches(16): ...
"""

from lmprof.data.batching import IGNORE_INDEX, Batch
from lmprof.data.datamodule import DataModule, build_data
from lmprof.data.tokenizers import Tokenizer

__all__ = ["IGNORE_INDEX", "Batch", "DataModule", "Tokenizer", "build_data"]
