"""An outside suite: f(z) = sum_i (z_i - shift)^2, z ~ N(mu, sigma^2)^dim.

E[f] = dim-wise (mu - shift)^2 + sigma^2, so d/dmu = 2 (mu - shift) and d/dsigma = 2 sigma.
"""

import torch
from torch.distributions import Normal

from gradbench.suites import (
    DifferentiableCost,
    Problem,
    SeparableCost,
    Setting,
    at_least,
    finite,
    positive,
    register_suite,
)


@register_suite("shifted-quadratic", samples=2000, offers=(SeparableCost, DifferentiableCost),
                settings=(Setting("mu", float, (0.0, 1.0), "mean of q", finite),
                          Setting("sigma", float, (0.5, 2.0), "scale of q", positive),
                          Setting("shift", float, (3.0,), "centre of the quadratic", finite),
                          Setting("dim", int, (2,), "coordinates", at_least(1))))
def shifted_quadratic(mu, sigma, shift, dim, *, device, dtype):
    """f(z) = sum_i (z_i - shift)^2 under N(mu, sigma^2)^dim (an example suite)."""

    def terms(z, params=None):
        return (z - shift) ** 2

    full = {"device": device, "dtype": dtype}
    return Problem(
        params={"mu": torch.full((dim,), mu, **full), "sigma": torch.full((dim,), sigma, **full)},
        distribution=lambda mu, sigma: Normal(mu, sigma),
        cost=lambda z, params=None: terms(z).sum(-1),
        exact_gradient={"mu": torch.full((dim,), 2 * (mu - shift), **full),
                        "sigma": torch.full((dim,), 2 * sigma, **full)},
        truth_method="analytic",
        settings={"mu": mu, "sigma": sigma, "shift": shift, "dim": dim},
        capabilities=(SeparableCost(terms), DifferentiableCost()),
    )
