"""REBAR (Tucker et al. 2017): score function with a relaxed, reparameterized control variate.

z = th + noise, b = H(z), z~ ~ p(z | b) reparameterized (_relaxations.Discrete.conditional),
sigma_tau = the relaxation (sigmoid / softmax of z / tau):

    g = [f(b) - eta f(sigma_tau(z~))] grad log p(b) + eta grad f(sigma_tau(z))
        - eta grad f(sigma_tau(z~))

Unbiased for every eta and tau: with c(z) = f(sigma_tau(z)),
  E[grad c(z)] = grad E_z[c(z)]                          (z reparameterized)
               = grad E_b[E_{z|b}[c(z)]]
               = E[c(z~) grad log p(b)] + E[grad c(z~)]  (score term for b, then z~ | b
                                                          reparameterized),
so the eta-terms have mean zero. Three evaluations of f per estimate (b, sigma(z), sigma(z~)),
in one batched call. Bernoulli and one-hot categorical; eta = 0 is the plain score function.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradbench.core.autograd import check_estimates, detached, log_prob_sum, per_sample_grad
from gradbench.core.estimator import Hyperparam, register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import discrete, relaxed_cost
from gradbench.estimators._relaxations import check_tau, discrete_view, require, tau_hyperparam


def _check_eta(value: float) -> str | None:
    return None if math.isfinite(value) else f"eta must be a finite number, not {value}"


@register_estimator(
    "rebar",
    family="relaxed-control-variate",
    unbiased=True,
    requires=(discrete, relaxed_cost),
    hyperparams=(
        tau_hyperparam(0.5, "temperature of the relaxed control variate (> 0; any value is "
                       "unbiased)"),
        Hyperparam("eta", float, 1.0, "scale of the control variate (any finite value is "
                   "unbiased; 0 is the plain score function)", _check_eta),
    ),
    evals=3,
)
def rebar(problem: Problem, n: int, tau: float = 0.5, eta: float = 1.0) -> dict[str, Tensor]:
    """REBAR (Tucker et al. 2017): score function with control variate eta f(relaxed z | b)."""
    require(check_tau(tau))
    require(_check_eta(eta))
    params = problem.expand_params(n, requires_grad=True)
    q = problem.distribution(**params)
    d = discrete_view(q)
    z = d.perturb()
    b = d.hard(z)
    z_cond = d.conditional(b)
    # f(b) with live parameters (its gradient is the cost's direct term, 0 for f of b alone); the
    # control variate's two evaluations with the parameters cut, so it adds no direct term.
    cut = detached(params)
    costs = problem.cost(torch.cat([b, d.relax(z, tau), d.relax(z_cond, tau)]),
                         {k: torch.cat([params[k], cut[k], cut[k]]) for k in params})
    f_b, f_z, f_cond = costs[:n], costs[n:2 * n], costs[2 * n:]
    # Row i's surrogate differentiates to g_i; the score coefficient is a constant.
    surrogate = ((f_b.detach() - eta * f_cond.detach()) * log_prob_sum(q, b) + f_b
                 + eta * (f_z - f_cond))
    return check_estimates(problem, n, per_sample_grad(surrogate, params))
