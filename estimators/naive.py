"""The naive mistake: differentiate f(z) of non-reparameterized samples (always zero)."""

from __future__ import annotations

from torch import Tensor

from bench.problem import Problem
from estimators._autograd import check_estimates, per_sample_grad
from estimators.registry import register_estimator


@register_estimator("naive", family="naive", unbiased=False, evals=1)
def naive(problem: Problem, n: int) -> dict[str, Tensor]:
    """Negative control: autograd of f(q.sample()), which ignores theta's effect on z (zero)."""
    params = problem.expand_params(n, requires_grad=True)
    # sample() cuts the graph, so f(z) does not depend on theta as far as autograd can see and
    # the "gradient" is zero: its bias is exactly minus the true gradient.
    z = problem.distribution(**params).sample()
    return check_estimates(problem, n, per_sample_grad(problem.cost(z), params))
