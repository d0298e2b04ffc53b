"""Truth as exact as claimed: the positive suites' exact gradients against mpmath at 40 digits.

The closed forms are written again here in mpmath (independently of the suites' torch code) and
differentiated numerically by mpmath.diff at 40 significant digits, so the reference carries no
float64 rounding and no special-function approximation of torch's. The suites evaluate the closed
form in float64 and differentiate it by autograd, so their relative error is a few float64 ulps
times the condition of the formula: 1e-13 relative leaves a factor ~500 above eps for that, while
torch's own trigamma (the backward of torch.digamma, 5e-10 off at concentration 0.5) would fail
by a factor ~3000 (gamma/log, see gradbench.core.special)."""

from __future__ import annotations

import mpmath
import pytest
import torch

from gradbench.core.special import trigamma
from gradbench.suites import get_suite

mpmath.mp.dps = 40
EULER = mpmath.euler


def _exponential(cost: str, rate, a):
    return {"square": 2 / rate**2, "exp": rate / (rate + a), "log": -EULER - mpmath.log(rate),
            "sqrt": mpmath.gamma(1.5) / mpmath.sqrt(rate)}[cost]


def _weibull(cost: str, scale, concentration, a):
    if cost == "log":
        return mpmath.log(scale) - EULER / concentration
    m = {"square": 2, "sqrt": mpmath.mpf(1) / 2}[cost]
    return scale**m * mpmath.gamma(1 + m / concentration)


def _gamma(cost: str, concentration, rate, a):
    return {"square": concentration * (concentration + 1) / rate**2,
            "exp": (rate / (rate + a)) ** concentration,
            "log": mpmath.digamma(concentration) - mpmath.log(rate),
            "sqrt": mpmath.gamma(concentration + mpmath.mpf(1) / 2) / mpmath.gamma(concentration)
            / mpmath.sqrt(rate)}[cost]


REFERENCE = {"exponential": (_exponential, ("rate",)),
             "weibull": (_weibull, ("scale", "concentration")),
             "gamma": (_gamma, ("concentration", "rate"))}
POINTS = {
    "exponential": [{"rate": 0.5}, {"rate": 4.0}, {"rate": 0.03}],
    "weibull": [{"scale": 2.0, "concentration": 0.5}, {"scale": 0.7, "concentration": 3.0}],
    "gamma": [{"concentration": 0.5, "rate": 2.0}, {"concentration": 3.0, "rate": 0.25},
              {"concentration": 1.5, "rate": 2.0}],
}
COSTS = {"exponential": ("square", "exp", "log", "sqrt"), "weibull": ("square", "sqrt", "log"),
         "gamma": ("square", "exp", "log", "sqrt")}
CASES = [(suite, cost, point) for suite in POINTS for cost in COSTS[suite]
         for point in POINTS[suite]]


def mpmath_gradient(suite: str, cost: str, point: dict[str, float], a: float) -> dict[str, float]:
    fn, names = REFERENCE[suite]
    values = [mpmath.mpf(point[name]) for name in names]
    grads = {}
    for i, name in enumerate(names):
        def along(x, i=i):
            args = list(values)
            args[i] = x
            return fn(cost, *args, mpmath.mpf(a))
        grads[name] = float(mpmath.diff(along, values[i]))
    return grads


@pytest.mark.parametrize(("suite", "cost", "point"), CASES,
                         ids=[f"{s}-{c}-{'-'.join(f'{v:g}' for v in p.values())}"
                              for s, c, p in CASES])
def test_exact_gradients_match_mpmath(suite, cost, point):
    a = 1.3
    extra = {"a": a} if suite != "weibull" else {}
    problem = get_suite(suite).problem({**point, "cost": cost, "dim": 2, **extra})
    reference = mpmath_gradient(suite, cost, point, a)
    for name, exact in reference.items():
        got = problem.exact_gradient[name].numpy()
        assert got == pytest.approx([exact, exact], rel=1e-13, abs=0.0), (name, got, exact)


def test_trigamma_matches_mpmath_over_decades():
    xs = [1e-6, 1e-3, 0.1, 0.5, 1.0, 1.5, 3.0, 7.3, 19.999, 20.0, 20.5, 123.4, 1e5, 1e12]
    got = trigamma(torch.tensor(xs, dtype=torch.float64)).tolist()
    for x, value in zip(xs, got, strict=True):
        exact = float(mpmath.psi(1, mpmath.mpf(x)))
        # 4 ulps: the sum of <= 20 shifted terms and the asymptotic series, each rounded once.
        assert abs(value - exact) <= 4 * 2.3e-16 * exact, (x, value, exact)
    assert torch.isnan(trigamma(torch.tensor([0.0, -1.0], dtype=torch.float64))).all()
