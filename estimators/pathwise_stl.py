"""Sticking the landing (Roeder, Wu & Duvenaud 2017): the pathwise ELBO gradient without the
score term of log q.

For a negative ELBO f_theta(z) = -log p(x|z) - log p(z) + log q_theta(z|x) with
z = z(theta, eps) reparameterized, the total derivative of log q_theta(z(theta, eps)) is

    d/dtheta log q = (d log q / dz)(dz / dtheta) + (d log q / dtheta at fixed z),

and the last (score) term has mean zero: E_q[grad_theta log q_theta(z)] = grad_theta of
integral q = 0. Dropping it leaves an unbiased estimator,

    g = grad_theta [ -log p(x | z) - log p(z) + log q_{stop(theta)}(z) ],   z = q.rsample(),

whose value at the exact posterior q(z|x) = p(z|x) is zero for every eps: there
log p(x, z) - log q(z|x) = log p(x) does not depend on z, so its z-gradient vanishes and g = 0
exactly: zero variance, where the full pathwise (MC-KL) estimate still carries the score's noise.
Needs the NegativeELBO capability for the pieces (log q is evaluated with the parameters cut
from the graph). Parameters the cost depends on directly (a decoder's) keep their direct term
through log p(x|z) and log p(z).
"""

from __future__ import annotations

from torch import Tensor

from gradbench.core.autograd import check_estimates, detached, per_sample_grad
from gradbench.core.capabilities import NegativeELBO
from gradbench.core.estimator import register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import differentiable_cost, negative_elbo, reparameterizable


@register_estimator(
    "pathwise-stl",
    family="pathwise",
    unbiased=True,
    requires=(reparameterizable, differentiable_cost, negative_elbo),
    evals=1,
)
def pathwise_stl(problem: Problem, n: int) -> dict[str, Tensor]:
    """Sticking the landing (Roeder et al. 2017): pathwise ELBO without log q's score term."""
    elbo = problem.offers(NegativeELBO)
    assert elbo is not None, "requires guarantees the NegativeELBO capability"
    params = problem.expand_params(n, requires_grad=True)
    z = problem.distribution(**params).rsample()
    surrogate = (elbo.log_q(z, detached(params)) - elbo.log_likelihood(z, params)
                 - elbo.log_prior(z, params))
    return check_estimates(problem, n, per_sample_grad(surrogate, params))
