"""lmprof: train and profile causal Transformer language models."""

# First: it reads the process's start time, the origin of a run's end-to-end time.
from lmprof import clock as clock

__version__ = "0.1.0"
