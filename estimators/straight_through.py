"""Straight-through gradient (Bengio et al. 2013) for Bernoulli and one-hot categorical q.

Forward the hard draw b ~ q; backward as if db/dprobs were the identity:

    z_st = probs + (b - probs).detach()    (value b, gradient d z_st / d probs = I)
    estimate = d f(z_st) / d theta = (df/dz at b) . (d probs / d theta)

Biased: it treats E[b] = probs as if every draw moved with probs. Bernoulli(probs = p), f = z^2:
the estimate is 2b, so E = 2p, while the true gradient dE[b^2]/dp = dp/dp = 1.
"""

from __future__ import annotations

from torch import Tensor

from gradbench.core.autograd import check_estimates, per_sample_grad
from gradbench.core.estimator import register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import discrete, relaxed_cost


@register_estimator(
    "straight-through",
    family="straight-through",
    unbiased=False,
    requires=(discrete, relaxed_cost),
    evals=1,
)
def straight_through(problem: Problem, n: int) -> dict[str, Tensor]:
    """Straight-through (Bengio et al. 2013): f at the hard draw, backward as if db/dprobs = I."""
    params = problem.expand_params(n, requires_grad=True)
    q = problem.distribution(**params)
    b = q.sample()
    probs = q.probs  # differentiable in the per-sample leaves, whatever the parameterization
    z_st = probs + (b - probs).detach()
    return check_estimates(problem, n, per_sample_grad(problem.cost(z_st, params), params))
