"""Per-sample formulas of the inverse-cdf and implicit estimators against the textbook ones for
the same random draws (exponential, Weibull, gamma, normal). Deterministic: fixed seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import special, stats
from test_positive import CPU, build
from torch.distributions import Gamma, Normal

from gradbench.core.capabilities import DifferentiableCost
from gradbench.core.problem import Problem
from gradbench.core.seeding import seeded
from gradbench.estimators.implicit import implicit
from gradbench.estimators.inverse_cdf import inverse_cdf_estimator
from gradbench.estimators.pathwise import pathwise
from gradbench.suites import get_suite

N = 4000


def test_inverse_cdf_exponential_is_the_textbook_formula():
    rate = 1.7
    problem = build("exponential", rate=rate, cost="square", a=1.0, dim=3)
    with seeded(11, CPU):
        estimates = inverse_cdf_estimator(problem, N)["rate"]
    with seeded(11, CPU):
        u = 1 - torch.rand(N, 3, dtype=torch.float64)  # the estimator's draw, in (0, 1]
    z = -torch.log(u) / rate
    # d/drate z^2 = 2 z dz/drate, dz/drate = -z / rate.
    torch.testing.assert_close(estimates, -2 * z**2 / rate, rtol=1e-12, atol=0)


def test_inverse_cdf_weibull_is_the_textbook_formula():
    scale, k = 1.5, 0.7
    problem = build("weibull", scale=scale, concentration=k, cost="sqrt", dim=3)
    with seeded(12, CPU):
        estimates = inverse_cdf_estimator(problem, N)
    with seeded(12, CPU):
        u = 1 - torch.rand(N, 3, dtype=torch.float64)
    e = -torch.log(u)
    z = scale * e ** (1 / k)
    df = 0.5 / z.sqrt()  # d sqrt(z) / dz
    torch.testing.assert_close(estimates["scale"], df * z / scale, rtol=1e-12, atol=0)
    torch.testing.assert_close(estimates["concentration"], df * (-z * torch.log(e) / k**2),
                               rtol=1e-12, atol=1e-300)


def test_inverse_cdf_uses_torch_icdf_for_normal():
    mu, sigma = 0.3, 2.0
    problem = get_suite("gaussian-quadratic").problem({"mu": mu, "sigma": sigma, "k": 0.0,
                                                       "dim": 2})
    with seeded(13, CPU):
        estimates = inverse_cdf_estimator(problem, N)
    with seeded(13, CPU):
        u = 1 - torch.rand(N, 2, dtype=torch.float64)
    eps = torch.tensor(stats.norm.ppf(u.numpy()))
    z = mu + sigma * eps
    torch.testing.assert_close(estimates["mu"], 2 * z, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(estimates["sigma"], 2 * z * eps, rtol=1e-9, atol=1e-9)


def test_implicit_on_gamma_is_torch_rsample():
    problem = build("gamma", concentration=0.5, rate=2.0, cost="exp", a=1.0, dim=3)
    with seeded(21, CPU):
        ours = implicit(problem, N)
    with seeded(21, CPU):
        theirs = pathwise(problem, N)
    for name in ("concentration", "rate"):
        assert torch.equal(ours[name], theirs[name])


@pytest.mark.parametrize("alpha", [0.5, 3.0])
def test_torch_gamma_gradient_is_the_implicit_formula(alpha):
    """torch's Gamma.rsample gradient against -(dF/dalpha)/q computed from scipy's regularised
    incomplete gamma function (central differences in alpha) and density, for the same draws."""
    beta = 2.0
    problem = Problem(
        params={"concentration": torch.full((2,), alpha, dtype=torch.float64),
                "rate": torch.full((2,), beta, dtype=torch.float64)},
        distribution=lambda concentration, rate: Gamma(concentration, rate),
        cost=lambda z, params=None: z.sum(-1),  # the estimates are dz/dtheta themselves
        capabilities=(DifferentiableCost(),),
    )
    with seeded(22, CPU):
        grads = implicit(problem, N)
    with seeded(22, CPU):
        z = Gamma(torch.full((N, 2), alpha, dtype=torch.float64),
                  torch.full((N, 2), beta, dtype=torch.float64)).sample().numpy()
    h = 1e-6 * alpha
    dF = (special.gammainc(alpha + h, beta * z) - special.gammainc(alpha - h, beta * z)) / (2 * h)
    expected = -dF / stats.gamma.pdf(z, alpha, scale=1 / beta)
    # torch approximates dF/dalpha (a Taylor series for small z, a Rice saddle-point expansion
    # for alpha > 8, a bivariate rational fit otherwise; ATen's Distributions.h), so per-sample
    # agreement is to within that approximation, not to rounding: 1% separates the formula from
    # any wrong one (a sign, a missing 1/q or a missing beta would be off by O(1)).
    np.testing.assert_allclose(grads["concentration"].numpy(), expected, rtol=1e-2)
    # d/dbeta: z = X / beta exactly, so dz/dbeta = -z / beta.
    np.testing.assert_allclose(grads["rate"].numpy(), -z / beta, rtol=1e-12)


def test_implicit_on_exponential_and_weibull_is_the_analytic_derivative():
    rate = 0.8
    problem = build("exponential", rate=rate, cost="square", a=1.0, dim=3)
    with seeded(31, CPU):
        estimates = implicit(problem, N)["rate"]
    with seeded(31, CPU):
        z = problem.distribution(rate=torch.full((N, 3), rate, dtype=torch.float64)).sample()
    torch.testing.assert_close(estimates, 2 * z * (-z / rate), rtol=1e-12, atol=1e-300)

    scale, k = 2.0, 3.0
    problem = build("weibull", scale=scale, concentration=k, cost="square", dim=3)
    with seeded(32, CPU):
        estimates = implicit(problem, N)
    with seeded(32, CPU):
        full = {"scale": torch.full((N, 3), scale, dtype=torch.float64),
                "concentration": torch.full((N, 3), k, dtype=torch.float64)}
        z = problem.distribution(**full).sample()
    # z = s E^{1/k}: dz/ds = z / s, dz/dk = -z log(E) / k^2 = -z log(z / s) / k.
    torch.testing.assert_close(estimates["scale"], 2 * z * z / scale, rtol=1e-10, atol=0)
    torch.testing.assert_close(estimates["concentration"],
                               2 * z * (-z * torch.log(z / scale) / k), rtol=1e-9, atol=1e-12)


def test_implicit_on_normal_is_the_reparameterization_gradient():
    mu, sigma = -0.4, 1.3
    problem = get_suite("gaussian-quadratic").problem({"mu": mu, "sigma": sigma, "k": 0.0,
                                                       "dim": 2})
    with seeded(33, CPU):
        estimates = implicit(problem, N)
    with seeded(33, CPU):
        z = Normal(torch.full((N, 2), mu, dtype=torch.float64),
                   torch.full((N, 2), sigma, dtype=torch.float64)).sample()
    # dz/dmu = 1 and dz/dsigma = (z - mu) / sigma, so d z^2 = 2 z (1, (z - mu) / sigma).
    torch.testing.assert_close(estimates["mu"], 2 * z, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(estimates["sigma"], 2 * z * (z - mu) / sigma, rtol=1e-9,
                               atol=1e-12)
