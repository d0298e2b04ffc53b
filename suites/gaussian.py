"""Gaussian suites: z ~ Normal(mu, sigma) with `dim` independent coordinates and separable costs
f(z) = sum_i f_i(z_i), each with a closed-form expectation, so the exact gradient is analytic.

Closed forms per coordinate, z ~ N(mu, sigma^2) (derived by completing the square; checked
against sympy, Gauss-Hermite quadrature and scipy.integrate.quad in tests/test_suites_gaussian.py):

    E[(z - k)^2]    = (mu - k)^2 + sigma^2
    E[exp(-k z^2)]  = c^(-1/2) exp(-k mu^2 / c),  c = 1 + 2 k sigma^2 > 0 (else infinite)
    E[cos(k z)]     = cos(k mu) exp(-k^2 sigma^2 / 2)   (real part of the characteristic fn)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Normal

from gradbench.core.capabilities import CostGradient, DifferentiableCost, SeparableCost
from gradbench.core.params import at_least, finite, positive
from gradbench.core.problem import Problem
from gradbench.core.suite import Setting, register_suite

Expectation = Callable[[Tensor, Tensor, float], Tensor]


# ---------------------------------------------------------------- closed-form expectations


def quadratic_expectation(mu: Tensor, sigma: Tensor, k: float) -> Tensor:
    """E[(z - k)^2] per coordinate: squared bias of z around k plus its variance."""
    return (mu - k) ** 2 + sigma**2


def exp_expectation(mu: Tensor, sigma: Tensor, k: float) -> Tensor:
    """E[exp(-k z^2)] per coordinate; finite only where 1 + 2 k sigma^2 > 0."""
    c = 1 + 2 * k * sigma**2
    return torch.rsqrt(c) * torch.exp(-k * mu**2 / c)


def cos_expectation(mu: Tensor, sigma: Tensor, k: float) -> Tensor:
    """E[cos(k z)] per coordinate: Re E[exp(i k z)] = Re exp(i k mu - k^2 sigma^2 / 2)."""
    return torch.cos(k * mu) * torch.exp(-0.5 * k**2 * sigma**2)


# ---------------------------------------------------------------- shared construction


def _exact_gradient(
    expectation: Expectation,
    mu: float,
    sigma: float,
    k: float,
    dim: int,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Tensor]:
    """d E[f] / d(mu, sigma) by autograd through the closed form, in float64 on the CPU so the
    truth is as exact as float64 allows whatever dtype the estimators run in."""
    mu64 = torch.full((dim,), mu, dtype=torch.float64, requires_grad=True)
    sigma64 = torch.full((dim,), sigma, dtype=torch.float64, requires_grad=True)
    total = expectation(mu64, sigma64, k).sum()
    grad_mu, grad_sigma = torch.autograd.grad(total, (mu64, sigma64))
    return {
        "mu": grad_mu.to(device=device, dtype=dtype),
        "sigma": grad_sigma.to(device=device, dtype=dtype),
    }


def _normal(mu: Tensor, sigma: Tensor) -> Normal:
    return Normal(mu, sigma)


def _gaussian_problem(
    terms: Callable[[Tensor], Tensor],
    expectation: Expectation,
    mu: float,
    sigma: float,
    k: float,
    dim: int,
    device: torch.device,
    dtype: torch.dtype,
    terms_grad: Callable[[Tensor], Tensor],
) -> Problem:
    def cost(z: Tensor, params: object = None) -> Tensor:
        return terms(z).sum(dim=-1)

    return Problem(
        params={
            "mu": torch.full((dim,), mu, device=device, dtype=dtype),
            "sigma": torch.full((dim,), sigma, device=device, dtype=dtype),
        },
        distribution=_normal,
        cost=cost,
        exact_gradient=_exact_gradient(expectation, mu, sigma, k, dim, device, dtype),
        truth_method="analytic",
        settings={"mu": mu, "sigma": sigma, "k": k, "dim": dim},
        # Separable: df/dz_i = f_i'(z_i), so the terms' derivative is the cost's gradient.
        capabilities=(SeparableCost(lambda z, params=None: terms(z)), DifferentiableCost(),
                      CostGradient(lambda z, params=None: terms_grad(z))),
    )


def _settings(
    mu: tuple[float, ...],
    sigma: tuple[float, ...],
    k: tuple[float, ...],
    dim: tuple[int, ...],
    k_help: str,
) -> tuple[Setting, ...]:
    return (
        Setting("mu", float, mu, "mean of every coordinate of z", finite),
        Setting("sigma", float, sigma, "standard deviation of every coordinate of z", positive),
        Setting("k", float, k, k_help, finite),
        Setting("dim", int, dim, "number of independent coordinates", at_least(1)),
    )


# ---------------------------------------------------------------- gaussian-quadratic


# Default grid (18 cells). mu - k is 1 or -9, so no gradient coordinate is zero (relative errors
# stay defined) and |mu - k| / sigma spans 0.1 .. 90: the score-function estimator's variance
# grows with the cost's offset (mu - k)^2 relative to sigma while the pathwise one (2(z - k),
# variance 4 sigma^2) does not care, so the grid separates the two. sigma over three decades
# shows the sigma^2 scaling; dim over two decades shows the noise score-function picks up from
# the other coordinates' terms (variance ~ dim; pathwise estimates of separable costs do not see
# them), up to 1000 coordinates. 4000 estimates per cell keep the whole default run near 20 s on
# one core (dim=1000 cells dominate: ~1e7 coordinate-estimates each) while the variance is still
# known to ~2% (relative SE sqrt(2/n) for near-normal estimates).
@register_suite(
    "gaussian-quadratic",
    offers=(SeparableCost, DifferentiableCost, CostGradient),
    settings=_settings(
        mu=(1.0,),
        sigma=(0.1, 1.0, 10.0),
        k=(0.0, 10.0),
        dim=(1, 30, 1000),
        k_help="centre of the quadratic, f = sum_i (z_i - k)^2",
    ),
    samples=4_000,
)
def gaussian_quadratic(
    mu: float, sigma: float, k: float, dim: int, *, device: torch.device, dtype: torch.dtype
) -> Problem:
    """f(z) = sum_i (z_i - k)^2, z ~ N(mu, sigma^2)^dim: variance vs offset, scale and dim."""

    def terms(z: Tensor) -> Tensor:
        return (z - k) ** 2

    def terms_grad(z: Tensor) -> Tensor:
        return 2 * (z - k)

    return _gaussian_problem(terms, quadratic_expectation, mu, sigma, k, dim, device, dtype,
                             terms_grad)


# ---------------------------------------------------------------- gaussian-exp


def _exp_expectation_finite(sigma: float, k: float, **_: object) -> str | None:
    c = 1 + 2 * k * sigma**2
    if c > 0:
        return None
    return (
        f"E[exp(-k z^2)] is infinite since 1 + 2 k sigma^2 = {c:g} <= 0; "
        f"use k > {-1 / (2 * sigma**2):g} (= -1/(2 sigma^2)) or a smaller sigma"
    )


# Default grid (12 cells). mu = 1.5 keeps both gradients away from zero on every cell: d/dmu
# vanishes at mu = 0, and d/dsigma changes sign where mu^2 - sigma^2 = 1/(2k) (sigma = 1.12 for
# k = 0.5, 1.41 for k = 2), which sigma in {0.25, 1, 3} avoids. k > 0 only: for
# -1/(2 sigma^2) < k <= -1/(4 sigma^2) the mean is finite but f has infinite variance, which is
# a stress test to ask for explicitly (--set k=...), not a default. sigma = 3 makes the bump
# narrow relative to q (most samples see f ~ 0); sigma = 0.25 makes q narrow relative to it.
@register_suite(
    "gaussian-exp",
    offers=(SeparableCost, DifferentiableCost, CostGradient),
    settings=_settings(
        mu=(1.5,),
        sigma=(0.25, 1.0, 3.0),
        k=(0.5, 2.0),
        dim=(1, 10),
        k_help="precision of the bump, f = sum_i exp(-k z_i^2); needs 1 + 2 k sigma^2 > 0",
    ),
    samples=10_000,
    check_combination=_exp_expectation_finite,
)
def gaussian_exp(
    mu: float, sigma: float, k: float, dim: int, *, device: torch.device, dtype: torch.dtype
) -> Problem:
    """f(z) = sum_i exp(-k z_i^2), z ~ N(mu, sigma^2)^dim: a bump, narrow or wide relative to q."""

    def terms(z: Tensor) -> Tensor:
        return torch.exp(-k * z**2)

    def terms_grad(z: Tensor) -> Tensor:
        return -2 * k * z * torch.exp(-k * z**2)

    return _gaussian_problem(terms, exp_expectation, mu, sigma, k, dim, device, dtype,
                             terms_grad)


# ---------------------------------------------------------------- gaussian-cos


# Default grid (8 cells). mu = 0.7 keeps k mu = 0.7 and 2.1 away from multiples of pi/2, so
# neither sin(k mu) (d/dmu) nor cos(k mu) (d/dsigma) is near zero. k sigma = 3 (k = 3,
# sigma = 1) is the hard cell: the oscillation averages out, the gradient is damped by
# exp(-4.5) ~ 0.011 while per-sample pathwise terms stay O(k), so every estimator's relative
# error is large there.
@register_suite(
    "gaussian-cos",
    offers=(SeparableCost, DifferentiableCost, CostGradient),
    settings=_settings(
        mu=(0.7,),
        sigma=(0.25, 1.0),
        k=(1.0, 3.0),
        dim=(1, 10),
        k_help="frequency, f = sum_i cos(k z_i)",
    ),
    samples=10_000,
)
def gaussian_cos(
    mu: float, sigma: float, k: float, dim: int, *, device: torch.device, dtype: torch.dtype
) -> Problem:
    """f(z) = sum_i cos(k z_i), z ~ N(mu, sigma^2)^dim: an oscillating cost, damped gradient."""

    def terms(z: Tensor) -> Tensor:
        return torch.cos(k * z)

    def terms_grad(z: Tensor) -> Tensor:
        return -k * torch.sin(k * z)

    return _gaussian_problem(terms, cos_expectation, mu, sigma, k, dim, device, dtype,
                             terms_grad)
