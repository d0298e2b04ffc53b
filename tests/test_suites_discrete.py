"""The discrete suites (bernoulli-toy, bernoulli-probs, bernoulli-coupled, categorical): closed
forms against sympy and against exact enumeration, the tutorial numbers, the coupled suite's
reference truth against enumeration within its own standard error, caching and RNG independence
of that reference, domain checks, shapes and dtypes, registration and planning.

Deterministic: every random draw comes from a seeded generator (the reference's own, or an
explicit torch.Generator here); statistical tolerances are multiples of reported SEs."""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import numpy as np
import pytest
import sympy as sp
import torch
from scipy import stats
from typer.testing import CliRunner

from gradbench.app.cli import app
from gradbench.app.measure import run_cell
from gradbench.app.planning import Cell, RunRequest, plan
from gradbench.core import enumeration
from gradbench.core.capabilities import DifferentiableCost, RelaxedCost, SeparableCost
from gradbench.core.problem import Problem
from gradbench.suites import all_suites, get_suite
from gradbench.suites.bernoulli import (
    build_coupled,
    coupled_network,
    coupled_reference,
    coupled_truth,
    local_expectation,
    probs_gradient,
    reference_samples,
    toy_gradient,
)
from gradbench.suites.categorical import base_logits, categorical_gradient, class_values


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread for this module (restored after): the coupled suite's reference is many
    small chunks, which two threads on a shared two-core machine ran 6x slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SUITES = ("bernoulli-toy", "bernoulli-probs", "bernoulli-coupled", "categorical")
CPU = torch.device("cpu")


def build(name: str, dtype: torch.dtype = torch.float64, **settings: Any) -> Problem:
    return get_suite(name).problem(settings, dtype=dtype)


def default_grid(name: str) -> list[dict[str, Any]]:
    suite = get_suite(name)
    values = itertools.product(*(s.default for s in suite.settings.values()))
    return [dict(zip(suite.settings, v, strict=True)) for v in values]


def truth(problem: Problem) -> np.ndarray:
    assert problem.exact_gradient is not None
    (value,) = problem.exact_gradient.values()
    return value.numpy()


def enumerated(problem: Problem) -> np.ndarray:
    (value,) = enumeration.exact_gradient(problem).values()
    return value.numpy()


# ---------------------------------------------------------------- sympy derivations

THETA, P, T = sp.Symbol("theta", real=True), sp.Symbol("p", positive=True), sp.Symbol("t")


def bernoulli_expectation(p: sp.Expr) -> sp.Expr:
    """E[(b - t)^2] = sum over b in {0, 1} of q(b) (b - t)^2, written out from the definition."""
    return (1 - p) * (0 - T) ** 2 + p * (1 - T) ** 2


def test_toy_closed_form_is_the_sympy_derivative() -> None:
    expr = sp.diff(bernoulli_expectation(1 / (1 + sp.exp(-THETA))), THETA)
    sigma = 1 / (1 + sp.exp(-THETA))
    assert sp.simplify(expr - sigma * (1 - sigma) * (1 - 2 * T)) == 0
    d_theta = sp.lambdify((THETA, T), expr, "mpmath")
    # theta = +-40: sigma(1 - sigma) ~ 4e-18, where 1 - sigmoid(40) cancels to 0 in float64; the
    # closed form must keep full relative precision there too.
    for theta, t in [(0.0, 0.499), (2.0, 0.45), (-2.5, 0.0), (0.3, -3.0), (40.0, 0.2),
                     (-40.0, 0.7)]:
        want = float(d_theta(theta, t))
        assert toy_gradient(theta, t) == pytest.approx(want, rel=1e-13)
        got = truth(build("bernoulli-toy", theta=theta, t=t, dim=3))
        np.testing.assert_allclose(got, np.full(3, want), rtol=1e-13)


def test_probs_closed_form_is_the_sympy_derivative() -> None:
    expr = sp.diff(bernoulli_expectation(P), P)
    assert sp.simplify(expr - (1 - 2 * T)) == 0
    for p, t in [(0.25, 0.0), (0.25, 0.45), (0.75, 0.45), (1e-9, 3.0)]:
        # sympy expands (1 - t)^2 - t^2 in floats: equal to 1 - 2t up to rounding.
        want = float(expr.subs(T, t))
        assert probs_gradient(t) == pytest.approx(want, rel=1e-14)
        np.testing.assert_allclose(truth(build("bernoulli-probs", p=p, t=t, dim=2)),
                                   np.full(2, want), rtol=1e-14)


@functools.cache
def sympy_categorical_gradient(categories: int) -> sp.Lambdify:
    """d/dl_k sum_c softmax(l)_c (v_c - t)^2 with v_c = c / (C - 1), derived by sympy."""
    logits = sp.symbols(f"l0:{categories}", real=True)
    z = sum(sp.exp(lc) for lc in logits)
    value = sum(sp.exp(lc) / z * (sp.Rational(c, categories - 1) - T) ** 2
                for c, lc in enumerate(logits))
    grads = [sp.diff(value, lk) for lk in logits]
    return sp.lambdify((*logits, T), grads, "mpmath")


@pytest.mark.parametrize("categories", [2, 3, 5])
def test_categorical_closed_form_matches_sympy(categories: int) -> None:
    d = sympy_categorical_gradient(categories)
    for scale, t in [(1.0, 0.45), (3.0, 0.45), (0.0, 0.1), (-2.0, 1.5)]:
        logits = base_logits(scale, categories).tolist()
        want = np.array([float(g) for g in d(*logits, t)])
        got = truth(build("categorical", categories=categories, dim=2, scale=scale, t=t))
        np.testing.assert_allclose(got, np.tile(want, (2, 1)), rtol=1e-12,
                                   atol=1e-15 * np.abs(want).max())


# ---------------------------------------------------------------- closed forms vs enumeration


@pytest.mark.parametrize(("theta", "t", "dim"), [
    (0.0, 0.499, 1), (2.0, 0.45, 1), (-2.5, 0.45, 7), (0.7, -1.0, 10), (0.0, 0.499, 16)])
def test_toy_matches_enumeration(theta: float, t: float, dim: int) -> None:
    problem = build("bernoulli-toy", theta=theta, t=t, dim=dim)
    np.testing.assert_allclose(enumerated(problem), truth(problem), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize(("p", "t", "dim"), [(0.25, 0.0, 1), (0.75, 0.45, 5), (0.01, 2.0, 9)])
def test_probs_matches_enumeration(p: float, t: float, dim: int) -> None:
    problem = build("bernoulli-probs", p=p, t=t, dim=dim)
    np.testing.assert_allclose(enumerated(problem), truth(problem), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize(("categories", "dim", "scale"), [
    (3, 1, 1.0), (3, 4, 3.0), (10, 1, 3.0), (10, 4, 1.0), (2, 5, -1.5)])
def test_categorical_matches_enumeration(categories: int, dim: int, scale: float) -> None:
    problem = build("categorical", categories=categories, dim=dim, scale=scale, t=0.45)
    want = enumerated(problem)
    np.testing.assert_allclose(truth(problem), want, rtol=1e-9, atol=1e-14)


def test_categorical_gradient_sums_to_zero_over_classes() -> None:
    # Adding a constant to a row of logits leaves softmax unchanged: each row's gradient sums
    # to 0.
    logits = torch.randn(6, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    np.testing.assert_allclose(categorical_gradient(logits, 0.3).sum(-1).numpy(), 0, atol=1e-16)


def test_tutorial_numbers() -> None:
    """y ~ Bernoulli(p = 0.25): d/dp E[y^2] = 1, while straight-through's mean is 2p = 0.5."""
    problem = build("bernoulli-probs", p=0.25, t=0.0, dim=1)
    assert problem.exact_gradient is not None
    assert problem.exact_gradient["p"].tolist() == [1.0]
    np.testing.assert_allclose(enumerated(problem), [1.0], rtol=1e-14)
    # Straight-through's estimate is df/dy at the hard sample (times dp/dp = 1). Its mean, by
    # enumeration of y, is E[2y] = 2p = 0.5: the cost's own derivative at {0, 1} gives it.
    states = enumeration.joint_support(problem).requires_grad_(True)
    (df,) = torch.autograd.grad(problem.cost(states).sum(), states)
    weights = problem.q().log_prob(states.detach()).exp().squeeze(-1)
    assert float((weights * df.squeeze(-1)).sum()) == pytest.approx(0.5, rel=1e-14)


# ---------------------------------------------------------------- bernoulli-coupled


def test_coupled_network_is_a_pure_function_of_its_settings() -> None:
    torch.manual_seed(1)
    first = coupled_network(12, 32, 0)
    torch.manual_seed(2)
    second = coupled_network(12, 32, 0)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(coupled_network(12, 32, 1)[0], first[0])
    problem = build("bernoulli-coupled", dim=12, theta=0.0, hidden=32, net_seed=0)
    w, c, v = first
    b = torch.bernoulli(torch.full((5, 12), 0.5, dtype=torch.float64),
                        generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(problem.cost(b).numpy(), (torch.tanh(b @ w.T + c) @ v).numpy(),
                               rtol=1e-15)


def test_local_expectation_matches_the_definition() -> None:
    """The flip trick equals sigma'(theta_i) (f(b_i=1) - f(b_i=0)) with f evaluated in full."""
    dim = 9
    problem = build("bernoulli-coupled", dim=dim, theta=-0.7, hidden=5, net_seed=3)
    logits = problem.params["logits"]
    gen = torch.Generator().manual_seed(1)
    b = torch.bernoulli(torch.sigmoid(logits).expand(40, dim), generator=gen)
    eye = torch.eye(dim, dtype=torch.float64)
    ones = torch.where(eye.bool(), 1.0, b[:, None, :])  # [m, i, dim]: b with b_i = 1
    zeros = torch.where(eye.bool(), 0.0, b[:, None, :])
    sigma = torch.sigmoid(logits)
    want = sigma * (1 - sigma) * (problem.cost(ones) - problem.cost(zeros))
    got = local_expectation(b, logits, *coupled_network(dim, 5, 3))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-15)


def test_coupled_reference_agrees_with_enumeration() -> None:
    """The reference path forced at enumerable dims: within 4.5 of its own SE per coordinate,
    and not grossly overstating it: sum z^2 over all 44 coordinates above chi2(44)'s 1e-4
    quantile (17.3), which an SE ~2.2x too large would fall below (the sum is ~76 here; the
    coordinates of one reference share draws, so the sum spreads a little more than chi2)."""
    zs = []
    for dim, theta, hidden, net_seed in [(8, 0.0, 32, 0), (12, 0.0, 32, 0), (10, -1.5, 16, 4),
                                         (14, 1.0, 32, 1)]:
        exact = build_coupled(dim, theta, hidden, net_seed, device=CPU, dtype=torch.float64,
                              method="enumeration")
        forced = build_coupled(dim, theta, hidden, net_seed, device=CPU, dtype=torch.float64,
                               method="reference")
        assert exact.truth_method == "enumeration" and exact.truth_se is None
        assert forced.truth_method == "reference" and forced.truth_se is not None
        se = forced.truth_se["logits"].numpy()
        assert np.all(se > 0) and np.all(np.isfinite(se))
        zs.append((truth(forced) - truth(exact)) / se)
    z = np.concatenate(zs)
    # P(|Z| > 4.5) = 7e-6 per coordinate for an honest SE.
    assert np.abs(z).max() < 4.5, z
    assert (z**2).sum() > stats.chi2.ppf(1e-4, z.size), (z**2).sum()


def test_coupled_truth_method_follows_dim() -> None:
    small = build("bernoulli-coupled", dim=16, theta=0.0, hidden=4, net_seed=0)
    assert small.truth_method == "enumeration" and small.truth_se is None
    large = build("bernoulli-coupled", dim=17, theta=0.0, hidden=4, net_seed=0)
    assert large.truth_method == "reference"
    assert large.truth_se is not None and large.truth_se["logits"].shape == (17,)
    assert bool((large.truth_se["logits"] > 0).all())


def test_coupled_reference_is_cached_and_independent_of_the_global_rng() -> None:
    args = (20, 0.3, 8, 2)
    coupled_reference.cache_clear()
    coupled_truth.cache_clear()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = build("bernoulli-coupled", dim=20, theta=0.3, hidden=8, net_seed=2)
    # The reference drew from its own generator: the global one is untouched.
    assert torch.equal(torch.get_rng_state(), state)
    hits = coupled_reference.cache_info().hits
    again = build("bernoulli-coupled", dim=20, theta=0.3, hidden=8, net_seed=2)
    assert first.exact_gradient is not None and again.exact_gradient is not None
    assert first.truth_se is not None and again.truth_se is not None
    # Same objects: the second build did no sampling at all.
    assert again.exact_gradient["logits"] is first.exact_gradient["logits"]
    assert again.truth_se["logits"] is first.truth_se["logits"]
    assert coupled_reference.cache_info().hits == hits  # served by coupled_truth's cache
    # Recomputed from scratch under a different global seed: identical numbers.
    coupled_reference.cache_clear()
    torch.manual_seed(999)
    mean, se = coupled_reference(*args)
    assert torch.equal(mean, first.exact_gradient["logits"])
    assert torch.equal(se, first.truth_se["logits"])
    assert reference_samples(20, 8) >= 1 << 12


def test_coupled_reference_is_much_tighter_than_a_run() -> None:
    """truth_se sqrt(M) is the local-expectation estimator's own sd, so against a run of the
    suite's default samples N of that same estimator the SE ratio is sqrt(N / M) < 1/2."""
    samples = get_suite("bernoulli-coupled").default_samples
    for dim in (12, 200):
        assert math.sqrt(samples / reference_samples(dim, 32)) < 0.5


# ---------------------------------------------------------------- shapes, dtypes, domain


def test_default_grids_hold_the_named_cases() -> None:
    toy = get_suite("bernoulli-toy").settings
    assert {0.499, 0.45} <= set(toy["t"].default)
    assert 0.0 in toy["theta"].default and any(v != 0 for v in toy["theta"].default)
    assert 1 in toy["dim"].default and max(toy["dim"].default) > 1
    probs = get_suite("bernoulli-probs").settings
    assert 0.25 in probs["p"].default and {0.0, 0.45} <= set(probs["t"].default)
    assert set(get_suite("categorical").settings["categories"].default) == {3, 10}
    assert 200 in get_suite("bernoulli-coupled").settings["dim"].default


@pytest.mark.parametrize("name", SUITES)
def test_default_grid_problems_are_well_formed(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    for s in default_grid(name):
        for dtype in (torch.float64, torch.float32):
            problem = build(name, dtype=dtype, **s)
            assert problem.exact_gradient is not None and problem.truth_method != "none"
            (param,) = problem.params.values()
            assert param.dtype == dtype
            assert all(g.dtype == dtype for g in problem.exact_gradient.values())
            assert problem.offers(DifferentiableCost) and problem.offers(RelaxedCost)
            z = problem.q().sample((5,))
            cost = problem.cost(z, problem.params)
            assert cost.shape == (5,) and cost.dtype == dtype
            if (separable := problem.offers(SeparableCost)) is not None:
                terms = separable.terms(z, problem.params)
                assert terms.shape == (5, s["dim"])
                torch.testing.assert_close(terms.sum(-1), cost)
            else:
                assert name == "bernoulli-coupled"
            # Relaxed inputs: [0, 1] for Bernoulli, the simplex for one-hot; differentiable.
            shape = z.shape
            raw = torch.rand(shape, generator=gen, dtype=dtype)
            relaxed = (raw.softmax(-1) if name == "categorical" else raw).requires_grad_(True)
            (grad,) = torch.autograd.grad(problem.cost(relaxed).sum(), relaxed)
            assert grad.shape == shape and bool(torch.isfinite(grad).all())
            if problem.truth_method == "reference":
                assert problem.truth_se is not None
                se = problem.truth_se["logits"]
                assert se.shape == param.shape and bool((se > 0).all())
            else:
                assert problem.truth_se is None


@pytest.mark.parametrize(("name", "settings", "fragment"), [
    ("bernoulli-toy", {"theta": 0.0, "t": math.inf, "dim": 1}, "t=inf: must be finite"),
    ("bernoulli-toy", {"theta": math.nan, "t": 0.4, "dim": 1}, "theta=nan: must be finite"),
    ("bernoulli-toy", {"theta": 0.0, "t": 0.4, "dim": 0}, "dim=0: must be >= 1"),
    ("bernoulli-probs", {"p": 0.0, "t": 0.0, "dim": 1}, "strictly between 0 and 1"),
    ("bernoulli-probs", {"p": 1.0, "t": 0.0, "dim": 1}, "strictly between 0 and 1"),
    ("bernoulli-probs", {"p": math.nan, "t": 0.0, "dim": 1}, "strictly between 0 and 1"),
    ("bernoulli-coupled", {"dim": 4, "theta": 0.0, "hidden": 0, "net_seed": 0}, "hidden=0"),
    ("bernoulli-coupled", {"dim": 4, "theta": 0.0, "hidden": 3, "net_seed": -1}, "net_seed=-1"),
    ("categorical", {"categories": 1, "dim": 1, "scale": 1.0, "t": 0.0},
     "categories=1: must be >= 2"),
    ("categorical", {"categories": 3, "dim": 1, "scale": -math.inf, "t": 0.0},
     "scale=-inf: must be finite"),
])
def test_domain_checks_give_reasons(name: str, settings: dict[str, Any], fragment: str) -> None:
    reason = get_suite(name).validate(settings)
    assert reason is not None and fragment in reason and "\n" not in reason


@pytest.mark.parametrize(("suite", "assignment", "fragment"), [
    ("categorical", "categories=1", "must be >= 2"),
    ("bernoulli-toy", "t=inf", "must be finite"),
    ("bernoulli-probs", "p=1", "strictly between 0 and 1"),
])
def test_cli_rejects_bad_settings_in_one_line(suite: str, assignment: str, fragment: str) -> None:
    result = CliRunner().invoke(app, ["run", "--suite", suite, "--set", assignment])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_registry_lists_the_suites_with_descriptions() -> None:
    registered = all_suites()
    for name in SUITES:
        assert name in registered and registered[name].description
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0
    for name in SUITES:
        assert name in result.output


def test_plan_skips_inapplicable_estimators_with_reasons() -> None:
    the_plan = plan(RunRequest(suite="categorical"))
    skipped = {s.estimator: s.reason for s in the_plan.skipped}
    assert "pathwise" in skipped and "rsample" in skipped["pathwise"]
    assert {"score-function", "naive"} <= {c.estimator for c in the_plan.cells}


def test_reference_truth_and_its_se_reach_the_results() -> None:
    settings = (("dim", 17), ("theta", 0.0), ("hidden", 4), ("net_seed", 0))
    cell = Cell("bernoulli-coupled", settings, "score-function", (), "cpu", "float64", 64, 0)
    rows = run_cell(cell)
    problem = build("bernoulli-coupled", **dict(settings))
    assert problem.exact_gradient is not None and problem.truth_se is not None
    assert rows["truth_method"][0] == "reference"
    coord = np.array(rows["level"]) == "coord"
    np.testing.assert_array_equal(np.array(rows["truth"])[coord],
                                  problem.exact_gradient["logits"].numpy())
    np.testing.assert_array_equal(np.array(rows["truth_se"])[coord],
                                  problem.truth_se["logits"].numpy())


def test_class_values_span_zero_to_one() -> None:
    assert class_values(5).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
