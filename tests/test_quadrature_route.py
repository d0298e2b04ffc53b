"""The Gauss-Hermite quadrature route (gradbench.suites.quadrature) on its own: what it refuses
(non-normal q, non-separable costs, bad node counts) and other parameterisations of q."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.distributions import Laplace, Normal

from gradbench.core.capabilities import SeparableCost
from gradbench.core.problem import Problem
from gradbench.suites import get_suite
from gradbench.suites.quadrature import gauss_hermite_expectation, gauss_hermite_gradient


def settings(mu: float, sigma: float, k: float, dim: int = 3) -> dict:
    return {"mu": mu, "sigma": sigma, "k": k, "dim": dim}


def _quadratic_terms(z: Tensor, params: object = None) -> Tensor:
    return z**2


def test_gauss_hermite_rejects_non_normal() -> None:
    problem = Problem(
        params={"loc": torch.zeros(2), "scale": torch.ones(2)},
        distribution=lambda loc, scale: Laplace(loc, scale),
        cost=lambda z, params=None: _quadratic_terms(z).sum(-1),
        capabilities=(SeparableCost(_quadratic_terms),),
    )
    with pytest.raises(ValueError, match="Normal"):
        gauss_hermite_gradient(problem)


def test_gauss_hermite_rejects_non_separable_cost() -> None:
    problem = get_suite("gaussian-quadratic").problem(settings(0.0, 1.0, 1.0))
    no_terms = Problem(params=problem.params, distribution=problem.distribution, cost=problem.cost)
    with pytest.raises(ValueError, match="SeparableCost"):
        gauss_hermite_gradient(no_terms)
    with pytest.raises(ValueError, match="SeparableCost"):
        gauss_hermite_expectation(no_terms)


def test_gauss_hermite_rejects_bad_node_counts() -> None:
    problem = get_suite("gaussian-quadratic").problem(settings(0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="nodes"):
        gauss_hermite_gradient(problem, 0)
    with pytest.raises(ValueError, match="hermgauss"):
        gauss_hermite_gradient(problem, 400)


def test_gauss_hermite_follows_other_parameterisations() -> None:
    """loc/scale are read off the distribution, so a log-sigma parameter gets the chain rule:
    d/d(log s) E[z^2] = d/d(log s) (mu^2 + s^2) = 2 s^2."""
    mu, log_sigma = torch.tensor([0.5, -1.0]), torch.tensor([0.0, math.log(3.0)])
    problem = Problem(
        params={"mu": mu, "log_sigma": log_sigma},
        distribution=lambda mu, log_sigma: Normal(mu, log_sigma.exp()),
        cost=lambda z, params=None: _quadratic_terms(z).sum(-1),
        capabilities=(SeparableCost(_quadratic_terms),),
    )
    grad = gauss_hermite_gradient(problem, 8)
    assert grad["mu"].dtype == torch.float32
    torch.testing.assert_close(grad["mu"], 2 * mu)
    torch.testing.assert_close(grad["log_sigma"], 2 * log_sigma.exp() ** 2)
