"""Statistical tests of the biased relaxations (straight-through, Gumbel-softmax, straight-through
Gumbel, Gumbel-Rao) on the problems of discrete_problems: their means against closed forms or
1-D numerical integration (scipy quad), within 5 SE; every test is seeded.
"""

from __future__ import annotations

import itertools
import math

import torch
from discrete_problems import (
    F64,
    RELAXED,
    Z,
    assert_mean,
    assert_variance,
    bernoulli_problem,
    categorical_problem,
    estimate,
    integrate,
    logistic_density,
    mean_and_se,
    one_thread,  # noqa: F401 (an autouse fixture: this module runs on one thread)
    sig,
    sigmoid,
    variance_and_se,
)
from torch.distributions import Bernoulli

from gradbench.core.problem import Problem
from gradbench.estimators import get_estimator

# ---------------------------------------------------------------- biased estimators


def test_straight_through_is_2p_on_the_tutorial_example() -> None:
    """y ~ Bernoulli(probs = p = 0.25), f = y^2: estimate = df/dy at y = b times dz_st/dp = 1,
    i.e. 2b: mean 2p = 0.5, variance 4 p (1 - p) = 0.75; the truth is dE[y]/dp = 1."""
    torch.manual_seed(3)
    p = 0.25
    problem = Problem(params={"p": torch.tensor([p], dtype=F64)},
                      distribution=lambda p: Bernoulli(probs=p),
                      cost=lambda y, params=None: (y**2).sum(-1), capabilities=RELAXED)
    assert not get_estimator("straight-through").unbiased
    rows = estimate("straight-through", problem, 40_000)["p"]
    assert_mean(rows, 2 * p, "straight-through")
    assert_variance(rows, 4 * p * (1 - p), "straight-through")
    mean, se = mean_and_se(rows)
    assert torch.all(1.0 - mean > Z * se)  # biased: far below the truth 1


def test_straight_through_on_logits_and_categorical_matches_its_closed_form() -> None:
    """Bernoulli logits, f = sum (b - t)^2: estimate 2 (b - t) p (1 - p), mean 2 (p - t) p (1-p).
    Categorical: z_st = probs + (b - probs).detach(), grad_l = J^T grad f(b) with
    J = diag(p) - p p^T, grad f(b) = 2 (b . v - t) v, so E[estimate]_ij = 2 (p_i.v - t) p_ij
    (v_j - p_i.v): not the truth p_ij (a_j - p_i.a)."""
    torch.manual_seed(4)
    n = 40_000
    problem = bernoulli_problem([2.0, 0.0, -2.5], 0.45)
    p = sigmoid(problem.params["logits"])
    assert_mean(estimate("straight-through", problem, n)["logits"],
                2 * (p - 0.45) * p * (1 - p), "straight-through logits")

    problem = categorical_problem()
    p = torch.softmax(problem.params["logits"], -1)
    v, t = torch.tensor([1.0, 2.0, 3.0], dtype=F64), 1.5
    pv = (p @ v)[:, None]
    expected = 2 * (pv - t) * p * (v - pv)
    rows = estimate("straight-through", problem, n)["logits"]
    assert_mean(rows, expected, "straight-through categorical")
    assert problem.exact_gradient is not None
    mean, se = mean_and_se(rows)
    assert ((mean - problem.exact_gradient["logits"]).abs() > Z * se).any()


def _tutorial_problem(p: float = 0.25) -> Problem:
    return Problem(params={"p": torch.tensor([p], dtype=F64)},
                   distribution=lambda p: Bernoulli(probs=p),
                   cost=lambda y, params=None: (y**2).sum(-1), capabilities=RELAXED)


def test_gumbel_softmax_mean_matches_quadrature_and_moves_with_tau() -> None:
    """p = 0.25, f = y^2, y = sigma((theta + L)/tau), theta = logit p: the estimate is
    2 y y (1 - y) / tau / (p (1 - p)), so with x = theta + L, s = x / tau,

        E = int 2 sigma(s)^2 (1 - sigma(s)) rho(tau s - theta) ds / (p (1 - p)),

    rho the logistic density. As tau -> 0 it tends to rho(-theta)/(p(1-p)) * 2 int sigma^2
    (1 - sigma) ds = 1, the truth (int sigma^2 (1 - sigma) ds = int_0^1 w dw = 1/2)."""
    torch.manual_seed(5)
    p = 0.25
    theta = math.log(p / (1 - p))
    problem = _tutorial_problem(p)
    means = {}
    for tau in (0.1, 0.5, 1.0):
        expected = integrate(lambda s, tau=tau: 2 * sig(s) ** 2 * (1 - sig(s))
                             * logistic_density(tau * s - theta)) / (p * (1 - p))
        rows = estimate("gumbel-softmax", problem, 40_000, tau=tau)["p"]
        assert_mean(rows, expected, f"gumbel-softmax tau={tau}")
        means[tau] = (expected, *mean_and_se(rows))
    assert abs(means[0.1][0] - 0.9489) < 1e-3  # "about 0.94" at low tau
    # Biased below the truth 1, less so as tau shrinks, and the measured means separate.
    for (e_lo, m_lo, se_lo), (e_hi, m_hi, se_hi) in itertools.pairwise(means.values()):
        assert 1 > e_lo > e_hi
        assert torch.all(m_lo - m_hi > Z * torch.sqrt(se_lo**2 + se_hi**2))
    assert torch.all(1 - means[0.5][1] > Z * means[0.5][2])


def test_st_gumbel_and_gumbel_rao_match_their_quadrature_mean_and_variance() -> None:
    """p = 0.25, f = y^2 (so df/db = 2b), tau = 0.5, J(x) = sigma'(x/tau)/tau:
    ST-Gumbel = 2 b J(x) / (p(1-p)) with b = 1[x > 0]; Gumbel-Rao replaces J(x) by the mean of m
    draws of J(x~), x~ ~ p(x | b). With A_k = int_0^inf J^k rho(x - theta) dx:
        mean (both) = 2 A_1 / (p (1 - p))
        E[est^2]    = 4 p [(A_1/p)^2 + (A_2/p - (A_1/p)^2)/m] / (p(1-p))^2
    and ST-Gumbel is Gumbel-Rao with m = 1 (the pair (b, x~) has the law of (H(x), x))."""
    torch.manual_seed(6)
    p, tau, n = 0.25, 0.5, 40_000
    theta = math.log(p / (1 - p))
    a1 = integrate(lambda s: sig(s) * (1 - sig(s)) * logistic_density(tau * s - theta), 0)
    a2 = integrate(lambda s: (sig(s) * (1 - sig(s))) ** 2 / tau
                   * logistic_density(tau * s - theta), 0)
    scale = p * (1 - p)
    mean = 2 * a1 / scale

    def variance(m: int) -> float:
        return 4 * p * ((a1 / p) ** 2 + (a2 / p - (a1 / p) ** 2) / m) / scale**2 - mean**2

    problem = _tutorial_problem(p)
    st_gumbel = estimate("straight-through-gumbel", problem, n, tau=tau)["p"]
    assert_mean(st_gumbel, mean, "straight-through-gumbel")
    assert_variance(st_gumbel, variance(1), "straight-through-gumbel")
    measured = {}
    for m in (1, 10):
        rows = estimate("gumbel-rao", problem, n, tau=tau, m=m)["p"]
        assert_mean(rows, mean, f"gumbel-rao m={m}")
        assert_variance(rows, variance(m), f"gumbel-rao m={m}")
        measured[m] = variance_and_se(rows)
    (v1, se1), (v10, se10) = measured[1], measured[10]
    assert torch.all(v1 - v10 > Z * torch.sqrt(se1**2 + se10**2))
    assert abs(mean - 0.6828) < 1e-3 and 1 - mean > 0.3  # biased for the truth 1


def test_gumbel_rao_has_the_st_gumbel_mean_and_less_variance_on_categorical() -> None:
    torch.manual_seed(7)
    problem = categorical_problem()
    n = 40_000
    st = estimate("straight-through-gumbel", problem, n)["logits"]
    gr = estimate("gumbel-rao", problem, n, m=10)["logits"]
    (m_st, se_st), (m_gr, se_gr) = mean_and_se(st), mean_and_se(gr)
    assert torch.all((m_st - m_gr).abs() <= Z * torch.sqrt(se_st**2 + se_gr**2))
    (v_st, vse_st), (v_gr, vse_gr) = variance_and_se(st), variance_and_se(gr)
    assert torch.all(v_st - v_gr > Z * torch.sqrt(vse_st**2 + vse_gr**2))
