"""Score-function (REINFORCE / likelihood-ratio) gradient without a baseline."""

from __future__ import annotations

from torch import Tensor

from gradbench.core.autograd import check_estimates, log_prob_sum, per_sample_grad
from gradbench.core.estimator import register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import has_log_prob


@register_estimator(
    "score-function",
    family="score-function",
    unbiased=True,
    requires=(has_log_prob,),
    evals=1,
)
def score_function(problem: Problem, n: int) -> dict[str, Tensor]:
    """Score-function estimator f(z) grad log q(z), no baseline."""
    params = problem.expand_params(n, requires_grad=True)
    q = problem.distribution(**params)
    z = q.sample()  # no gradient path through z: the score carries the sampling part
    f = problem.cost(z, params)  # a graph only through a direct dependence on theta, if any
    # grad_theta E[f_theta] = E[f(z) grad log q(z)] + E[grad_theta f_theta(z)], since
    # grad q = q grad log q; the second term is the cost's direct term (0 for f of z alone).
    surrogate = f.detach() * log_prob_sum(q, z) + f
    return check_estimates(problem, n, per_sample_grad(surrogate, params))
