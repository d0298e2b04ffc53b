"""Pathwise gradient through the inverse CDF: z = F^{-1}(u; theta), u ~ U(0, 1), differentiated
in theta with u held fixed (inverse transform sampling made differentiable).

Closed forms used here (the textbook ones), with E = -log u ~ Exponential(1):

    Exponential(rate):              z = E / rate,                    dz/drate = -z / rate
    Weibull(scale, concentration):  z = scale E^{1/k},               dz/dscale = z / scale,
                                                                     dz/dk = -z log(E) / k^2

Elsewhere `q.icdf(u)` where torch implements it (Normal, Laplace, Cauchy, Uniform, ...): autograd
through it is the same estimator. Distributions without a closed-form inverse CDF (Gamma, Beta,
Dirichlet, ...) are not applicable: the `implicit` estimator differentiates their CDF instead.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import (
    Beta,
    Dirichlet,
    Distribution,
    Exponential,
    Gamma,
    Weibull,
)

from gradbench.core.autograd import check_estimates, per_sample_grad
from gradbench.core.estimator import register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import Requirement, differentiable_cost

# Distributions whose inverse CDF is not closed form but whose CDF the implicit estimator can
# differentiate (named in the reason so the user knows where to go instead).
_IMPLICIT_INSTEAD = (Gamma, Beta, Dirichlet)


def uniform_draws(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
    """u ~ U(0, 1] from torch's default generator: 1 - torch.rand is in (0, 1] (torch.rand is in
    [0, 1)), so -log u is finite."""
    return 1.0 - torch.rand(shape, dtype=dtype, device=device)


def _standard_exponential(u: Tensor) -> Tensor:
    """E = -log u ~ Exponential(1), clamped at the smallest normal number so that E^(1/k) and
    log E stay finite if u == 1 (probability 2^-53 in float64, 2^-24 in float32): the same
    clamp torch's Gamma.rsample applies to its draws."""
    return (-torch.log(u)).clamp_min(torch.finfo(u.dtype).tiny)


def inverse_cdf(q: Distribution, u: Tensor) -> Tensor:
    """z = F^{-1}(u; q's parameters), differentiable in those parameters; u in (0, 1]."""
    if isinstance(q, Exponential):
        return _standard_exponential(u) / q.rate
    if isinstance(q, Weibull):
        return q.scale * _standard_exponential(u).pow(q.concentration.reciprocal())
    return q.icdf(u)


def _closed_form_icdf(problem: Problem) -> str | None:
    q = problem.q()
    if isinstance(q, Exponential | Weibull):
        return None
    name = type(q).__name__
    if isinstance(q, _IMPLICIT_INSTEAD):
        return (f"{name} has no closed-form inverse CDF; use implicit (implicit "
                "reparameterization differentiates the CDF instead)")
    if q.support.is_discrete:
        return (f"{name} is discrete: F^-1(u; theta) is piecewise constant in theta, so its "
                "derivative is 0 almost everywhere")
    if q.event_shape != ():
        return f"{name} is multivariate: an inverse CDF needs a univariate distribution"
    try:
        # u is interior so any icdf with a closed form is finite there.
        q.icdf(torch.full(q.batch_shape, 0.5, dtype=problem.dtype, device=problem.device))
    except NotImplementedError:
        return f"{name} has no closed-form inverse CDF (torch implements no icdf for it)"
    return None


closed_form_icdf = Requirement("closed-form inverse CDF", _closed_form_icdf)


@register_estimator(
    "inverse-cdf",
    family="pathwise",
    unbiased=True,
    requires=(closed_form_icdf, differentiable_cost),
    evals=1,
)
def inverse_cdf_estimator(problem: Problem, n: int) -> dict[str, Tensor]:
    """Pathwise through the inverse CDF: grad_theta f(F^{-1}(u; theta)), u ~ U(0, 1) fixed."""
    params = problem.expand_params(n, requires_grad=True)
    q = problem.distribution(**params)
    # Per-sample parameter rows: z_i depends only on row i, so one backward pass gives row i =
    # grad_theta f(z_i). Unbiased: z(theta, u) has law q_theta for every theta and is
    # differentiable in theta, and f is differentiable (Leibniz under E_u).
    u = uniform_draws(q.batch_shape + q.event_shape, problem.dtype, problem.device)
    z = inverse_cdf(q, u)
    return check_estimates(problem, n, per_sample_grad(problem.cost(z, params), params))
