"""Training: one run from a config to its results row."""

from lmprof.train.run import run

__all__ = ["run"]
