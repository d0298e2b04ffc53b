"""Implicit reparameterization gradients (Figurnov, Mohamed & Mnih 2018).

For z ~ q(.; theta) with CDF F(z; theta), the standardization u = F(z; theta) ~ U(0, 1) does not
depend on theta; differentiating F(z(theta); theta) = u gives

    dz/dtheta = -(dF(z; theta)/dtheta) / q(z; theta),

which needs only the CDF's derivative in theta, not an inverse CDF. It equals the derivative of
z = F^{-1}(u; theta) where that exists, so the estimator grad_theta f(z) is the pathwise one.

Where it applies, and how:
- Gamma (and Chi2, a Gamma), Beta, Dirichlet: torch's rsample already implements implicit
  reparameterization (its _standard_gamma and _dirichlet backward passes compute
  -dF/dtheta / q with series/asymptotic approximations of dF/dalpha, as in the paper), so this
  estimator uses q.rsample() there: the same numbers as `pathwise`, by construction.
- Exponential, Weibull, Normal: the CDF is closed form and differentiable in the parameters, so
  the gradient is computed here, from z drawn without gradient, through the surrogate
      z_hat = z - (F(z; theta) - stop_grad(F(z; theta))) / stop_grad(q(z; theta)),
  whose value is z and whose derivative is -dF/dtheta / q; the estimate is grad_theta f(z_hat).
  The CDFs (1 - e^{-rate z}, 1 - e^{-(z/scale)^k}, Phi((z - mu)/sigma)) are written out below.
Anything else (Laplace, Bernoulli, ...) is declared not applicable rather than guessed at.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Beta, Dirichlet, Distribution, Exponential, Gamma, Normal, Weibull

from gradbench.core.autograd import check_estimates, per_sample_grad
from gradbench.core.estimator import register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import Requirement, differentiable_cost

# torch's rsample for these is implicit reparameterization (Chi2 is a subclass of Gamma).
TORCH_IMPLICIT = (Gamma, Beta, Dirichlet)
# Univariate families whose CDF this module differentiates itself.
CLOSED_FORM_CDF = (Exponential, Weibull, Normal)


def cdf(q: Distribution, z: Tensor) -> Tensor:
    """F(z; theta) for the CLOSED_FORM_CDF families, differentiable in q's parameters."""
    if isinstance(q, Exponential):
        return -torch.expm1(-q.rate * z)
    if isinstance(q, Weibull):
        return -torch.expm1(-(z / q.scale).pow(q.concentration))
    if isinstance(q, Normal):
        return 0.5 * torch.erfc(-(z - q.loc) / (q.scale * math.sqrt(2.0)))
    raise TypeError(f"no closed-form CDF here for {type(q).__name__}")


def density(q: Distribution, z: Tensor) -> Tensor:
    """q(z; theta) for the CLOSED_FORM_CDF families, written out rather than q.log_prob(z): no
    support validation (a Weibull draw that underflowed to 0 would fail it) and no transforms."""
    if isinstance(q, Exponential):
        return q.rate * torch.exp(-q.rate * z)
    if isinstance(q, Weibull):
        k, t = q.concentration, z / q.scale
        return k / q.scale * t.pow(k - 1) * torch.exp(-t.pow(k))
    if isinstance(q, Normal):
        t = (z - q.loc) / q.scale
        return torch.exp(-0.5 * t.square()) / (q.scale * math.sqrt(2 * math.pi))
    raise TypeError(f"no closed-form density here for {type(q).__name__}")


def implicit_sample(q: Distribution) -> Tensor:
    """A draw z ~ q (value) whose derivative in q's parameters is the implicit gradient."""
    if isinstance(q, TORCH_IMPLICIT):
        return q.rsample()
    if not isinstance(q, CLOSED_FORM_CDF):
        raise TypeError(f"implicit reparameterization is not implemented for "
                        f"{type(q).__name__}")
    z = q.sample()  # no graph: theta enters only through F below
    at = z
    if isinstance(q, Exponential | Weibull):
        # A positive draw that underflowed to 0 (Weibull, tiny concentration) is evaluated at the
        # smallest normal number instead, where F, q and log z are finite, as torch's Gamma
        # clamps its draws; dz/dtheta there is ~0 either way.
        at = z.clamp_min(torch.finfo(z.dtype).tiny)
    u = cdf(q, at)
    # Value z exactly (u - u.detach() is 0); derivative -(dF/dtheta) / q(z).
    return z - (u - u.detach()) / density(q, at).detach()


def _implicit_reparameterizable(problem: Problem) -> str | None:
    q = problem.q()
    if isinstance(q, TORCH_IMPLICIT + CLOSED_FORM_CDF):
        return None
    return (f"implicit reparameterization is implemented for Exponential, Weibull, Normal "
            f"(closed-form CDF) and Gamma, Chi2, Beta, Dirichlet (torch's rsample), "
            f"not {type(q).__name__}")


implicit_reparameterizable = Requirement("implicit reparameterization",
                                         _implicit_reparameterizable)


@register_estimator(
    "implicit",
    family="pathwise",
    unbiased=True,
    requires=(implicit_reparameterizable, differentiable_cost),
    evals=1,
)
def implicit(problem: Problem, n: int) -> dict[str, Tensor]:
    """Implicit reparameterization: grad_theta f(z) with dz/dtheta = -(dF/dtheta) / q(z)."""
    params = problem.expand_params(n, requires_grad=True)
    # Per-sample parameter rows, so one backward pass gives row i = grad_theta f(z_i).
    z = implicit_sample(problem.distribution(**params))
    return check_estimates(problem, n, per_sample_grad(problem.cost(z, params), params))
