"""Score-function (REINFORCE / likelihood-ratio) gradient without a baseline."""

from __future__ import annotations

import torch
from torch import Tensor

from bench.problem import Problem
from estimators._autograd import check_estimates, log_prob_sum, per_sample_grad
from estimators.registry import register_estimator
from estimators.requirements import has_log_prob


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
    z = q.sample()  # no gradient path through z: the score carries all of it
    with torch.no_grad():
        f = problem.cost(z)
    # grad_theta E[f] = E[f(z) grad log q(z)] since grad q = q grad log q.
    surrogate = f * log_prob_sum(q, z)
    return check_estimates(problem, n, per_sample_grad(surrogate, params))
