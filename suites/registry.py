"""The suite registry. A suite is a named grid of problems: settings with default values (the
default grid is their cross product), domain checks, and a builder settings -> Problem.

    @register_suite("gaussian-quadratic", settings=(Setting("mu", float, (0.0, 12.0), "..."), ...))
    def gaussian_quadratic(mu, sigma, k, dim, *, device, dtype) -> Problem: ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from bench.errors import unknown_name
from bench.problem import Problem


@dataclass(frozen=True)
class Setting:
    name: str
    type: type
    default: tuple[Any, ...]
    help: str
    check: Callable[[Any], str | None] | None = None

    def parse(self, text: str) -> Any:
        """Parse one CLI value; raises ValueError with a readable message."""
        try:
            value = self.type(text) if self.type is not int else _parse_int(text)
        except ValueError:
            raise ValueError(f"setting {self.name} takes a {self.type.__name__}, "
                             f"not {text!r}") from None
        return value

    def validate(self, value: Any) -> str | None:
        return self.check(value) if self.check else None


def _parse_int(text: str) -> int:
    number = float(text)
    if not number.is_integer():
        raise ValueError(text)
    return int(number)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    settings: Mapping[str, Setting]
    build: Callable[..., Problem]
    default_samples: int
    check_combination: Callable[..., str | None] | None = None

    def problem(self, settings: Mapping[str, Any], device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float64) -> Problem:
        return self.build(**settings, device=torch.device(device), dtype=dtype)

    def validate(self, settings: Mapping[str, Any]) -> str | None:
        """Why this combination of settings is invalid, or None."""
        for name, value in settings.items():
            reason = self.settings[name].validate(value)
            if reason is not None:
                return f"{name}={value}: {reason}"
        if self.check_combination is not None:
            return self.check_combination(**settings)
        return None


_REGISTRY: dict[str, Suite] = {}


def register_suite(
    name: str,
    *,
    settings: tuple[Setting, ...],
    samples: int = 10_000,
    check_combination: Callable[..., str | None] | None = None,
) -> Callable[[Callable[..., Problem]], Callable[..., Problem]]:
    def decorate(build: Callable[..., Problem]) -> Callable[..., Problem]:
        if name in _REGISTRY:
            raise ValueError(f"suite {name!r} is registered twice")
        doc = (build.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = Suite(
            name=name,
            description=doc[0] if doc else "",
            settings={s.name: s for s in settings},
            build=build,
            default_samples=samples,
            check_combination=check_combination,
        )
        return build

    return decorate


def get_suite(name: str) -> Suite:
    _load_all()
    if name not in _REGISTRY:
        raise unknown_name("suite", name, _REGISTRY)
    return _REGISTRY[name]


def all_suites() -> dict[str, Suite]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def _load_all() -> None:
    import suites  # noqa: F401


# Domain checks shared by suites.
def positive(value: float) -> str | None:
    return None if 0 < value < float("inf") else "must be > 0 and finite"


def finite(value: float) -> str | None:
    return None if abs(value) < float("inf") else "must be finite"


def at_least(bound: int) -> Callable[[int], str | None]:
    def check(value: int) -> str | None:
        return None if value >= bound else f"must be >= {bound}"

    return check
