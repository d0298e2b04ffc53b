"""Pathwise ELBO gradient with the KL in closed form: Kingma & Welling's (2014) L^B estimator.

For a negative ELBO f = -log p(x|z) - log p(z) + log q(z|x) (the NegativeELBO capability),
E_q[f] = -E_q[log p(x|z)] + KL(q || p), so

    g = grad_theta [ -log p(x | z(theta, eps)) + KL(q_theta || p) ],   z = q.rsample()

is unbiased: only the reconstruction term is sampled, the KL is differentiated exactly.
`pathwise` on the same cost differentiates the Monte Carlo KL log q(z) - log p(z) instead
(L^A); `pathwise-stl` keeps the Monte Carlo KL but drops its score term. The decoder's (or a
prior's) parameters, where they are parameters of the problem, get the direct term through
log p(x|z) and the KL as they are.
"""

from __future__ import annotations

from torch import Tensor

from gradbench.core.autograd import check_estimates, per_sample_grad
from gradbench.core.capabilities import NegativeELBO
from gradbench.core.estimator import register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import differentiable_cost, negative_elbo, reparameterizable


@register_estimator(
    "pathwise-analytic-kl",
    family="pathwise",
    unbiased=True,
    requires=(reparameterizable, differentiable_cost, negative_elbo),
    evals=1,
)
def pathwise_analytic_kl(problem: Problem, n: int) -> dict[str, Tensor]:
    """ELBO gradient with the KL in closed form (Kingma & Welling's L^B): pathwise -log p(x|z)."""
    elbo = problem.offers(NegativeELBO)
    assert elbo is not None, "requires guarantees the NegativeELBO capability"
    params = problem.expand_params(n, requires_grad=True)
    z = problem.distribution(**params).rsample()
    surrogate = elbo.kl(params) - elbo.log_likelihood(z, params)
    return check_estimates(problem, n, per_sample_grad(surrogate, params))
