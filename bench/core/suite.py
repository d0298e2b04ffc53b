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

from gradbench.core import plugins, schema
from gradbench.core.capabilities import Capability
from gradbench.core.names import unknown_name
from gradbench.core.params import Param
from gradbench.core.problem import Problem
from gradbench.core.training import Trainer, TrainerFactory

Setting = Param  # one spec class for settings and hyperparameters


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    settings: Mapping[str, Param]
    build: Callable[..., Problem]
    default_samples: int
    version: int = 1
    offers: tuple[type[Capability], ...] = ()
    check_combination: Callable[..., str | None] | None = None
    trainer_factory: TrainerFactory | None = None

    @property
    def trainable(self) -> bool:
        return self.trainer_factory is not None

    def trainer(self, settings: Mapping[str, Any], device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float64) -> Trainer:
        """The suite's Trainer at `settings` (see gradbench.core.training)."""
        if self.trainer_factory is None:
            raise ValueError(f"suite {self.name} cannot be trained (it registers no trainer)")
        reason = self.validate(settings)
        if reason is not None:
            raise ValueError(f"suite {self.name}: {reason}")
        return self.trainer_factory(**settings, device=torch.device(device), dtype=dtype)

    def problem(self, settings: Mapping[str, Any], device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float64) -> Problem:
        """Build the problem at `settings` (validated first; raises ValueError if invalid)."""
        reason = self.validate(settings)
        if reason is not None:
            raise ValueError(f"suite {self.name}: {reason}")
        problem = self.build(**settings, device=torch.device(device), dtype=dtype)
        undeclared = [type(c).__name__ for c in problem.capabilities
                      if not isinstance(c, self.offers)]
        if undeclared:
            raise TypeError(f"suite {self.name} built a problem offering {undeclared}, which "
                            "its register_suite(offers=...) does not declare")
        return problem

    def validate(self, settings: Mapping[str, Any]) -> str | None:
        """Why this combination of settings is invalid, or None."""
        missing = [name for name in self.settings if name not in settings]
        if missing:
            return f"missing settings {', '.join(missing)}"
        for name, value in settings.items():
            if name not in self.settings:
                return str(unknown_name(f"setting of {self.name}", name, self.settings))
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
    settings: tuple[Param, ...],
    samples: int = 10_000,
    version: int = 1,
    offers: tuple[type[Capability], ...] = (),
    check_combination: Callable[..., str | None] | None = None,
    trainer: TrainerFactory | None = None,
) -> Callable[[Callable[..., Problem]], Callable[..., Problem]]:
    """Register a suite builder. `offers`: the capability types its problems may offer (shown by
    `bench list`). `version`: bump it when the problems change (cost, truth, grid meaning), so
    `bench check` reports old baselines as not comparable. `trainer`: for suites `bench train`
    can train, (**settings, device=, dtype=) -> Trainer (gradbench.core.training)."""

    def decorate(build: Callable[..., Problem]) -> Callable[..., Problem]:
        if name in _REGISTRY:
            raise ValueError(f"suite {name!r} is registered twice")
        if not (isinstance(version, int) and version >= 1):
            raise ValueError(f"suite {name!r}: version must be an int >= 1, not {version!r}")
        for spec in settings:
            schema.declare(spec.name, "setting", spec.type, f"suite {name}")
        doc = (build.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = Suite(
            name=name, description=doc[0] if doc else "", settings={s.name: s for s in settings},
            build=build, default_samples=samples, version=version, offers=tuple(offers),
            check_combination=check_combination, trainer_factory=trainer,
        )
        return build

    return decorate


def get_suite(name: str) -> Suite:
    plugins.load_registered()
    if name not in _REGISTRY:
        raise unknown_name("suite", name, _REGISTRY)
    return _REGISTRY[name]


def all_suites() -> dict[str, Suite]:
    plugins.load_registered()
    return dict(sorted(_REGISTRY.items()))
