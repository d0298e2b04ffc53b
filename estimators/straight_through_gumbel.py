"""Straight-through Gumbel-softmax (Jang et al. 2016): hard forward, relaxed backward.

z = th + noise (logistic / Gumbel), b = H(z) (threshold / one-hot argmax), y = relax(z, tau);
f is evaluated at z_st = b + y - y.detach() (value b, gradient dy/dth). Biased: the backward pass
differentiates the relaxation, not E[f(b)].
"""

from __future__ import annotations

from torch import Tensor

from gradbench.core.autograd import check_estimates, per_sample_grad
from gradbench.core.estimator import register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import discrete, relaxed_cost
from gradbench.estimators._relaxations import check_tau, discrete_view, require, tau_hyperparam


@register_estimator(
    "straight-through-gumbel",
    family="straight-through",
    unbiased=False,
    requires=(discrete, relaxed_cost),
    hyperparams=(tau_hyperparam(0.5, "temperature of the relaxation used in the backward pass "
                                "(> 0)"),),
    evals=1,
)
def straight_through_gumbel(problem: Problem, n: int, tau: float = 0.5) -> dict[str, Tensor]:
    """Straight-through Gumbel-softmax: f at the hard draw H(z), backward through relax(z, tau)."""
    require(check_tau(tau))
    params = problem.expand_params(n, requires_grad=True)
    d = discrete_view(problem.distribution(**params))
    z = d.perturb()
    y = d.relax(z, tau)
    z_st = d.hard(z) + y - y.detach()
    return check_estimates(problem, n, per_sample_grad(problem.cost(z_st, params), params))
