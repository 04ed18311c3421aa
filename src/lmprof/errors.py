"""Errors that are the user's to fix: the CLI prints them as one line, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (config, command line, files). Printed as one line."""


class ConfigError(UserError):
    """An invalid config value: names the key, the value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str, run: str | None = None):
        self.key, self.value, self.allowed, self.run = key, value, allowed, run
        where = f"run '{run}': " if run else ""
        shown = repr(value)
        if len(shown) > 120:  # a pasted file in a value: the line stays a line
            n = len(value) if isinstance(value, str) else len(shown)
            shown = f"{shown[:100]}... ({n} characters)"
        super().__init__(f"{where}{key}={shown} is invalid: {allowed}")


class EnvironmentMismatch(UserError):
    """A valid config that this machine cannot run (fp16 without a GPU, too few GPUs, ...).

    Sweeps record such runs as `skipped` with this message instead of stopping.
    """


class OutputError(UserError):
    """A file lmprof must write cannot be: a read-only folder, a full disk, a file where a
    folder belongs, a planted symbolic link. One line naming the path and the reason."""
