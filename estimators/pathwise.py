"""Pathwise (reparameterization) gradient: differentiate f through z = g(theta, eps)."""

from __future__ import annotations

from torch import Tensor

from bench.problem import Problem
from estimators._autograd import check_estimates, per_sample_grad
from estimators.registry import register_estimator
from estimators.requirements import differentiable_cost, reparameterizable


@register_estimator(
    "pathwise",
    family="pathwise",
    unbiased=True,
    requires=(reparameterizable, differentiable_cost),
    evals=1,
)
def pathwise(problem: Problem, n: int) -> dict[str, Tensor]:
    """Reparameterization gradient: grad_theta f(z(theta, eps)) with z = q.rsample()."""
    params = problem.expand_params(n, requires_grad=True)
    # Per-sample parameters: sample i depends only on row i, so one backward pass gives
    # row i = grad_theta f(z_i), an unbiased estimate when f is differentiable a.e.
    z = problem.distribution(**params).rsample()
    return check_estimates(problem, n, per_sample_grad(problem.cost(z), params))
