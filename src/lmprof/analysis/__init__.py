"""Analysis of a results table: plots, per-tag tables and a self-contained HTML report."""

from lmprof.analysis.core import Analysis, analyze

__all__ = ["Analysis", "analyze"]
