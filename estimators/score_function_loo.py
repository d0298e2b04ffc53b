"""Score-function gradient with the leave-one-out baseline over K samples (Kool et al., 2019)."""

from __future__ import annotations

from torch import Tensor

from gradbench.core.autograd import check_estimates, log_prob_sum, per_sample_grad, repeat_params
from gradbench.core.estimator import Hyperparam, register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import has_log_prob


def _check_draws(value: int) -> str | None:
    return None if value >= 2 else (f"draws must be at least 2 (a leave-one-out baseline), "
                                     f"not {value}")


def _evals(problem: Problem, draws: int = 4, **_: object) -> float:
    """draws"""
    return float(draws)


@register_estimator(
    "score-function-loo",
    family="score-function",
    unbiased=True,
    requires=(has_log_prob,),
    hyperparams=(
        Hyperparam("draws", int, 4, "samples per estimate (Kool et al.'s K); each one's "
                   "baseline is the mean of the other draws - 1", _check_draws),
    ),
    evals=_evals,
)
def score_function_loo(problem: Problem, n: int, draws: int = 4) -> dict[str, Tensor]:
    """Score function, leave-one-out baseline: mean over K draws of (f_k - b_k) grad log q(z_k)."""
    if (reason := _check_draws(draws)) is not None:
        raise ValueError(reason)
    K = draws
    params = problem.expand_params(n, requires_grad=True)
    q = problem.distribution(**params)
    z = q.sample((K,))  # [K, n, *sample_shape]: K draws for each of the n estimates
    f = problem.cost(z.flatten(0, 1), repeat_params(params, K)).reshape(K, n)
    # b_k = mean_{j != k} f_j is independent of z_k, so E[b_k grad log q(z_k)] = 0: unbiased.
    # f_k - b_k = K/(K-1) (f_k - mean_j f_j), so (1/K) sum_k (f_k - b_k) s_k is the first term;
    # the second is the cost's direct term averaged over the K draws (0 for f of z alone).
    weights = (f.detach() - f.detach().mean(dim=0, keepdim=True)) / (K - 1)
    surrogate = (weights * log_prob_sum(q, z, keep=2)).sum(dim=0) + f.mean(dim=0)
    return check_estimates(problem, n, per_sample_grad(surrogate, params))
