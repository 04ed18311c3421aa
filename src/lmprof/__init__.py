"""lmprof: train and profile causal Transformer language models."""

__version__ = "0.1.0"
