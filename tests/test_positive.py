"""Positive continuous suites (exponential, weibull, gamma) and the inverse-cdf and implicit
estimators: closed forms against sympy and scipy.integrate.quad, exact gradients against sympy's
derivatives, unbiasedness through the runner (5 reported SEs), per-sample formulas against the
textbook ones for the same random draws, applicability reasons, and CLI domain checks.
Deterministic: every random draw comes from a fixed seed."""

from __future__ import annotations

import functools
import itertools
import math
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sympy as sp
import torch
from helpers import assert_one_line_error, invoke
from scipy import integrate, stats
from torch.distributions import Bernoulli, Laplace

from gradbench.app import measure, planning
from gradbench.core.capabilities import DifferentiableCost, SeparableCost
from gradbench.core.problem import Problem
from gradbench.core.seeding import seeded
from gradbench.estimators import all_estimators, get_estimator
from gradbench.results import store
from gradbench.suites import get_suite
from gradbench.suites.positive_continuous import EXPECTATIONS

CPU = torch.device("cpu")
SUITES = ("exponential", "weibull", "gamma")
PARAMS = {"exponential": ("rate",), "weibull": ("scale", "concentration"),
          "gamma": ("concentration", "rate")}


def build(suite: str, **settings: Any) -> Problem:
    return get_suite(suite).problem(settings)


# ---------------------------------------------------------------- closed forms: sympy


RATE, SCALE, CONC, A = sp.symbols("rate scale concentration a", positive=True)
Z = sp.Symbol("z", positive=True)
SYMBOLS = {"rate": RATE, "scale": SCALE, "concentration": CONC}
# Weibull E[log z] with a symbolic concentration is beyond sympy's integrator; it is derived for
# these exact rational concentrations instead (and for all of them by quad below).
WEIBULL_LOG_K = (sp.Rational(1, 2), sp.Integer(3))


def _densities() -> dict[str, sp.Expr]:
    return {
        "exponential": RATE * sp.exp(-RATE * Z),
        "weibull": (CONC / SCALE) * (Z / SCALE) ** (CONC - 1) * sp.exp(-((Z / SCALE) ** CONC)),
        "gamma": RATE**CONC * Z ** (CONC - 1) * sp.exp(-RATE * Z) / sp.gamma(CONC),
    }


def _cost_expr(cost: str) -> sp.Expr:
    return {"square": Z**2, "sqrt": sp.sqrt(Z), "log": sp.log(Z), "exp": sp.exp(-A * Z)}[cost]


@functools.cache
def sympy_expectation(suite: str, cost: str, k: sp.Expr | None = None) -> sp.Expr:
    """E[f_i(z)] by sympy integration of f against the density (independent of suites/positive)."""
    density = _densities()[suite]
    if k is not None:
        density = density.subs(CONC, k)
    result = sp.integrate(_cost_expr(cost) * density, (Z, 0, sp.oo), conds="none")
    assert not result.has(sp.Integral), f"sympy could not integrate {suite}/{cost}"
    return sp.simplify(result)


SYMPY_CASES = [(suite, cost) for suite in SUITES for cost in sorted(EXPECTATIONS[suite])
               if not (suite == "weibull" and cost == "log")]
POINTS = {  # parameter values at which closed forms and gradients are compared
    "exponential": [{"rate": 0.5}, {"rate": 4.0}],
    "weibull": [{"scale": 2.0, "concentration": 0.5}, {"scale": 0.7, "concentration": 3.0}],
    "gamma": [{"concentration": 0.5, "rate": 2.0}, {"concentration": 3.0, "rate": 0.25}],
}


def _closed_form(suite: str, cost: str, point: dict[str, float], a: float) -> tuple[float, dict]:
    """The suite's closed form and its autograd gradient at `point` (one coordinate)."""
    leaves = {k: torch.tensor([v], dtype=torch.float64, requires_grad=True)
              for k, v in point.items()}
    value = EXPECTATIONS[suite][cost](leaves, a).sum()
    grads = torch.autograd.grad(value, list(leaves.values()))
    return value.item(), {k: g.item() for k, g in zip(leaves, grads, strict=True)}


@pytest.mark.parametrize(("suite", "cost"), SYMPY_CASES)
def test_closed_forms_and_gradients_match_sympy(suite, cost):
    expr = sympy_expectation(suite, cost)
    a = 1.3
    for point in POINTS[suite]:
        subs = {SYMBOLS[k]: v for k, v in point.items()} | {A: a}
        value, grads = _closed_form(suite, cost, point, a)
        assert value == pytest.approx(float(expr.subs(subs).evalf(30)), rel=1e-12)
        for name in point:
            exact = float(sp.diff(expr, SYMBOLS[name]).subs(subs).evalf(30))
            # 1e-12: float64 closed forms differentiated by autograd (gamma/log through
            # gradbench.core.special's trigamma; tests/test_truth_precision.py checks 1e-13).
            assert grads[name] == pytest.approx(exact, rel=1e-12), name
        # And the suite's problem carries that gradient in every coordinate.
        extra = {"a": a} if suite != "weibull" else {}
        problem = build(suite, **point, cost=cost, dim=2, **extra)
        for name in point:
            np.testing.assert_allclose(problem.exact_gradient[name].numpy(), grads[name],
                                       rtol=1e-14)


@pytest.mark.parametrize("k", WEIBULL_LOG_K)
def test_weibull_log_matches_sympy_at_rational_concentrations(k):
    expr = sympy_expectation("weibull", "log", k)  # log(scale) - EulerGamma / k
    for scale in (0.7, 2.0):
        value, grads = _closed_form("weibull", "log", {"scale": scale,
                                                       "concentration": float(k)}, 0.0)
        assert value == pytest.approx(float(expr.subs(SCALE, scale).evalf(30)), rel=1e-12)
        assert grads["scale"] == pytest.approx(float(sp.diff(expr, SCALE).subs(SCALE, scale)))
    # d/dk (log s - gamma_E / k) = gamma_E / k^2, by hand.
    assert grads["concentration"] == pytest.approx(float(sp.EulerGamma) / float(k) ** 2,
                                                   rel=1e-12)


# ---------------------------------------------------------------- closed forms: quadrature


def _scipy_density(suite: str, point: dict[str, float]):
    if suite == "exponential":
        return stats.expon(scale=1 / point["rate"]).pdf
    if suite == "weibull":
        return stats.weibull_min(point["concentration"], scale=point["scale"]).pdf
    return stats.gamma(point["concentration"], scale=1 / point["rate"]).pdf


NUMPY_COSTS = {"square": np.square, "sqrt": np.sqrt, "log": np.log,
               "exp": lambda z: np.exp(-1.3 * z)}


@pytest.mark.parametrize(("suite", "cost"),
                         [(s, c) for s in SUITES for c in sorted(EXPECTATIONS[s])])
def test_closed_forms_match_quadrature(suite, cost):
    for point in POINTS[suite]:
        pdf = _scipy_density(suite, point)
        f = NUMPY_COSTS[cost]
        # Split at 1 so quad sees the integrable singularities at 0 (log z, z^{k-1} with k < 1)
        # on their own piece.
        parts = [integrate.quad(lambda z, f=f, pdf=pdf: f(z) * pdf(z), lo, hi, epsabs=0,
                                epsrel=1e-12, limit=200)[0] for lo, hi in ((0, 1), (1, np.inf))]
        value, _ = _closed_form(suite, cost, point, 1.3)
        assert sum(parts) == pytest.approx(value, rel=1e-8, abs=1e-10)


# ---------------------------------------------------------------- settings and registration


def test_default_grids_are_small_and_valid():
    for name in SUITES:
        suite = get_suite(name)
        grid = [dict(zip(suite.settings, v, strict=True))
                for v in itertools.product(*(s.default for s in suite.settings.values()))]
        assert 2 <= len(grid) <= 8
        for settings in grid:
            assert suite.validate(settings) is None
            problem = suite.problem(settings)
            assert set(problem.params) == set(PARAMS[name])
            assert problem.truth_method == "analytic"
            assert problem.offers(DifferentiableCost) is not None
            separable = problem.offers(SeparableCost)
            assert separable is not None
            z = problem.q().sample((5,))
            assert torch.allclose(problem.cost(z, problem.params),
                                  separable.terms(z, problem.params).sum(-1))
    # Small concentration, the hard case for Gamma pathwise, is in the default grid.
    assert 0.5 in get_suite("gamma").settings["concentration"].default


def test_weibull_has_no_exp_cost_and_direct_calls_are_checked():
    suite = get_suite("weibull")
    reason = suite.settings["cost"].validate("exp")
    assert reason is not None and "Valid: log, sqrt, square" in reason
    assert get_suite("gamma").settings["cost"].validate("sqare").count("Did you mean 'square'")
    with pytest.raises(ValueError, match="unknown cost"):
        build("exponential", rate=1.0, cost="cube", a=1.0, dim=1)


def test_underflow_check_predicts_the_fraction_of_zero_draws():
    """The range check's mass below float64's smallest normal number matches what sampling does:
    Weibull(2, 0.005) draws are 2 E^200, which is 0 or subnormal for a fraction
    1 - exp(-(tiny/2)^0.005) = 0.028 of them."""
    reason = get_suite("weibull").validate({"scale": 2.0, "concentration": 0.005, "cost": "log",
                                            "dim": 1})
    assert reason is not None and "fraction 0.028" in reason
    p = -math.expm1(-math.exp(0.005 * (math.log(sys.float_info.min) - math.log(2.0))))
    n = 200_000
    with seeded(5, CPU):
        # The builder itself: Suite.problem would refuse these settings, as the CLI does.
        z = get_suite("weibull").build(scale=2.0, concentration=0.005, cost="log", dim=1,
                                       device=CPU, dtype=torch.float64).q().sample((n,))
    fraction = (z < sys.float_info.min).double().mean().item()
    assert abs(fraction - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_float32_problems_keep_a_float64_truth():
    problem = get_suite("gamma").problem(
        {"concentration": 0.5, "rate": 2.0, "cost": "exp", "a": 1.0, "dim": 2},
        dtype=torch.float32)
    assert problem.dtype == torch.float32
    assert problem.exact_gradient["rate"].dtype == torch.float32
    # d/dbeta (beta/(beta+a))^alpha = alpha a beta^(alpha-1) / (beta+a)^(alpha+1), by hand.
    expected = 0.5 * 1.0 * 2.0 ** (-0.5) / 3.0**1.5
    assert problem.exact_gradient["rate"][0].item() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- unbiasedness through the runner

CASES = {
    "exponential": [
        {"rate": 0.5, "cost": "square", "a": 1.0, "dim": 2},
        {"rate": 4.0, "cost": "exp", "a": 2.0, "dim": 3},
        {"rate": 1.5, "cost": "log", "a": 1.0, "dim": 2},
        {"rate": 2.0, "cost": "sqrt", "a": 1.0, "dim": 1},
    ],
    "weibull": [
        {"scale": 2.0, "concentration": 3.0, "cost": "square", "dim": 2},
        {"scale": 0.7, "concentration": 0.5, "cost": "log", "dim": 2},
        {"scale": 1.5, "concentration": 1.5, "cost": "sqrt", "dim": 1},
        {"scale": 1.0, "concentration": 0.8, "cost": "square", "dim": 1},
    ],
    "gamma": [
        {"concentration": 0.5, "rate": 2.0, "cost": "exp", "a": 1.0, "dim": 2},
        {"concentration": 3.0, "rate": 2.0, "cost": "log", "a": 1.0, "dim": 2},
        {"concentration": 0.5, "rate": 1.0, "cost": "square", "a": 1.0, "dim": 1},
        {"concentration": 1.7, "rate": 0.5, "cost": "sqrt", "a": 1.0, "dim": 2},
    ],
}
UNBIASED = ("pathwise", "implicit", "inverse-cdf", "score-function", "score-function-cv",
            "score-function-loo")
APPLICABLE = {
    "exponential": set(UNBIASED),
    "weibull": set(UNBIASED),
    "gamma": set(UNBIASED) - {"inverse-cdf"},
}


def cell(suite, settings, name, samples=20_000, seed=0, dtype="float64"):
    hyper = tuple((h.name, h.default) for h in get_estimator(name).hyperparams.values())
    return planning.Cell(suite, tuple(settings.items()), name, hyper, "cpu", dtype, samples, seed)


def unbiased_cases():
    for suite, grid in CASES.items():
        for settings in grid:
            for name in UNBIASED:
                yield pytest.param(suite, settings, name, id=f"{suite}-{name}-{settings}")


def assert_unbiased(rows: dict, label: str) -> None:
    bias, se = np.array(rows["bias"]), np.array(rows["bias_se"])
    truth = np.array(rows["truth"])
    assert np.all(np.array(rows["nonfinite"]) == 0), label
    # 5 reported standard errors: a false alarm has probability ~6e-7 per coordinate. Plus float64
    # rounding (1e-12 relative): some estimates are exactly constant in theory (d/drate of log z
    # is -1/rate for every draw), so their SE is 0 or rounding-sized, and a rounding-level bias
    # (e.g. implicit's dF/dtheta / q evaluated in floating point) is no statistical evidence.
    allowed = 5 * se + 1e-12 * np.abs(truth)
    worst = np.argmax(np.abs(bias) - allowed)
    assert np.all(np.abs(bias) < allowed), (
        f"{label}: bias {bias[worst]:.3g} > 5 SE ({se[worst]:.3g}) in coordinate {worst}")


@pytest.mark.parametrize(("suite", "settings", "name"), list(unbiased_cases()))
def test_unbiased_estimators_match_exact_gradient(suite, settings, name):
    estimator = get_estimator(name)
    problem = get_suite(suite).problem(settings)
    if name not in APPLICABLE[suite]:
        assert estimator.applicability(problem) is not None
        return
    assert estimator.applicability(problem) is None
    assert estimator.unbiased
    rows = measure.run_cell(cell(suite, settings, name))
    assert_unbiased(rows, f"{name} on {suite} {settings}")


@pytest.mark.parametrize("name", ["pathwise", "inverse-cdf", "implicit"])
def test_pathwise_family_variance_matches_the_exact_variance(name):
    """Square cost, gradient w.r.t. a rate: z = X / rate with X free of the rate, so every
    reparameterization gives d z^2 / d rate = -2 X^2 / rate^3, of variance 4 Var(X^2) / rate^6.
    Exponential: X ~ Exp(1), Var(X^2) = 4! - (2!)^2 = 20. Gamma(alpha): E X^m = alpha^(m rising),
    Var(X^2) = alpha(alpha+1)(alpha+2)(alpha+3) - alpha^2 (alpha+1)^2."""
    cases = [("exponential", {"rate": 2.0, "cost": "square", "a": 1.0, "dim": 2}, "rate",
              4 * 20 / 2.0**6)]
    alpha, beta = 1.7, 1.5
    var_x2 = alpha * (alpha + 1) * (alpha + 2) * (alpha + 3) - alpha**2 * (alpha + 1) ** 2
    cases.append(("gamma", {"concentration": alpha, "rate": beta, "cost": "square", "a": 1.0,
                            "dim": 2}, "rate", 4 * var_x2 / beta**6))
    for suite, settings, param, exact in cases:
        if get_estimator(name).applicability(get_suite(suite).problem(settings)) is not None:
            continue  # inverse-cdf on gamma
        rows = measure.run_cell(cell(suite, settings, name))
        picked = [i for i, (p, level) in enumerate(zip(rows["param"], rows["level"],
                                                       strict=True))
                  if p == param and level == "coord"]
        variance = np.array(rows["variance"])[picked]
        variance_se = np.array(rows["variance_se"])[picked]
        assert np.all(np.abs(variance - exact) < 5 * variance_se), (suite, variance, exact)


@pytest.mark.parametrize("name", ["inverse-cdf", "implicit"])
def test_new_estimators_are_unbiased_on_gaussians_and_in_float32(name):
    settings = {"mu": 1.0, "sigma": 1.5, "k": 0.5, "dim": 2}
    assert_unbiased(measure.run_cell(cell("gaussian-quadratic", settings, name)), name)
    weibull = {"scale": 2.0, "concentration": 3.0, "cost": "square", "dim": 2}
    rows = measure.run_cell(cell("weibull", weibull, name, dtype="float32"))
    assert_unbiased(rows, f"{name} float32")


# ---------------------------------------------------------------- applicability


def _problem_of(distribution, **params: float) -> Problem:
    tensors = {k: torch.full((2,), v, dtype=torch.float64) for k, v in params.items()}
    return Problem(params=tensors, distribution=distribution,
                   cost=lambda z, params=None: z.sum(-1), capabilities=(DifferentiableCost(),))


def test_applicability_reasons():
    gamma = build("gamma", concentration=0.5, rate=2.0, cost="square", a=1.0, dim=1)
    reason = get_estimator("inverse-cdf").applicability(gamma)
    assert reason is not None
    assert "no closed-form inverse CDF" in reason and "use implicit" in reason
    for suite, settings in (("exponential", CASES["exponential"][0]),
                            ("weibull", CASES["weibull"][0]), ("gamma", CASES["gamma"][0])):
        problem = get_suite(suite).problem(settings)
        reason = get_estimator("measure-valued").applicability(problem)
        assert reason is not None and "Gaussian" in reason
        assert get_estimator("implicit").applicability(problem) is None

    laplace = _problem_of(lambda loc, scale: Laplace(loc, scale), loc=0.0, scale=1.0)
    reason = get_estimator("implicit").applicability(laplace)
    assert reason is not None and "not Laplace" in reason
    # Laplace has a closed-form icdf in torch, so inverse-cdf applies through q.icdf.
    assert get_estimator("inverse-cdf").applicability(laplace) is None
    bernoulli = _problem_of(lambda probs: Bernoulli(probs=probs), probs=0.3)
    assert "not Bernoulli" in get_estimator("implicit").applicability(bernoulli)
    assert get_estimator("inverse-cdf").applicability(bernoulli) is not None


def test_default_plans_skip_what_does_not_apply():
    for suite in SUITES:
        the_plan = planning.plan(planning.RunRequest(suite=suite))
        ran = {c.estimator for c in the_plan.cells}
        assert APPLICABLE[suite] <= ran
        skipped = {(s.estimator, s.reason) for s in the_plan.skipped}
        assert any(name == "measure-valued" and "Gaussian" in why for name, why in skipped)
        if suite == "gamma":
            assert any(name == "inverse-cdf" and "use implicit" in why for name, why in skipped)
    assert all_estimators()["implicit"].family == "pathwise"
    assert all_estimators()["inverse-cdf"].family == "pathwise"


# ---------------------------------------------------------------- CLI domain checks


def assert_cli_error(args: list[str], *fragments: str) -> None:
    assert_one_line_error(invoke(*args), *fragments)


@pytest.mark.parametrize(("suite", "assignment", "fragments"), [
    ("gamma", "concentration=0", ("concentration=0.0", "must be > 0")),
    ("gamma", "concentration=-1.5", ("concentration=-1.5", "must be > 0")),
    ("weibull", "concentration=0", ("concentration=0.0", "must be > 0")),
    ("exponential", "rate=0", ("rate=0.0", "must be > 0")),
    ("gamma", "rate=-2", ("rate=-2.0", "must be > 0")),
    ("weibull", "scale=0", ("scale=0.0", "must be > 0")),
    ("exponential", "a=0", ("a=0.0", "must be > 0")),
    ("gamma", "dim=0", ("dim=0", "must be >= 1")),
    ("exponential", "cost=sqare", ("unknown cost 'sqare'", "Did you mean 'square'?")),
    ("weibull", "cost=exp", ("unknown cost 'exp'", "Valid: log, sqrt, square")),
    ("weibull", "concentration=0.005", ("concentration=0.005", "underflow to 0",
                                        "use a larger concentration")),
    ("gamma", "concentration=0.001", ("concentration=0.001", "fraction 0.49")),
])
def test_cli_rejects_bad_settings(suite, assignment, fragments, tmp_path):
    assert_cli_error(["run", "--suite", suite, "--set", assignment, "--samples", "10",
                           "--out", str(tmp_path)], *fragments)


def test_cli_rejects_inverse_cdf_on_gamma(tmp_path):
    assert_cli_error(["run", "--suite", "gamma", "-e", "inverse-cdf", "--samples", "10",
                           "--out", str(tmp_path)], "inverse-cdf does not apply",
                          "no closed-form inverse CDF")


def test_cli_runs_a_positive_suite(tmp_path):
    result = invoke("run", "--suite", "weibull", "-e", "inverse-cdf", "-e", "implicit",
                    "--set", "concentration=0.5", "--set", "cost=log", "--samples", "200",
                    "--out", tmp_path)
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(store.run_dirs(tmp_path)[0])
    assert set(frame["estimator"]) == {"inverse-cdf", "implicit"}
    assert set(frame["cost"]) == {"log"} and set(frame["param"]) == {"scale", "concentration"}

