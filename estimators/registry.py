"""The estimator registry: `@register_estimator(...)` on a function, like torch's `register_kl`.

Every estimator has one signature:

    estimator(problem: Problem, n: int, **hyperparams) -> {param name: Tensor [n, *param.shape]}

Row i of each tensor is the i-th independent gradient estimate. Randomness comes from torch's
default generator of the problem's device, which the runner seeds per chunk; estimators never
seed anything themselves. An estimator with a warm-up (a fitted control variate or surrogate)
also registers `warmup(problem, **hyperparams) -> state`, run once per cell before measurement,
and receives that state as the keyword argument `state`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from bench.errors import unknown_name
from bench.problem import Problem

Estimates = dict[str, Tensor]
EstimatorFn = Callable[..., Estimates]


@dataclass(frozen=True)
class Requirement:
    """A capability an estimator needs: `check` gives None when the problem has it, else why not."""

    name: str
    check: Callable[[Problem], str | None]

    def __call__(self, problem: Problem) -> str | None:
        return self.check(problem)


@dataclass(frozen=True)
class Hyperparam:
    """An estimator hyperparameter: sweepable from the CLI, recorded in its own results column."""

    name: str
    type: type
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None

    def parse(self, text: str) -> Any:
        """Parse a CLI value; raises ValueError with a readable message."""
        if self.type is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{self.name} takes true or false, not {text!r}")
        try:
            return self.type(text)
        except ValueError:
            raise ValueError(f"{self.name} takes a {self.type.__name__}, not {text!r}") from None

    def validate(self, value: Any) -> str | None:
        return self.check(value) if self.check else None


@dataclass(frozen=True)
class Estimator:
    name: str
    fn: EstimatorFn
    family: str
    unbiased: bool
    requires: tuple[Requirement, ...]
    hyperparams: Mapping[str, Hyperparam]
    evals: Callable[..., float]
    warmup: Callable[..., Any] | None = None
    warmup_evals: Callable[..., float] | None = None
    memory: Callable[..., float] | None = None
    description: str = ""
    evals_text: str = ""  # the cost in words, for `bench list`

    def applicability(self, problem: Problem) -> str | None:
        """None when this estimator applies to the problem, else the first reason it does not."""
        for requirement in self.requires:
            reason = requirement(problem)
            if reason is not None:
                return reason
        return None

    def evals_per_estimate(self, problem: Problem, hyperparams: Mapping[str, Any]) -> float:
        """Evaluations of f that one gradient estimate costs (warm-up excluded)."""
        return float(self.evals(problem, **hyperparams))

    def memory_per_estimate(self, problem: Problem, hyperparams: Mapping[str, Any]) -> float:
        """Working memory of one estimate, in multiples of the parameters' size: what the runner
        sizes chunks by. Defaults to the evaluations of f per estimate."""
        if self.memory is None:
            return self.evals_per_estimate(problem, hyperparams)
        return float(self.memory(problem, **hyperparams))

    def warmup_evals_total(self, problem: Problem, hyperparams: Mapping[str, Any]) -> float:
        """Evaluations of f spent once per cell before measurement (0 without a warm-up)."""
        if self.warmup_evals is None:
            return 0.0
        return float(self.warmup_evals(problem, **hyperparams))

    @property
    def applies_to(self) -> str:
        return ", ".join(r.name for r in self.requires) or "any problem"


_REGISTRY: dict[str, Estimator] = {}


def register_estimator(
    name: str,
    *,
    family: str,
    unbiased: bool,
    requires: tuple[Requirement, ...] = (),
    hyperparams: tuple[Hyperparam, ...] = (),
    evals: Callable[..., float] | float = 1,
    warmup: Callable[..., Any] | None = None,
    warmup_evals: Callable[..., float] | None = None,
    memory: Callable[..., float] | float | None = None,
) -> Callable[[EstimatorFn], EstimatorFn]:
    """Register `fn` under `name`. `evals` is the cost in evaluations of f per estimate: a number
    or a function of (problem, **hyperparams). `memory` (same forms) is the working memory of one
    estimate in multiples of the parameters' size, when it differs from `evals` (an estimator
    that computes once per batch and repeats, say)."""

    def decorate(fn: EstimatorFn) -> EstimatorFn:
        if name in _REGISTRY:
            raise ValueError(f"estimator {name!r} is registered twice")
        cost = evals if callable(evals) else (lambda problem, **_: float(evals))
        cost_doc = (getattr(evals, "__doc__", None) or "").strip()
        cost_text = (cost_doc.splitlines()[0] if cost_doc else "depends on the problem"
                     ) if callable(evals) else f"{evals:g}"
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = Estimator(
            name=name,
            fn=fn,
            family=family,
            unbiased=unbiased,
            requires=tuple(requires),
            hyperparams={h.name: h for h in hyperparams},
            evals=cost,
            warmup=warmup,
            warmup_evals=warmup_evals,
            memory=memory if callable(memory) or memory is None
            else (lambda problem, **_: float(memory)),
            description=doc[0] if doc else "",
            evals_text=cost_text,
        )
        return fn

    return decorate


def get_estimator(name: str) -> Estimator:
    _load_all()
    if name not in _REGISTRY:
        raise unknown_name("estimator", name, _REGISTRY)
    return _REGISTRY[name]


def all_estimators() -> dict[str, Estimator]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def _load_all() -> None:
    # Importing the package imports every module in it, and their decorators register them.
    import estimators  # noqa: F401
