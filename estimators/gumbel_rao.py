"""Gumbel-Rao (Paulus et al. 2020): straight-through Gumbel, Rao-Blackwellised over the noise.

The ST-Gumbel estimate is (df/db at b)^T d relax(th + N, tau)/dth, N the noise, b = H(th + N).
Given b, average the Jacobian over N ~ p(N | b): the estimate (df/db)^T E[J | b] has the same
mean as ST-Gumbel (tower rule) and no more variance. E[J | b] is estimated with m conditional
draws N~_j = z~_j - th, z~_j ~ p(z | H(z) = b) (see _relaxations.Discrete.conditional), held fixed
while differentiating relax(th + N~_j, tau), as in the paper's code. f is evaluated once, at b.
"""

from __future__ import annotations

from torch import Tensor

from gradbench.core.autograd import check_estimates, per_sample_grad
from gradbench.core.estimator import Hyperparam, register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import discrete, relaxed_cost
from gradbench.estimators._relaxations import check_tau, discrete_view, require, tau_hyperparam


def _check_m(value: int) -> str | None:
    return None if value >= 1 else f"m must be at least 1 (conditional draws), not {value}"


def _memory(problem: Problem, m: int = 10, **_: object) -> float:
    """the m conditional noise draws and their relaxations, [m, *shape] each, per estimate"""
    return 2.0 * m + 1.0


@register_estimator(
    "gumbel-rao",
    family="straight-through",
    unbiased=False,
    requires=(discrete, relaxed_cost),
    hyperparams=(
        tau_hyperparam(0.5, "temperature of the relaxation used in the backward pass (> 0)"),
        Hyperparam("m", int, 10, "conditional noise draws averaged per estimate (>= 1); "
                   "f is still evaluated once", _check_m),
    ),
    evals=1,
    memory=_memory,
)
def gumbel_rao(problem: Problem, n: int, tau: float = 0.5, m: int = 10) -> dict[str, Tensor]:
    """Gumbel-Rao (Paulus et al. 2020): ST-Gumbel with the backward averaged over m draws z | b."""
    require(check_tau(tau))
    require(_check_m(m))
    params = problem.expand_params(n, requires_grad=True)
    q = problem.distribution(**params)
    d = discrete_view(q)
    b = q.sample()
    # Conditional noise, detached: the Jacobian is taken at fixed noise (E[J | b], not the
    # derivative of the conditional sampler).
    noise = (d.conditional(b, copies=m) - d.logits).detach()  # [m, n, ...]
    y = d.relax(d.logits + noise, tau).mean(0)
    z_st = b + y - y.detach()
    return check_estimates(problem, n, per_sample_grad(problem.cost(z_st, params), params))
