"""bayes-logistic: the quadrature's stated accuracy, the closed-form gradient and Hessian, the
optimum, unbiasedness of every unbiased estimator, and the Trainer.

Independent references: a 25-digit mpmath quadrature with breakpoints around the sigmoid's
transition (u = 0) and the Gaussian's centre, a rule with half the spacing and a 10-wider
range, finite differences of the exact objective, and autograd through the rule.
"""

from __future__ import annotations

import math
import socket

import mpmath
import numpy as np
import pytest
import torch

from gradbench.app import measure, planning
from gradbench.estimators import all_estimators, get_estimator
from gradbench.suites import _datasets, bayes_logistic, get_suite
from gradbench.suites import _logistic_quadrature as quadrature

F64 = torch.float64
STATED_ACCURACY = 1e-12  # relative, per integral (the module docstring's claim)
Z_LIMIT = 5.0


def reference(mu: float, s: float) -> tuple[float, float, float]:
    """(E[log sigmoid(u)], E[sigmoid(-u)], E[sigmoid(u) sigmoid(-u)]), u ~ N(mu, s^2), to ~25
    digits: mpmath's tanh-sinh rule between breakpoints every 4/s around u = 0 (the sigmoid's
    transition) and at every integer t (the Gaussian)."""
    mpmath.mp.dps = 25
    mu_, s_ = mpmath.mpf(mu), mpmath.mpf(s)
    points = {float(t) for t in range(-12, 13)} | {-s - 40.0, s + 40.0}
    points |= {-mu / s + k / s for k in range(-40, 41, 4) if abs(-mu / s + k / s) < s + 40}
    edges = [-mpmath.inf, *sorted(mpmath.mpf(p) for p in points), mpmath.inf]

    def density(t):
        return mpmath.exp(-t * t / 2) / mpmath.sqrt(2 * mpmath.pi)

    def sig(u):
        return 1 / (1 + mpmath.exp(-u))

    log_lik = mpmath.quad(lambda t: -mpmath.log1p(mpmath.exp(-(mu_ + s_ * t))) * density(t),
                          edges)
    first = mpmath.quad(lambda t: sig(-(mu_ + s_ * t)) * density(t), edges)
    second = mpmath.quad(lambda t: sig(mu_ + s_ * t) * sig(-(mu_ + s_ * t)) * density(t), edges)
    return float(log_lik), float(first), float(second)


def assert_stated_accuracy(cases: list[tuple[float, float]]) -> None:
    mu = torch.tensor([c[0] for c in cases], dtype=F64)
    s = torch.tensor([c[1] for c in cases], dtype=F64)
    got = torch.stack([quadrature.expected_log_sigmoid(mu, s),
                       *quadrature.expected_sigmoid_terms(mu, s)], dim=1)
    expected = torch.tensor([reference(*c) for c in cases], dtype=F64)
    relative = ((got - expected).abs() / expected.abs()).max()
    assert relative < STATED_ACCURACY, f"max relative error {float(relative):.2e}"


# Corners of the range: the widest q (s = 25: 3,000 nodes), tiny expectations (mu = 40: values
# ~e^-40 relative to their bound), the narrowest (s = 0.01), both signs of mu, and s = 1 where
# the spacing's two limits meet.
QUICK = [(0.0, 25.0), (40.0, 8.0), (0.5, 0.01), (-20.0, 3.0), (5.0, 1.0), (0.0, 1.0)]


def test_quadrature_meets_its_stated_accuracy_against_a_25_digit_reference() -> None:
    assert_stated_accuracy(QUICK)


@pytest.mark.slow
def test_quadrature_meets_its_stated_accuracy_over_the_whole_range() -> None:
    assert_stated_accuracy([(mu, s) for mu in (0.0, 0.5, -3.0, 5.0, 20.0, -20.0, 40.0)
                            for s in (0.01, 0.3, 1.0, 3.0, 8.0, 25.0)])


@pytest.mark.parametrize("point", ["init", "optimum"])
def test_quadrature_agrees_with_a_much_finer_rule_on_the_data(point: str) -> None:
    x, y = _datasets.breast_cancer()
    params = bayes_logistic.point_params(point)
    mu, s = quadrature.pre_activation_moments(x, y, params["mean"], params["log_scale"])
    coarse = quadrature.expectations(mu, s, torch.sigmoid, torch.nn.functional.logsigmoid)
    fine = quadrature.expectations(mu, s, torch.sigmoid, torch.nn.functional.logsigmoid,
                                   refine=2.0, tail=23.0)
    for a, b in zip(coarse, fine, strict=True):
        assert ((a - b).abs() / b.abs()).max() < STATED_ACCURACY
    # the finer rule is much finer: at least twice the nodes of the coarse one everywhere
    assert (quadrature.node_count(s, 2.0, 23.0) >= 2 * quadrature.node_count(s) - 1).all()


def exact_objective(theta: torch.Tensor, x, y, scale: float = 1.0) -> torch.Tensor:
    return quadrature.negative_elbo(x, y, theta[:31], theta[31:], scale)


def test_closed_form_gradient_and_hessian_match_differences_and_autograd() -> None:
    x, y = _datasets.breast_cancer()
    rows = _datasets.minibatch_rows(569, 32)
    x, y = x[rows], y[rows]
    generator = torch.Generator().manual_seed(0)
    theta = torch.cat([0.5 * torch.randn(31, generator=generator, dtype=F64),
                       -1.0 + 0.3 * torch.randn(31, generator=generator, dtype=F64)])
    gradient = torch.cat(quadrature.negative_elbo_gradient(x, y, theta[:31], theta[31:], 3.0))
    leaf = theta.clone().requires_grad_(True)
    (autograd,) = torch.autograd.grad(exact_objective(leaf, x, y, 3.0), leaf)
    torch.testing.assert_close(gradient, autograd, rtol=1e-11, atol=1e-11)
    # Central differences along random directions (any wrong entry shows in almost every
    # direction): error ~ step^2 f''' / 6, far below the tolerances.
    step = 1e-5
    directions = torch.randn(4, 62, generator=generator, dtype=F64)
    hessian = quadrature.negative_elbo_hessian(x, y, theta[:31], theta[31:], 3.0)

    def grad_at(t: torch.Tensor) -> torch.Tensor:
        return torch.cat(quadrature.negative_elbo_gradient(x, y, t[:31], t[31:], 3.0))

    for v in directions:
        slope = (exact_objective(theta + step * v, x, y, 3.0)
                 - exact_objective(theta - step * v, x, y, 3.0)) / (2 * step)
        torch.testing.assert_close(gradient @ v, slope, rtol=1e-7, atol=1e-7)
        curvature = (grad_at(theta + step * v) - grad_at(theta - step * v)) / (2 * step)
        torch.testing.assert_close(hessian @ v, curvature, rtol=1e-6, atol=1e-6)


def test_optimum_is_a_reproducible_stationary_point_of_the_exact_elbo() -> None:
    x, y = _datasets.breast_cancer()
    mean, log_scale = bayes_logistic.optimum()
    gradient = torch.cat(quadrature.negative_elbo_gradient(x, y, mean, log_scale))
    assert gradient.abs().max() < 1e-10
    again = bayes_logistic.find_optimum()  # not the cache: computed afresh
    assert torch.equal(again[0], mean) and torch.equal(again[1], log_scale)
    # a maximum of the ELBO, not a saddle: the Hessian of its negative is positive definite
    assert torch.linalg.eigvalsh(quadrature.negative_elbo_hessian(x, y, mean, log_scale)).min() > 0
    full = get_suite("bayes-logistic").problem({"batch": 569, "point": "optimum"})
    for value in full.exact_gradient.values():
        assert value.abs().max() < 1e-10


def test_breast_cancer_comes_from_the_installed_package(monkeypatch) -> None:
    from sklearn.datasets import load_breast_cancer

    def no_network(*args, **kwargs):
        raise AssertionError("the data must not be downloaded")

    monkeypatch.setattr(socket, "socket", no_network)
    _datasets.breast_cancer.cache_clear()
    x, y = _datasets.breast_cancer()
    raw_x, raw_y = load_breast_cancer(return_X_y=True)
    np.testing.assert_allclose(x[:, :30].numpy(), (raw_x - raw_x.mean(0)) / raw_x.std(0),
                               atol=1e-12)
    np.testing.assert_array_equal(x[:, 30].numpy(), 1.0)
    np.testing.assert_array_equal(y.numpy(), 2.0 * raw_y - 1.0)


def test_problem_cost_and_data() -> None:
    p = get_suite("bayes-logistic").problem({"batch": 32, "point": "init"})
    assert p.truth_method == "quadrature" and p.data["X"].shape == (32, 31)
    assert p.cost_depends_on_params()  # the analytic KL is the direct term
    z = torch.randn(5, 31, dtype=F64)
    margins = p.data["y"] * (z @ p.data["X"].T)
    kl = quadrature.kl_to_standard_normal(p.params["mean"], p.params["log_scale"])
    expected = (569 / 32) * torch.log1p(torch.exp(-margins)).sum(-1) + kl
    torch.testing.assert_close(p.cost(z, p.params), expected, rtol=1e-12, atol=1e-10)


# ---------------------------------------------------------------- estimators


def run(settings: dict, estimator: str, samples: int) -> dict:
    hyper = tuple((h.name, h.default) for h in get_estimator(estimator).hyperparams.values())
    cell = planning.Cell("bayes-logistic", tuple(settings.items()), estimator, hyper, "cpu",
                         "float64", samples, 0)
    return measure.run_cell(cell)


SETTINGS = {"batch": 32, "point": "optimum"}
UNBIASED = [name for name, est in all_estimators().items() if est.unbiased
            and est.applicability(get_suite("bayes-logistic").problem(SETTINGS)) is None]


def test_the_expected_estimators_apply() -> None:
    assert {"pathwise", "local-reparam", "flipout", "score-function", "score-function-cv",
            "score-function-loo", "measure-valued"} <= set(UNBIASED)


def assert_unbiased(settings: dict, estimator: str) -> None:
    # measure-valued evaluates f 124 times per estimate: fewer samples, same test
    rows = run(settings, estimator, 4_000 if estimator == "measure-valued" else 20_000)
    z = np.abs(np.array(rows["bias"])) / np.array(rows["bias_se"])
    assert z.max() < Z_LIMIT, f"{estimator} at {settings}: max bias/SE {z.max():.2f}"


@pytest.mark.parametrize("estimator", UNBIASED)
def test_every_unbiased_estimator_is_unbiased(estimator: str) -> None:
    assert_unbiased(SETTINGS, estimator)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 32, 569])
@pytest.mark.parametrize("point", ["init", "optimum"])
@pytest.mark.parametrize("estimator", UNBIASED)
def test_every_unbiased_estimator_is_unbiased_on_the_default_grid(batch, point, estimator
                                                                 ) -> None:
    assert_unbiased({"batch": batch, "point": point}, estimator)


def test_naive_keeps_only_the_direct_term() -> None:
    rows = run(SETTINGS, "naive", 100)
    p = get_suite("bayes-logistic").problem(SETTINGS)
    kl_gradient = np.concatenate([p.params["mean"].numpy(),
                                  (2 * p.params["log_scale"]).exp().numpy() - 1])
    coord = np.array(rows["level"]) == "coord"
    np.testing.assert_allclose(np.array(rows["mean"])[coord], kl_gradient, atol=1e-12)


# ---------------------------------------------------------------- trainer


def test_trainer_steps_with_the_exact_gradient_decrease_the_exact_objective() -> None:
    trainer = get_suite("bayes-logistic").trainer({"batch": 32, "point": "init"})
    assert trainer.train_rows == 569 and trainer.batch == 32
    assert trainer.objective == "negative ELBO"
    params = trainer.initial()
    generator = torch.Generator().manual_seed(0)
    start = trainer.evaluate(params, generator)["negative_elbo"]
    assert not start.higher_is_better and start.se == 0.0
    x, y = _datasets.breast_cancer()
    torch.testing.assert_close(start.value, float(quadrature.negative_elbo(
        x, y, params["mean"], params["log_scale"])), rtol=1e-14, atol=0)
    values = [start.value]
    for step in range(5):
        rows = torch.randperm(569, generator=generator)[:32]
        problem = trainer.problem(params, rows)
        assert problem.data["X"].shape == (32, 31)
        params = {name: value - 1e-3 * problem.exact_gradient[name]
                  for name, value in params.items()}
        values.append(trainer.evaluate(params, generator)["negative_elbo"].value)
        assert values[-1] < values[-2], f"step {step}: {values}"
    assert trainer.evaluate(params, generator)["distance_to_optimum"].value > 0


def test_trainer_problem_does_not_alias_the_parameters() -> None:
    trainer = get_suite("bayes-logistic").trainer({"batch": 32, "point": "optimum"})
    params = trainer.initial()
    problem = trainer.problem(params, torch.arange(32))
    before = problem.params["mean"].clone()
    params["mean"] += 1.0
    torch.testing.assert_close(problem.params["mean"], before)
    # the minibatch truth of these rows at these parameters
    x, y = _datasets.breast_cancer()
    expected = quadrature.negative_elbo_gradient(x[:32], y[:32], before,
                                                 problem.params["log_scale"], 569 / 32)
    torch.testing.assert_close(problem.exact_gradient["mean"], expected[0])
    assert math.isclose(float(trainer.evaluate(trainer.initial(), torch.Generator())[
        "distance_to_optimum"].value), 0.0, abs_tol=0.0)
