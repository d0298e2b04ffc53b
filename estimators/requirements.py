"""Capabilities estimators declare they need, in the spirit of torch.distributions' has_rsample."""

from __future__ import annotations

from torch.distributions import Bernoulli, Normal, OneHotCategorical

from bench.problem import Problem
from estimators.registry import Requirement


def _reparameterizable(problem: Problem) -> str | None:
    q = problem.q()
    if not q.has_rsample:
        return f"{type(q).__name__} has no reparameterized sampler (has_rsample is False)"
    return None


def _differentiable_cost(problem: Problem) -> str | None:
    if not problem.differentiable_cost:
        return "the cost is not differentiable in z"
    return None


def _gaussian(problem: Problem) -> str | None:
    q = problem.q()
    if not isinstance(q, Normal):
        return f"needs a Gaussian (Normal) distribution, not {type(q).__name__}"
    return None


def _bernoulli(problem: Problem) -> str | None:
    q = problem.q()
    if not isinstance(q, Bernoulli):
        return f"needs a Bernoulli distribution, not {type(q).__name__}"
    return None


def _discrete(problem: Problem) -> str | None:
    q = problem.q()
    if not isinstance(q, Bernoulli | OneHotCategorical):
        return f"needs a Bernoulli or one-hot categorical distribution, not {type(q).__name__}"
    return None


def _has_log_prob(problem: Problem) -> str | None:
    q = problem.q()
    try:
        q.log_prob(q.sample())
    except NotImplementedError:
        return f"{type(q).__name__} has no log_prob"
    return None


reparameterizable = Requirement("reparameterizable", _reparameterizable)
differentiable_cost = Requirement("differentiable cost", _differentiable_cost)
gaussian = Requirement("Gaussian", _gaussian)
bernoulli = Requirement("Bernoulli", _bernoulli)
discrete = Requirement("Bernoulli or categorical", _discrete)
has_log_prob = Requirement("log_prob", _has_log_prob)


def _relaxed_cost(problem: Problem) -> str | None:
    if not problem.cost_accepts_relaxed:
        return "the cost is not defined on the continuous relaxation"
    return None


def _enumerable_support(problem: Problem) -> str | None:
    # Imported here: the enumeration module is only needed by the estimators that enumerate.
    from bench.enumeration import enumeration_refusal

    return enumeration_refusal(problem)


relaxed_cost = Requirement("relaxed cost", _relaxed_cost)
enumerable_support = Requirement("enumerable support", _enumerable_support)
