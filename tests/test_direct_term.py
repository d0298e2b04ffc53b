"""A cost that depends on the parameters, f_theta(z): every unbiased estimator that applies must
add the direct term E_q[grad_theta f_theta(z)] to its estimate of the sampling part.

Two problems with closed-form truths (derived by hand, per coordinate):

Gaussian, z ~ N(mu, sigma^2), f = (z - k)^2 + c mu z + log(sigma) z:
    E[f]     = (mu - k)^2 + sigma^2 + c mu^2 + log(sigma) mu
    d/dmu    = 2 (mu - k) + 2 c mu + log(sigma)
    d/dsigma = 2 sigma + mu / sigma
  of which the direct term E[grad_theta f at fixed z] is (c mu, mu / sigma).

Bernoulli, b ~ Bernoulli(sigmoid(theta)), p = sigmoid(theta), f = (b - t)^2 + theta b + theta^2:
    E[f]     = t^2 + p (1 - 2t) + theta p + theta^2
    d/dtheta = p (1 - p) (1 - 2t) + p + theta p (1 - p) + 2 theta
  of which the direct term is E[b + 2 theta] = p + 2 theta.

Each estimate's mean must match the truth within 5 of its standard errors (fixed seeds), and the
direct term must be far larger than that tolerance, so an estimator that dropped it would fail.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.distributions import Bernoulli, Normal

from gradbench.core.capabilities import DifferentiableCost, RelaxedCost, SeparableCost
from gradbench.core.problem import Problem
from gradbench.core.seeding import seeded
from gradbench.estimators import all_estimators

F64 = torch.float64
N = 100_000
Z_LIMIT = 5.0


def gaussian_problem() -> tuple[Problem, dict[str, Tensor]]:
    mu, sigma = torch.tensor([0.7, -1.2], dtype=F64), torch.tensor([0.8, 1.5], dtype=F64)
    k, c = 0.3, 1.5

    def terms(z: Tensor, params) -> Tensor:
        return (z - k) ** 2 + c * params["mu"] * z + params["sigma"].log() * z

    truth = {"mu": 2 * (mu - k) + 2 * c * mu + sigma.log(), "sigma": 2 * sigma + mu / sigma}
    direct = {"mu": c * mu, "sigma": mu / sigma}
    problem = Problem(
        params={"mu": mu, "sigma": sigma}, distribution=lambda mu, sigma: Normal(mu, sigma),
        cost=lambda z, params: terms(z, params).sum(-1), exact_gradient=truth,
        truth_method="analytic",
        capabilities=(SeparableCost(terms), DifferentiableCost()),
    )
    return problem, direct


def bernoulli_problem() -> tuple[Problem, dict[str, Tensor]]:
    theta, t = torch.tensor([0.4, -1.1, 2.0], dtype=F64), 0.35
    p = torch.sigmoid(theta)

    def terms(b: Tensor, params) -> Tensor:
        logits = params["logits"]
        return (b - t) ** 2 + logits * b + logits**2

    truth = p * (1 - p) * (1 - 2 * t) + p + theta * p * (1 - p) + 2 * theta
    problem = Problem(
        params={"logits": theta}, distribution=lambda logits: Bernoulli(logits=logits),
        cost=lambda b, params: terms(b, params).sum(-1), exact_gradient={"logits": truth},
        truth_method="analytic",
        capabilities=(SeparableCost(terms), DifferentiableCost(), RelaxedCost()),
    )
    return problem, {"logits": p + 2 * theta}


PROBLEMS = {"gaussian": gaussian_problem, "bernoulli": bernoulli_problem}


def cases() -> list:
    out = []
    for name, build in PROBLEMS.items():
        problem, _ = build()
        for estimator in all_estimators().values():
            if estimator.unbiased and estimator.applicability(problem) is None:
                out.append(pytest.param(name, estimator.name, id=f"{name}-{estimator.name}"))
    return out


def test_every_kind_of_unbiased_estimator_is_covered() -> None:
    covered = {values[1] for values in (case.values for case in cases())}
    assert {"pathwise", "score-function", "score-function-loo", "score-function-cv",
            "measure-valued", "arm", "disarm", "rebar", "relax", "exact"} <= covered


def test_the_cost_reports_its_dependence_on_the_parameters() -> None:
    for build in PROBLEMS.values():
        assert build()[0].cost_depends_on_params()


@pytest.mark.parametrize(("problem_name", "estimator_name"), cases())
def test_unbiased_with_a_parameter_dependent_cost(problem_name: str, estimator_name: str) -> None:
    problem, direct = PROBLEMS[problem_name]()
    estimator = all_estimators()[estimator_name]
    hyper = {h.name: h.default for h in estimator.hyperparams.values()}
    with seeded(17, torch.device("cpu")):
        state = {"state": estimator.warmup(problem, **hyper)} if estimator.warmup else {}
        estimates = estimator.fn(problem, N, **hyper, **state)
    for name, truth in problem.exact_gradient.items():
        values = estimates[name].double()
        mean, se = values.mean(0), values.std(0) / math.sqrt(N)
        # An exact estimator has se = 0: a rounding floor keeps the z finite.
        floor = 1e-10 * truth.abs().clamp(min=1.0)
        z = (mean - truth).abs() / torch.sqrt(se**2 + floor**2)
        assert (z < Z_LIMIT).all(), f"{estimator_name} {name}: mean {mean}, truth {truth}, z {z}"
        # Dropping the direct term would move the mean by `direct`: far beyond the tolerance.
        assert (direct[name].abs() > 2 * Z_LIMIT * torch.sqrt(se**2 + floor**2)).all()
