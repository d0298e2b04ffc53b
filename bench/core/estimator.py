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

from gradbench.core import plugins, schema
from gradbench.core.names import unknown_name
from gradbench.core.params import Param
from gradbench.core.problem import Problem
from gradbench.core.requirements import Requirement

Estimates = dict[str, Tensor]
EstimatorFn = Callable[..., Estimates]
Hyperparam = Param  # one spec class for settings and hyperparameters


@dataclass(frozen=True)
class Estimator:
    name: str
    fn: EstimatorFn
    family: str
    unbiased: bool
    requires: tuple[Requirement, ...]
    hyperparams: Mapping[str, Param]
    evals: Callable[..., float]
    version: int = 1
    warmup: Callable[..., Any] | None = None
    warmup_evals: Callable[..., float] | None = None
    memory: Callable[..., float] | None = None
    description: str = ""
    evals_text: str = ""  # the cost in words, for `bench list`
    # A control variate learned from draws (RELAX's network): judged by its least likely
    # states, which the fit seldom saw (gradbench.core.reliability).
    surrogate: bool = False

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


def _as_function(value: Callable[..., float] | float | None) -> Callable[..., float] | None:
    if value is None or callable(value):
        return value
    return lambda problem, **_: float(value)


def register_estimator(
    name: str,
    *,
    family: str,
    unbiased: bool,
    requires: tuple[Requirement, ...] = (),
    hyperparams: tuple[Param, ...] = (),
    evals: Callable[..., float] | float = 1,
    version: int = 1,
    warmup: Callable[..., Any] | None = None,
    warmup_evals: Callable[..., float] | None = None,
    memory: Callable[..., float] | float | None = None,
    surrogate: bool = False,
) -> Callable[[EstimatorFn], EstimatorFn]:
    """Register `fn` under `name`. `evals` is the cost in evaluations of f per estimate: a number
    or a function of (problem, **hyperparams). `memory` (same forms) is the working memory of one
    estimate in multiples of the parameters' size, when it differs from `evals` (an estimator
    that computes once per batch and repeats, say). `version`: bump it when the estimator's
    output changes, so `bench check` reports old baselines as not comparable. `surrogate`: the
    estimate uses a function learned from draws (a network), whose error at states the fit
    seldom saw nothing bounds; its rows then need every state of q seen often enough."""

    def decorate(fn: EstimatorFn) -> EstimatorFn:
        if name in _REGISTRY:
            raise ValueError(f"estimator {name!r} is registered twice")
        if not (isinstance(version, int) and version >= 1):
            raise ValueError(f"estimator {name!r}: version must be an int >= 1, not {version!r}")
        for spec in hyperparams:
            schema.declare(spec.name, "hyperparameter", spec.type, f"estimator {name}")
        cost_doc = (getattr(evals, "__doc__", None) or "").strip()
        cost_text = (cost_doc.splitlines()[0] if cost_doc else "depends on the problem"
                     ) if callable(evals) else f"{evals:g}"
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = Estimator(
            name=name, fn=fn, family=family, unbiased=unbiased, requires=tuple(requires),
            hyperparams={h.name: h for h in hyperparams}, evals=_as_function(evals),
            version=version, warmup=warmup, warmup_evals=warmup_evals,
            memory=_as_function(memory), description=doc[0] if doc else "",
            evals_text=cost_text, surrogate=surrogate,
        )
        return fn

    return decorate


def get_estimator(name: str) -> Estimator:
    plugins.load_registered()
    if name not in _REGISTRY:
        raise unknown_name("estimator", name, _REGISTRY)
    return _REGISTRY[name]


def all_estimators() -> dict[str, Estimator]:
    plugins.load_registered()
    return dict(sorted(_REGISTRY.items()))
