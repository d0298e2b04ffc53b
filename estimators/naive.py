"""The naive mistake: differentiate f(z) of non-reparameterized samples (always zero)."""

from __future__ import annotations

from torch import Tensor

from gradbench.core.autograd import check_estimates, per_sample_grad
from gradbench.core.estimator import register_estimator
from gradbench.core.problem import Problem


@register_estimator("naive", family="naive", unbiased=False, evals=1)
def naive(problem: Problem, n: int) -> dict[str, Tensor]:
    """Negative control: autograd of f(q.sample()), which ignores theta's effect on z (zero)."""
    params = problem.expand_params(n, requires_grad=True)
    # sample() cuts the graph, so f(z) depends on theta only through a direct term of the cost
    # (if any) as far as autograd can see: the sampling part of the gradient is lost, and for a
    # cost of z alone the "gradient" is zero, its bias exactly minus the true gradient.
    z = problem.distribution(**params).sample()
    return check_estimates(problem, n, per_sample_grad(problem.cost(z, params), params))
