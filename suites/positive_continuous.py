"""Positive continuous suites: z ~ Exponential, Weibull or Gamma with `dim` independent coordinates
and separable costs f(z) = sum_i f_i(z_i) whose expectations have closed forms, so the exact
gradient w.r.t. the distribution's own parameters is analytic (autograd through the closed form).

Closed forms per coordinate (derived by hand from the moment formulas below; checked against
sympy integration and scipy.integrate.quad in tests/test_positive.py). Write gamma_E for the
Euler-Mascheroni constant, psi for the digamma function.

    z ~ Exponential(rate l), density l e^{-l z}:
        E[z^m]      = Gamma(1 + m) / l^m        -> square: 2 / l^2,  sqrt: Gamma(3/2) / sqrt(l)
        E[e^{-a z}] = l / (l + a)               (the Laplace transform)
        E[log z]    = -gamma_E - log l          (log z = log E1 - log l, E[log E1] = psi(1))
    z ~ Weibull(scale s, concentration k), CDF 1 - exp(-(z/s)^k), so z = s E1^{1/k}, E1 ~ Exp(1):
        E[z^m]      = s^m Gamma(1 + m/k)        -> square, sqrt
        E[log z]    = log s - gamma_E / k
        (E[e^{-a z}] has no closed form for general k, so the Weibull suite has no `exp` cost.)
    z ~ Gamma(concentration al, rate be), density be^al z^{al-1} e^{-be z} / Gamma(al):
        E[z^m]      = Gamma(al + m) / (Gamma(al) be^m)  -> square: al (al + 1) / be^2, sqrt
        E[e^{-a z}] = (be / (be + a))^al
        E[log z]    = psi(al) - log be

Every cost is smooth on (0, inf) and has finite mean and variance under all three families for all
valid settings, as do the pathwise and score-function estimates of its gradient (all moments of
E1 exist), though at small concentration they are heavy-tailed (large kurtosis).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from torch.distributions import Exponential, Gamma, Weibull

from gradbench.core.capabilities import DifferentiableCost, SeparableCost
from gradbench.core.names import unknown_name
from gradbench.core.params import at_least, positive
from gradbench.core.problem import Problem
from gradbench.core.special import digamma
from gradbench.core.suite import Setting, register_suite

EULER_GAMMA = 0.5772156649015329

# A closed-form E[f_i(z_i)] per coordinate from the distribution's parameter tensors and `a`.
Expectation = Callable[[Mapping[str, Tensor], float], Tensor]
Terms = Callable[[Tensor, float], Tensor]


# ---------------------------------------------------------------- costs (per-coordinate terms)


def _square(z: Tensor, a: float) -> Tensor:
    return z.square()


def _sqrt(z: Tensor, a: float) -> Tensor:
    return z.sqrt()


def _log(z: Tensor, a: float) -> Tensor:
    return z.log()


def _exp(z: Tensor, a: float) -> Tensor:
    return torch.exp(-a * z)


TERMS: dict[str, Terms] = {"square": _square, "sqrt": _sqrt, "log": _log, "exp": _exp}
FORMULAS = {
    "square": "f = sum_i z_i^2",
    "sqrt": "f = sum_i sqrt(z_i)",
    "log": "f = sum_i log z_i",
    "exp": "f = sum_i exp(-a z_i)",
}


# ---------------------------------------------------------------- closed-form expectations


def _gamma_fn(x: Tensor) -> Tensor:
    # Gamma(x) for x > 0 through lgamma: autograd gives digamma, and no overflow for large x.
    return torch.lgamma(x).exp()


def exponential_expectations() -> dict[str, Expectation]:
    """E[f_i(z)] for z ~ Exponential(rate), keyed by cost name."""
    return {
        "square": lambda p, a: 2.0 / p["rate"] ** 2,
        "sqrt": lambda p, a: math.gamma(1.5) * p["rate"].rsqrt(),
        "log": lambda p, a: -EULER_GAMMA - p["rate"].log(),
        "exp": lambda p, a: p["rate"] / (p["rate"] + a),
    }


def _weibull_moment(m: float) -> Expectation:
    return lambda p, a: p["scale"] ** m * _gamma_fn(1.0 + m / p["concentration"])


def weibull_expectations() -> dict[str, Expectation]:
    """E[f_i(z)] for z ~ Weibull(scale, concentration), keyed by cost name."""
    return {
        "square": _weibull_moment(2.0),
        "sqrt": _weibull_moment(0.5),
        "log": lambda p, a: p["scale"].log() - EULER_GAMMA / p["concentration"],
    }


def gamma_expectations() -> dict[str, Expectation]:
    """E[f_i(z)] for z ~ Gamma(concentration, rate), keyed by cost name."""

    def sqrt(p: Mapping[str, Tensor], a: float) -> Tensor:
        alpha = p["concentration"]
        return torch.exp(torch.lgamma(alpha + 0.5) - torch.lgamma(alpha)) * p["rate"].rsqrt()

    return {
        "square": lambda p, a: p["concentration"] * (p["concentration"] + 1) / p["rate"] ** 2,
        "sqrt": sqrt,
        # special.digamma: torch's own backward (trigamma) is off by up to 5e-10 relative.
        "log": lambda p, a: digamma(p["concentration"]) - p["rate"].log(),
        "exp": lambda p, a: (p["rate"] / (p["rate"] + a)) ** p["concentration"],
    }


EXPECTATIONS: dict[str, dict[str, Expectation]] = {
    "exponential": exponential_expectations(),
    "weibull": weibull_expectations(),
    "gamma": gamma_expectations(),
}


# ---------------------------------------------------------------- shared construction


def _cost_check(allowed: Mapping[str, Expectation]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if value in allowed:
            return None
        return str(unknown_name("cost", value, allowed))

    return check


def _exact_gradient(
    expectation: Expectation,
    values: Mapping[str, float],
    a: float,
    dim: int,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Tensor]:
    """d E[f] / d(params) by autograd through the closed form, in float64 on the CPU so the truth
    is as exact as float64 allows whatever dtype the estimators run in."""
    leaves = {
        name: torch.full((dim,), value, dtype=torch.float64, requires_grad=True)
        for name, value in values.items()
    }
    total = expectation(leaves, a).sum()
    grads = torch.autograd.grad(total, list(leaves.values()))
    return {
        name: grad.to(device=device, dtype=dtype)
        for name, grad in zip(leaves, grads, strict=True)
    }


def _positive_problem(
    family: str,
    distribution: Callable[..., torch.distributions.Distribution],
    values: Mapping[str, float],
    cost: str,
    a: float,
    dim: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Problem:
    expectations = EXPECTATIONS[family]
    if cost not in expectations:
        # The CLI validates first; this guards direct calls.
        raise unknown_name(f"cost for the {family} suite", cost, expectations)
    term = TERMS[cost]

    def terms(z: Tensor, params: object = None) -> Tensor:
        return term(z, a)

    def total(z: Tensor, params: object = None) -> Tensor:
        return terms(z).sum(dim=-1)

    settings: dict[str, object] = {**values, "cost": cost}
    if family != "weibull":
        settings["a"] = a
    settings["dim"] = dim
    return Problem(
        params={name: torch.full((dim,), v, device=device, dtype=dtype)
                for name, v in values.items()},
        distribution=distribution,
        cost=total,
        capabilities=(SeparableCost(terms), DifferentiableCost()),
        exact_gradient=_exact_gradient(expectations[cost], values, a, dim, device, dtype),
        truth_method="analytic",
        settings=settings,
    )


def _cost_setting(family: str, default: tuple[str, ...]) -> Setting:
    allowed = EXPECTATIONS[family]
    names = ", ".join(f"{name} ({FORMULAS[name]})" for name in sorted(allowed))
    return Setting("cost", str, default, f"cost, one of: {names}", _cost_check(allowed))


_A = Setting("a", float, (1.0,), "decay of the exp cost, f = sum_i exp(-a z_i) (a > 0; "
             "recorded but unused by the other costs)", positive)
_DIM = Setting("dim", int, (3,), "number of independent coordinates", at_least(1))


# Draws outside float64's normal range [TINY, HUGE] underflow to 0 (or are clamped to TINY, as
# torch's Gamma does) or overflow to inf: every estimator then returns non-finite or biased
# numbers, so a setting whose distribution puts more than this mass there is rejected.
TINY, HUGE = sys.float_info.min, sys.float_info.max
MAX_OUT_OF_RANGE = 1e-9


def _out_of_range(settings: str, below: float, above: float, fix: str) -> str | None:
    mass = below + above
    if mass <= MAX_OUT_OF_RANGE:
        return None
    where = "underflow to 0" if below >= above else "overflow to inf"
    return (f"{settings}: a fraction {mass:.2g} of the draws of z {where} in float64 (more "
            f"than {MAX_OUT_OF_RANGE:g}), which makes every estimate non-finite or biased; {fix}")


def _exponential_in_range(rate: float, **_: object) -> str | None:
    # P(z < TINY) = 1 - exp(-rate TINY); P(z > HUGE) = exp(-rate HUGE).
    below = -math.expm1(-rate * TINY)
    above = math.exp(-rate * HUGE) if rate * HUGE < 800 else 0.0
    return _out_of_range(f"rate={rate:g}", below, above, "use a rate between 1e-290 and 1e290")


def _weibull_in_range(scale: float, concentration: float, **_: object) -> str | None:
    # P(z < t) = 1 - exp(-(t/s)^k), with (t/s)^k = exp(k log(t/s)) to stay finite.
    def power(t: float) -> float:
        return math.exp(min(700.0, concentration * (math.log(t) - math.log(scale))))

    below = -math.expm1(-power(TINY))
    above = math.exp(-power(HUGE))
    return _out_of_range(f"scale={scale:g}, concentration={concentration:g}", below, above,
                         "use a larger concentration (>= 0.03 at scale ~ 1) or a scale nearer 1")


def _gamma_in_range(concentration: float, rate: float, **_: object) -> str | None:
    # P(z < t) = P(alpha, rate t), the regularised lower incomplete gamma function.
    alpha = torch.tensor(concentration, dtype=torch.float64)
    below = torch.special.gammainc(alpha, torch.tensor(rate * TINY, dtype=torch.float64))
    above = torch.special.gammaincc(alpha, torch.tensor(rate * HUGE, dtype=torch.float64))
    return _out_of_range(f"concentration={concentration:g}, rate={rate:g}", below.item(),
                         above.item(), "use a larger concentration (>= 0.03 at rate ~ 1) or a "
                         "rate nearer 1")


def _exponential(rate: Tensor) -> Exponential:
    return Exponential(rate)


def _weibull(scale: Tensor, concentration: Tensor) -> Weibull:
    return Weibull(scale, concentration)


def _gamma(concentration: Tensor, rate: Tensor) -> Gamma:
    return Gamma(concentration, rate)


# ---------------------------------------------------------------- exponential


# Default grid (6 cells): rate over a decade (pathwise d/drate terms scale like 1/rate^3 for the
# square cost), three costs: a growing moment, a bounded decaying one and log (whose pathwise
# gradient -1/rate has zero variance: the reparameterization is exact in log space).
@register_suite(
    "exponential",
    offers=(SeparableCost, DifferentiableCost),
    settings=(
        Setting("rate", float, (0.5, 4.0), "rate of every coordinate of z (mean 1/rate)",
                positive),
        _cost_setting("exponential", ("square", "exp", "log")),
        _A,
        _DIM,
    ),
    samples=10_000,
    check_combination=_exponential_in_range,
)
def exponential(
    rate: float, cost: str, a: float, dim: int, *, device: torch.device, dtype: torch.dtype
) -> Problem:
    """z ~ Exponential(rate)^dim, smooth separable costs (square, sqrt, log, exp)."""
    return _positive_problem("exponential", _exponential, {"rate": rate}, cost, a, dim,
                             device, dtype)


# ---------------------------------------------------------------- weibull


# Default grid (4 cells): concentration 0.5 (heavy right tail, z = s E^2 with E ~ Exp(1)) against
# 3 (light, near-symmetric); scale 2 so no gradient is trivially 1. The square cost at small k is
# a stress test to ask for explicitly (--set cost=square), not a default: at k = 0.5 its pathwise
# estimates grow like E^4 log E (kurtosis ~ 16!/(8!)^2 ~ 1e4, score function's ~ 2e5), so at
# 1e4 samples the variance's SE and the normal approximation behind bias/SE are unreliable.
@register_suite(
    "weibull",
    offers=(SeparableCost, DifferentiableCost),
    settings=(
        Setting("scale", float, (2.0,), "scale of every coordinate of z", positive),
        Setting("concentration", float, (0.5, 3.0), "shape k of every coordinate of z "
                "(k < 1: heavy right tail)", positive),
        _cost_setting("weibull", ("sqrt", "log")),
        _DIM,
    ),
    samples=10_000,
    check_combination=_weibull_in_range,
)
def weibull(
    scale: float, concentration: float, cost: str, dim: int, *, device: torch.device,
    dtype: torch.dtype,
) -> Problem:
    """z ~ Weibull(scale, concentration)^dim, smooth separable costs (square, sqrt, log)."""
    values = {"scale": scale, "concentration": concentration}
    return _positive_problem("weibull", _weibull, values, cost, 0.0, dim, device, dtype)


# ---------------------------------------------------------------- gamma


# Default grid (6 cells): concentration 0.5 is the hard case for pathwise (the implicit gradient
# dz/dalpha is large relative to z near 0, where most of the mass sits) and 3 the easy one.
@register_suite(
    "gamma",
    offers=(SeparableCost, DifferentiableCost),
    settings=(
        Setting("concentration", float, (0.5, 3.0), "shape alpha of every coordinate of z",
                positive),
        Setting("rate", float, (2.0,), "rate beta of every coordinate of z (mean alpha/beta)",
                positive),
        _cost_setting("gamma", ("square", "exp", "log")),
        _A,
        _DIM,
    ),
    samples=10_000,
    check_combination=_gamma_in_range,
)
def gamma(
    concentration: float, rate: float, cost: str, a: float, dim: int, *, device: torch.device,
    dtype: torch.dtype,
) -> Problem:
    """z ~ Gamma(concentration, rate)^dim, smooth separable costs (square, sqrt, log, exp)."""
    values = {"concentration": concentration, "rate": rate}
    return _positive_problem("gamma", _gamma, values, cost, a, dim, device, dtype)
