"""One parameter spec for suite settings and estimator hyperparameters: a name, a type, default
value(s), help, a domain check, and one parser, so `--set dim=1e1` and `--set K=1e1` mean the same.

    Param("sigma", float, (0.1, 1.0), "scale of q", positive)   # a setting: a default grid
    Param("tau", float, 0.5, "temperature", check_tau)          # a hyperparameter: one default
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

INT64_MAX = 2**63 - 1
# Decimal or scientific numbers, and inf; no underscores, hex or other Python literal forms, so
# a value reads the same in every tool that later filters the results column.
_NUMBER = re.compile(r"[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf|infinity|nan)",
                     re.IGNORECASE)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
TYPES = (int, float, bool, str)


@dataclass(frozen=True)
class Param:
    """A named, typed, checked value. `default` is one value, or a tuple of values for a suite
    setting's default grid. `check(value)` returns None when valid, else the reason."""

    name: str
    type: type
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise TypeError(f"{self.name}: type must be one of int, float, bool, str, "
                            f"not {self.type!r}")
        if not self.name.isidentifier():
            raise ValueError(f"{self.name!r} is not a valid name: use letters, digits and _")

    @property
    def defaults(self) -> tuple[Any, ...]:
        """The default values as a tuple (a setting's grid, or a hyperparameter's one value)."""
        return tuple(self.default) if isinstance(self.default, tuple) else (self.default,)

    def parse(self, text: str) -> Any:
        """One value from text (the CLI's `--set`); raises ValueError naming the fix."""
        return parse_value(self.name, self.type, text)

    def coerce(self, value: Any) -> Any:
        """A Python value of this spec's type (from an API call): 2 -> 2.0 for a float,
        2.0 -> 2 for an int; strings are parsed."""
        if isinstance(value, str):
            return self.parse(value)
        if self.type is bool:
            if isinstance(value, bool):
                return value
            raise ValueError(f"{self.name} takes true or false, not {value!r}")
        if self.type is str:
            return str(value)
        return self.parse(repr(value) if isinstance(value, float) else str(value))

    def validate(self, value: Any) -> str | None:
        """Why `value` is outside this spec's domain, or None."""
        return self.check(value) if self.check else None


def parse_value(name: str, kind: type, text: str) -> Any:
    """Parse `text` as `kind`, the same way for every setting and hyperparameter."""
    text = text.strip()
    if kind is str:
        return text
    if kind is bool:
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"{name} takes true or false, not {text!r}")
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"{name} takes a {kind.__name__} (e.g. 3, 0.5 or 1e-3), not {text!r}")
    number = float(text)
    if kind is float:
        return number
    if not number.is_integer():
        raise ValueError(f"{name} takes a whole number, not {text!r}")
    # int(text) keeps big integers exact where float(text) would round them.
    value = int(text) if re.fullmatch(r"[+-]?\d+", text) else int(number)
    if abs(value) > INT64_MAX:
        raise ValueError(f"{name}={text} is outside the 64-bit integer range")
    return value


# ---------------------------------------------------------------- shared domain checks


def positive(value: float) -> str | None:
    return None if 0 < value < math.inf else "must be > 0 and finite"


def finite(value: float) -> str | None:
    return None if abs(value) < math.inf else "must be finite"


def at_least(bound: int) -> Callable[[int], str | None]:
    def check(value: int) -> str | None:
        return None if value >= bound else f"must be >= {bound}"

    return check


def between(low: float, high: float) -> Callable[[float], str | None]:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"must be between {low:g} and {high:g}"

    return check


def one_of(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check
