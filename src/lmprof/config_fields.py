"""A config field: its meaning and rules (`Spec`, declared with `option`), the one check of a
value against them, and the coercion of text to the field's type. Every component's config
dataclass declares its fields with `option`; `lmprof.config` assembles them into `RunConfig`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from lmprof.errors import ConfigError

# Integers are passed to torch, numpy and the OS; one that does not fit an int64 (or a seed
# that does not fit numpy's uint32) fails deep inside them, so each has a ceiling.
INT_CEILING = 2**62


@dataclass(frozen=True)
class Spec:
    """What a config field means and which values it allows: validation, `--help-config` and
    the docs read this, so a field's rules live next to the field."""

    help: str
    choices: tuple[str, ...] | None = None
    at_least: float | None = None  # value >= at_least
    above: float | None = None  # value > above
    below: float | None = None  # value < below
    at_most: float | None = None  # value <= at_most
    # The data sources that read this key (None: all). Given for another source, the key is
    # refused rather than ignored: `data.path=my.txt` alone would train on the stdlib corpus.
    read_by: tuple[str, ...] | None = None

    def allowed(self) -> str:
        """The rule in words: "positive", "in [0, 1)", or the choices."""
        if self.choices:
            return ", ".join(self.choices)
        low = self.above if self.above is not None else self.at_least
        high = self.below if self.below is not None else self.at_most
        if low is None and high is None:
            return ""
        if high is None:
            if low == 0:
                return "positive" if self.above is not None else "zero or positive"
            return f"{'>' if self.above is not None else '>='} {_num(low)}"
        if low is None:
            return f"{'<' if self.below is not None else '<='} {_num(high)}"
        left = "(" if self.above is not None else "["
        right = ")" if self.below is not None else "]"
        return f"in {left}{_num(low)}, {_num(high)}{right}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def option(default: Any, help: str, **rules: Any) -> Any:
    """A config field with its meaning and rules (see `Spec`)."""
    return field(default=default, metadata={"spec": Spec(help, **rules)})


def spec_of(f: Any) -> Spec:
    """The `Spec` of a dataclass field declared with `option`."""
    return f.metadata["spec"]


POSITIVE = {"above": 0}
NON_NEGATIVE = {"at_least": 0}

# Text values become file names, paths, CSV cells and log lines: C0/C1 control characters
# (NUL, a newline, an escape sequence) and lone surrogates (unencodable) are refused.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def check_field(dotted: str, s: Spec, value: Any) -> None:
    """One value against its field's own rules (choices, text, finiteness, ranges, ceiling)."""
    if s.choices is not None:
        if value not in s.choices:
            raise ConfigError(dotted, value, "allowed: " + s.allowed())
        return
    if isinstance(value, str):
        bad = _CONTROL.search(value)
        if bad:
            raise ConfigError(
                dotted,
                value,
                f"holds the character U+{ord(bad.group()):04X}: control characters and lone "
                "surrogates are not allowed in text",
            )
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(dotted, value, "must be a finite number" + _also(s))
    if isinstance(value, int) and s.at_most is None and s.below is None and value > INT_CEILING:
        raise ConfigError(dotted, value, f"must be at most {INT_CEILING} (2**62)")
    bad = (
        (s.above is not None and not value > s.above)
        or (s.at_least is not None and not value >= s.at_least)
        or (s.below is not None and not value < s.below)
        or (s.at_most is not None and not value <= s.at_most)
    )
    if bad:
        raise ConfigError(dotted, value, "must be " + s.allowed())


def _also(s: Spec) -> str:
    allowed = s.allowed()
    return f" ({allowed})" if allowed else ""


# ---------------------------------------------------------------------------------------------
# Coercion: YAML 1.1 reads `3e-4` as a string and command lines give strings, so numbers written
# as text are accepted; anything else of the wrong type is an error naming the key.


def coerce_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "true",
        "yes",
        "on",
        "1",
        "false",
        "no",
        "off",
        "0",
    ):
        return value.lower() in ("true", "yes", "on", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(key, value, "expected true or false")


def coerce(value: Any, ftype: Any, key: str) -> Any:
    ftype = ftype if isinstance(ftype, str) else getattr(ftype, "__name__", str(ftype))
    if ftype == "bool":
        return coerce_bool(value, key)
    if ftype == "int":
        if isinstance(value, bool):
            raise ConfigError(key, value, "expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                pass
            else:
                if f.is_integer():
                    return int(f)
        raise ConfigError(key, value, "expected an integer")
    if ftype == "float":
        if isinstance(value, bool):
            raise ConfigError(key, value, "expected a number")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(key, value, "expected a number")
    if ftype == "str":
        if isinstance(value, str):
            return value
        # gradient_checkpointing also takes the seed's true/false (train.config reads it).
        if isinstance(value, bool | int | float) and key == "system.gradient_checkpointing":
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(key, value, "expected a string")
    raise AssertionError(f"unhandled field type {ftype}")
