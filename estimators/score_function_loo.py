"""Score-function gradient with the leave-one-out baseline over K samples (Kool et al., 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from bench.problem import Problem
from estimators._autograd import check_estimates, log_prob_sum, per_sample_grad
from estimators.registry import Hyperparam, register_estimator
from estimators.requirements import has_log_prob


def _check_k(value: int) -> str | None:
    return None if value >= 2 else f"K must be at least 2 (a leave-one-out baseline), not {value}"


def _evals(problem: Problem, K: int = 4, **_: object) -> float:
    """K"""
    return float(K)


@register_estimator(
    "score-function-loo",
    family="score-function",
    unbiased=True,
    requires=(has_log_prob,),
    hyperparams=(
        Hyperparam("K", int, 4, "samples per estimate; each one's baseline is the mean of the "
                   "other K-1", _check_k),
    ),
    evals=_evals,
)
def score_function_loo(problem: Problem, n: int, K: int = 4) -> dict[str, Tensor]:
    """Score function, leave-one-out baseline: mean over K draws of (f_k - b_k) grad log q(z_k)."""
    if (reason := _check_k(K)) is not None:
        raise ValueError(reason)
    params = problem.expand_params(n, requires_grad=True)
    q = problem.distribution(**params)
    z = q.sample((K,))  # [K, n, *sample_shape]: K draws for each of the n estimates
    with torch.no_grad():
        f = problem.cost(z.flatten(0, 1)).reshape(K, n)
    # b_k = mean_{j != k} f_j is independent of z_k, so E[b_k grad log q(z_k)] = 0: unbiased.
    # f_k - b_k = K/(K-1) (f_k - mean_j f_j), so (1/K) sum_k (f_k - b_k) s_k is the line below.
    weights = (f - f.mean(dim=0, keepdim=True)) / (K - 1)
    surrogate = (weights * log_prob_sum(q, z, keep=2)).sum(dim=0)
    return check_estimates(problem, n, per_sample_grad(surrogate, params))
