"""Measure-valued (weak-derivative) gradients for Gaussians (Mohamed et al. 2020, sec. 6).

Per coordinate i, with t = (x - mu)/sigma and phi the standard normal density:

    d/dmu N(x; mu, sigma)    = t phi(t) / sigma^2
                             = [Ray(x - mu) 1{x>mu} - Ray(mu - x) 1{x<mu}] / (sigma sqrt(2 pi))
    d/dsigma N(x; mu, sigma) = (t^2 - 1) phi(t) / sigma^2
                             = 1/sigma [DSMaxwell(x; mu, sigma) - N(x; mu, sigma)]

(Ray = Rayleigh at scale sigma, density r exp(-r^2 / 2 sigma^2) / sigma^2, and t phi(t) is
r exp(-r^2/2) / sqrt(2 pi) at r = t; the double-sided Maxwell density is t^2 phi(t) / sigma.) So

    dE[f]/dmu_i    = E[f(z_i := mu_i + sigma_i W) - f(z_i := mu_i - sigma_i W')] / (sigma_i √(2 pi))
    dE[f]/dsigma_i = E[f(z_i := mu_i + sigma_i M) - f(z_i := mu_i + sigma_i eps)] / sigma_i

with W, W' ~ Rayleigh(1) = Weibull(scale sqrt 2, concentration 2), M ~ double-sided Maxwell,
eps ~ N(0, 1), and the other coordinates z_{-i} ~ q (one draw shared by all four terms).
Each pair may share randomness (coupling) without bias, since only the marginals matter.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradbench.core.autograd import check_estimates, detached, native_to_params
from gradbench.core.capabilities import SeparableCost
from gradbench.core.estimator import Hyperparam, register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import Requirement, gaussian
from gradbench.estimators._fused import own_normal

_SQRT_2PI = math.sqrt(2 * math.pi)
# Largest perturbed batch [n, coordinates, dim] built at once for a non-separable cost.
_MAX_ELEMENTS = 2**24
# A non-separable cost is re-evaluated in full 4 times per coordinate of q: past this many
# coordinates (16,384 evaluations of f per estimate) a cell would take hours, not seconds.
MAX_COORDINATES = 4096


def _num_coordinates(problem: Problem) -> int:
    q = problem.q()
    return q.batch_shape.numel() * q.event_shape.numel()


def _coordinatewise_feasible(problem: Problem) -> str | None:
    if problem.offers(SeparableCost) is not None:
        return None
    coordinates = _num_coordinates(problem)
    if coordinates <= MAX_COORDINATES:
        return None
    return (f"f is not separable, so each estimate re-evaluates it in full 4 times per "
            f"coordinate: {4 * coordinates:,} evaluations for {coordinates:,} coordinates "
            f"(refused above {MAX_COORDINATES:,} coordinates)")


coordinatewise_feasible = Requirement(f"separable cost or at most {MAX_COORDINATES} coordinates",
                                      _coordinatewise_feasible)


def _evals(problem: Problem, coupled: bool = True, **_: object) -> float:
    """4 (separable cost) or 4 x dim (+1 for a cost's direct term)"""
    # Separable: four term-batches over all coordinates at once, i.e. four f-evaluations' work.
    # Otherwise f is re-evaluated in full for each coordinate and each of the four terms.
    weak = 4.0 if problem.offers(SeparableCost) else 4.0 * _num_coordinates(problem)
    return weak + (1.0 if problem.cost_depends_on_params() else 0.0)


def _chi2_squared(like: Tensor) -> Tensor:
    """Squared norm of a standard 2-D Gaussian, i.e. Exponential(1/2), by inversion: -2 log U.

    Elementwise by design: norm(dim=0) over a leading axis of 2-3 ran ~20x slower on the CPU.
    1 - U lies in (0, 1], so the log is finite.
    """
    return -2.0 * torch.log1p(-torch.rand_like(like))


def _rayleigh(like: Tensor) -> Tensor:
    """Rayleigh(1) draws shaped like `like`: the norm of a standard 2-D Gaussian."""
    return _chi2_squared(like).sqrt()


def _double_sided_maxwell(like: Tensor) -> Tensor:
    """Double-sided Maxwell draws (density x^2 phi(x)): a chi_3 magnitude, a fair random sign.

    chi_3^2 = chi_2^2 + N(0,1)^2 for independent parts.
    """
    magnitude = (_chi2_squared(like) + torch.randn_like(like).square()).sqrt()
    sign = torch.randint(0, 2, like.shape, device=like.device).to(like.dtype) * 2 - 1
    return magnitude * sign


def _replaced_costs(
    problem: Problem, base: Tensor | None, values: Tensor, shape: torch.Size,
    params: dict[str, Tensor],
) -> Tensor:
    """[n, D]: column i = f(base with coordinate i := values[:, i]), up to a term that does not
    depend on values[:, i] (so differences between two calls are exact). `params`: the per-sample
    parameters, cut from the graph (the weak derivative differentiates q, not f).

    Separable costs: just the i-th term f_i(values_i), all coordinates in one call. Otherwise the
    full cost of [n, C, D] perturbed copies, C coordinates per call so memory stays bounded.
    """
    n, d = values.shape
    separable = problem.offers(SeparableCost)
    with torch.no_grad():
        if separable is not None:
            return separable.terms(values.reshape(n, *shape), params).reshape(n, d)
        assert base is not None
        width = max(1, _MAX_ELEMENTS // max(1, n * d))
        columns = []
        for start in range(0, d, width):  # over chunks of coordinates, never over samples
            stop = min(d, start + width)
            batch = base.unsqueeze(1).repeat(1, stop - start, 1)  # [n, C, D]
            rows = torch.arange(stop - start, device=values.device)
            batch[:, rows, start + rows] = values[:, start:stop]
            # Row i * C + c of the batch goes with sample i's parameters.
            repeated = {k: v.repeat_interleave(stop - start, dim=0) for k, v in params.items()}
            cost = problem.cost(batch.reshape(n * (stop - start), *shape), repeated)
            columns.append(cost.reshape(n, stop - start))
        return torch.cat(columns, dim=1)


@register_estimator(
    "measure-valued",
    family="measure-valued",
    unbiased=True,
    requires=(gaussian, coordinatewise_feasible),
    hyperparams=(
        Hyperparam("coupled", bool, True, "share randomness between the positive and negative "
                   "parts (W for the mean; eps = M U for the scale)"),
    ),
    evals=_evals,
)
def measure_valued(problem: Problem, n: int, coupled: bool = True) -> dict[str, Tensor]:
    """Gaussian weak derivatives: Rayleigh differences for the mean, Maxwell - normal for sigma."""
    names = own_normal(problem)
    if names is not None and problem.offers(SeparableCost) is not None:
        # q is Normal(loc, scale) of the problem's own parameters: the estimates in (loc,
        # scale) are the estimates, with no parameter copies and no chain rule to apply.
        loc_name, scale_name = names
        loc, scale = problem.params[loc_name], problem.params[scale_name]
        shape = loc.shape
        wide = (n, loc.numel())
        grad_loc, grad_scale = _weak_derivatives(
            problem, loc.expand(n, *shape).reshape(wide), scale.expand(n, *shape).reshape(wide),
            shape, coupled, None, problem.params)
        return check_estimates(problem, n, {loc_name: grad_loc.reshape(n, *shape),
                                            scale_name: grad_scale.reshape(n, *shape)})
    params = problem.expand_params(n, requires_grad=True)
    q = problem.distribution(**params)
    shape = q.batch_shape[1:]  # one draw's shape (Normal has an empty event shape)
    # z_{-i}: one draw from q shared by every coordinate's four terms (unused if separable).
    base = None if problem.offers(SeparableCost) else q.sample().reshape(n, -1)
    grad_loc, grad_scale = _weak_derivatives(
        problem, q.loc.detach().reshape(n, -1), q.scale.detach().reshape(n, -1), shape, coupled,
        base, detached(params))
    native = {"loc": grad_loc.reshape(q.loc.shape), "scale": grad_scale.reshape(q.scale.shape)}
    # A cost that depends on theta adds its direct term E[grad_theta f_theta(z)], estimated at
    # one more draw z ~ q (the weak derivative above covers only theta's effect through q).
    direct = problem.cost(q.sample(), params) if problem.cost_depends_on_params() else None
    # Estimates are w.r.t. (loc, scale); the chain rule maps them to the problem's parameters.
    return check_estimates(problem, n, native_to_params(q, native, params, direct))


def _weak_derivatives(problem: Problem, loc: Tensor, scale: Tensor, shape: torch.Size,
                      coupled: bool, base: Tensor | None, params: dict[str, Tensor]
                      ) -> tuple[Tensor, Tensor]:
    """The weak-derivative estimates [n, D] in loc and scale ([n, D] each, no graph); `params`
    are what the cost sees (cut from any graph: the weak derivative differentiates q, not f)."""
    w_plus = _rayleigh(loc)
    w_minus = w_plus if coupled else _rayleigh(loc)
    maxwell = _double_sided_maxwell(loc)
    # Coupled: eps = M U is exactly N(0, 1). |M| has density 2 x^2 phi(x) on x > 0, so |M| U has
    # density int_y^inf 2 x^2 phi(x) / x dx = int_y^inf 2 x phi(x) dx = 2 phi(y) on y > 0 (a
    # half-normal), and M's independent fair sign makes it symmetric: phi(y) on R.
    eps = maxwell * torch.rand_like(loc) if coupled else torch.randn_like(loc)

    def costs(values: Tensor) -> Tensor:
        return _replaced_costs(problem, base, values, shape, params)

    grad_loc = (costs(loc + scale * w_plus) - costs(loc - scale * w_minus)) / (scale * _SQRT_2PI)
    grad_scale = (costs(loc + scale * maxwell) - costs(loc + scale * eps)) / scale
    return grad_loc, grad_scale
