"""Statistical tests of the estimators on Gaussian problems built here, with hand-derived truths.

z ~ N(mu, sigma^2) per coordinate, eps ~ N(0, 1), a = mu - k. Exact expectations and gradients:

    f = sum_i (z_i - k)^2   E = sum (a^2 + sigma^2)           d/dmu = 2a,  d/dsigma = 2 sigma
    f = sum_i cos(k z_i)    E = sum cos(k mu) e^{-k^2 sigma^2 / 2}
                            d/dmu = -k sin(k mu) e^{-k^2 sigma^2/2}
                            d/dsigma = -k^2 sigma cos(k mu) e^{-k^2 sigma^2/2}
    f = (sum_i z_i)^2       E = (sum mu)^2 + sum sigma^2
                            d/dmu_i = 2 sum mu,  d/dsigma_i = 2 sigma_i
                            (not separable: exercises measure-valued's general path)

Unbiasedness: |mean - truth| <= 5 SE, SE = std / sqrt(n) of the i.i.d. rows (a 5-sigma event has
probability ~6e-7 per coordinate, and every test is seeded, so this is deterministic and honest).
Variance claims: the sample variance's SE is std((g - mean)^2) / sqrt(n), again at 5 SE.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from helpers import CountingCost, assert_estimate_contract
from torch import Tensor
from torch.distributions import Normal

from gradbench.core.capabilities import DifferentiableCost, SeparableCost
from gradbench.core.problem import Problem
from gradbench.estimators import all_estimators, get_estimator

Z = 5.0  # tolerance in standard errors
UNBIASED = [
    ("pathwise", {}),
    ("score-function", {}),
    ("score-function-loo", {"draws": 2}),
    ("score-function-loo", {"draws": 4}),
    ("score-function-cv", {"pilot": 1000}),
    ("measure-valued", {"coupled": True}),
    ("measure-valued", {"coupled": False}),
]


# ---------------------------------------------------------------- problems and helpers


def gaussian_problem(
    cost: str, mu: Sequence[Any], sigma: Sequence[Any], k: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> Problem:
    """Normal(mu, sigma) with params of mu's shape and one of the three costs above."""
    mu_t = torch.tensor(mu, dtype=torch.float64)
    sigma_t = torch.tensor(sigma, dtype=torch.float64)
    terms: Callable[[Tensor], Tensor] | None
    if cost == "quadratic":
        terms = lambda z: (z - k) ** 2  # noqa: E731
        grad_mu, grad_sigma = 2 * (mu_t - k), 2 * sigma_t
    elif cost == "cos":
        terms = lambda z: torch.cos(k * z)  # noqa: E731
        damp = torch.exp(-0.5 * k**2 * sigma_t**2)
        grad_mu = -k * torch.sin(k * mu_t) * damp
        grad_sigma = -(k**2) * sigma_t * torch.cos(k * mu_t) * damp
    elif cost == "sum-squared":
        terms = None
        grad_mu, grad_sigma = torch.full_like(mu_t, 2 * mu_t.sum().item()), 2 * sigma_t
    else:
        raise ValueError(cost)

    def f(z: Tensor, params: object = None) -> Tensor:
        if terms is None:
            return z.flatten(1).sum(1) ** 2
        return terms(z).flatten(1).sum(1)

    return Problem(
        params={"mu": mu_t.to(dtype), "sigma": sigma_t.to(dtype)},
        distribution=lambda mu, sigma: Normal(mu, sigma),
        cost=f,
        capabilities=(DifferentiableCost(),) if terms is None else (
            DifferentiableCost(), SeparableCost(lambda z, params=None: terms(z))),
        exact_gradient={"mu": grad_mu.to(dtype), "sigma": grad_sigma.to(dtype)},
        truth_method="analytic",
    )


def estimate(name: str, problem: Problem, n: int, **hyper: Any) -> dict[str, Tensor]:
    """Run an estimator as the runner does (warm-up first, its state passed in), in float64."""
    estimator = get_estimator(name)
    state = {"state": estimator.warmup(problem, **hyper)} if estimator.warmup else {}
    out = estimator.fn(problem, n, **hyper, **state)
    return {key: value.double() for key, value in out.items()}


def assert_unbiased(rows: Tensor, truth: Tensor, label: str) -> None:
    n = rows.shape[0]
    mean, se = rows.mean(0), rows.std(0) / math.sqrt(n)
    err = (mean - truth.double()).abs()
    assert torch.all(err <= Z * se), f"{label}: mean {mean} truth {truth} se {se}"


def variance_and_se(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Sample variance per coordinate and its SE (the rows' squared deviations are i.i.d.)."""
    sq = (rows - rows.mean(0)) ** 2
    return sq.mean(0), sq.std(0) / math.sqrt(rows.shape[0])


SETTINGS = {
    "quadratic-1d": lambda: gaussian_problem("quadratic", [0.5], [1.0], k=1.5),
    "quadratic-3d": lambda: gaussian_problem("quadratic", [0.5, -1.0, 2.0], [1.0, 0.5, 2.0], k=1.0),
    "quadratic-offset": lambda: gaussian_problem("quadratic", [12.0], [4.2], k=0.0),
    "cos-2d": lambda: gaussian_problem("cos", [0.3, 1.2], [0.8, 1.5], k=1.3),
    "sum-squared-3d": lambda: gaussian_problem("sum-squared", [0.5, -1.0, 2.0], [1.0, 0.5, 2.0]),
    "sum-squared-2x3": lambda: gaussian_problem(
        "sum-squared", [[0.5, -1.0, 2.0], [0.0, 1.0, -0.3]], [[1.0, 0.5, 2.0], [0.7, 1.2, 0.9]]
    ),
}


# ---------------------------------------------------------------- unbiasedness


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize(("name", "hyper"), UNBIASED)
def test_unbiased_within_standard_errors(setting: str, name: str, hyper: dict[str, Any]) -> None:
    torch.manual_seed(1234)
    problem = SETTINGS[setting]()
    assert get_estimator(name).unbiased
    n = 50_000
    est = estimate(name, problem, n, **hyper)
    assert problem.exact_gradient is not None
    for param, value in problem.params.items():
        assert est[param].shape == (n, *value.shape)
        assert_unbiased(est[param], problem.exact_gradient[param], f"{name} {hyper} {param}")


@pytest.mark.parametrize(("name", "hyper"), UNBIASED)
def test_other_parameterizations_get_the_chain_rule(name: str, hyper: dict[str, Any]) -> None:
    """log-sigma: d/dlog_sigma = sigma d/dsigma = 2 sigma^2 (quadratic). A scalar sigma shared
    by all coordinates: d/dsigma = sum_i 2 sigma = 2 dim sigma."""
    torch.manual_seed(99)
    n = 50_000
    mu, sigma, k = torch.tensor([0.7, -1.3]), 1.6, 0.4
    log_sigma = torch.full((2,), math.log(sigma))
    problem = Problem(
        params={"mu": mu, "log_sigma": log_sigma},
        distribution=lambda mu, log_sigma: Normal(mu, log_sigma.exp()),
        cost=lambda z, params=None: ((z - k) ** 2).sum(-1),
        capabilities=(DifferentiableCost(), SeparableCost(lambda z, params=None: (z - k) ** 2)),
        exact_gradient={"mu": 2 * (mu - k), "log_sigma": torch.full((2,), 2 * sigma**2)},
        truth_method="analytic",
    )
    est = estimate(name, problem, n, **hyper)
    for param in problem.params:
        assert_unbiased(est[param], problem.exact_gradient[param], f"{name} log-sigma {param}")

    shared = Problem(
        params={"mu": mu, "sigma": torch.tensor(sigma)},
        distribution=lambda mu, sigma: Normal(mu, sigma.unsqueeze(-1).expand(mu.shape)),
        cost=lambda z, params=None: ((z - k) ** 2).sum(-1),
        capabilities=(DifferentiableCost(),),
        exact_gradient={"mu": 2 * (mu - k), "sigma": torch.tensor(2 * 2 * sigma)},
        truth_method="analytic",
    )
    est = estimate(name, shared, n, **hyper)
    assert est["sigma"].shape == (n,)
    for param in shared.params:
        assert_unbiased(est[param], shared.exact_gradient[param], f"{name} shared {param}")


# ---------------------------------------------------------------- shapes, dtypes, the control


@pytest.mark.parametrize("name", ["pathwise", "score-function", "score-function-loo",
                                  "score-function-cv", "measure-valued", "naive"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    for problem in (
        gaussian_problem("quadratic", [0.5, -1.0, 2.0], [1.0, 0.5, 2.0], dtype=dtype),
        gaussian_problem("sum-squared", [[0.5, 1.0], [0.0, 2.0]], [[1.0, 0.5], [2.0, 1.0]],
                         dtype=dtype),
    ):
        estimator = get_estimator(name)
        state = {"state": estimator.warmup(problem)} if estimator.warmup else {}
        assert_estimate_contract(estimator.fn(problem, 7, **state), problem, 7, dtype)


def test_naive_is_zero_so_its_bias_is_minus_the_truth() -> None:
    torch.manual_seed(0)
    estimator = get_estimator("naive")
    assert not estimator.unbiased
    assert estimator.applicability(gaussian_problem("cos", [0.3], [1.0], k=1.0)) is None
    for setting in ("quadratic-3d", "cos-2d", "sum-squared-3d"):
        problem = SETTINGS[setting]()
        assert problem.exact_gradient is not None
        out = estimate("naive", problem, 1000)
        for param, truth in problem.exact_gradient.items():
            assert torch.equal(out[param], torch.zeros_like(out[param]))
            bias = out[param].mean(0) - truth.double()
            assert torch.equal(bias, -truth.double())


# ---------------------------------------------------------------- variance claims


def test_measure_valued_variances_match_their_derivation_and_coupling_helps() -> None:
    """Quadratic cost, per coordinate, with a = mu - k and W, W' ~ Rayleigh, M ~ DS-Maxwell:

    sigma part: (f(mu + sigma M) - f(mu + sigma eps)) / sigma = 2a (M - eps) + sigma (M^2 - eps^2).
      uncoupled: Var = 4a^2 (E M^2 + 1) + sigma^2 (Var chi2_3 + Var chi2_1) = 16 a^2 + 8 sigma^2
      coupled (eps = M U): Var(M(1-U)) = 3 E(1-U)^2 = 1 and
        Var(M^2 (1 - U^2)) = E M^4 E(1-U^2)^2 - (3 * 2/3)^2 = 15 * 8/15 - 4 = 4,
        odd cross-moments vanish, so Var = 4 a^2 + 4 sigma^2.
    mean part: (f(mu + sigma W) - f(mu - sigma W')) / (sigma sqrt(2 pi))
      coupled: 4 a W / sqrt(2 pi), Var = 16 a^2 (2 - pi/2) / (2 pi)
      uncoupled: (2a (W + W') + sigma (W^2 - W'^2)) / sqrt(2 pi),
        Var = (4 a^2 (4 - pi) + 8 sigma^2) / (2 pi)   (W^2 ~ chi2_2 has variance 4).

    Why coupling helps: with common random numbers, the positive and negative parts move together
    (eps = M U shrinks M toward 0 but keeps its sign; the mean's two sides share W), so their
    difference cancels most of the noise each side carries alone.
    """
    torch.manual_seed(7)
    n = 200_000
    mu, sigma, k = torch.tensor([1.5, -0.4]), torch.tensor([0.8, 2.0]), 0.5
    problem = gaussian_problem("quadratic", mu.tolist(), sigma.tolist(), k=k, dtype=torch.float64)
    a = (mu - k).double()
    s = sigma.double()
    expected = {
        True: {"mu": 16 * a**2 * (2 - math.pi / 2) / (2 * math.pi), "sigma": 4 * a**2 + 4 * s**2},
        False: {"mu": (4 * a**2 * (4 - math.pi) + 8 * s**2) / (2 * math.pi),
                "sigma": 16 * a**2 + 8 * s**2},
    }
    measured = {}
    for coupled in (True, False):
        est = estimate("measure-valued", problem, n, coupled=coupled)
        for param in ("mu", "sigma"):
            var, se = variance_and_se(est[param])
            assert torch.all((var - expected[coupled][param]).abs() <= Z * se), (coupled, param)
            measured[coupled, param] = (var, se)
    (var_c, se_c), (var_u, se_u) = measured[True, "sigma"], measured[False, "sigma"]
    assert torch.all(var_u - var_c > Z * torch.sqrt(se_c**2 + se_u**2))


def test_loo_baseline_variance_sits_between_oracle_baseline_and_plain_score_function() -> None:
    """At mu = 12, sigma = 4.2, f = z^2 (a = 12), per-estimate variances (derived with
    E eps^{2,4,6,8} = 1, 3, 15, 105 and odd moments 0; s_mu = eps/sigma, s_sigma = (eps^2-1)/sigma):

      plain SF:  Var_mu = (a^4 + 18 a^2 sigma^2 + 15 sigma^4)/sigma^2 - 4 a^2
                 Var_sigma = (2 a^4 + 60 a^2 sigma^2 + 78 sigma^4)/sigma^2 - 4 sigma^2
      oracle baseline b = E f:  Var((f - E f) s):  mu: 8 a^2 + 10 sigma^2,
                                                   sigma: 40 a^2 + 56 sigma^2.

    LOO over K draws is the U-statistic with kernel (f_a - f_b)(s_a - s_b)/2, so
    K Var = 2/(K-1) (2 (K-2) zeta_1 + zeta_2) >= 4 zeta_1 = Var((f - E f) s) (zeta_2 >= 2 zeta_1):
    per evaluation it can never beat the oracle baseline, and approaches it as K grows. Here the
    mean of f dominates, so it should also beat plain SF per evaluation by a wide margin.
    """
    torch.manual_seed(11)
    n = 100_000
    a, sig = 12.0, 4.2
    problem = gaussian_problem("quadratic", [a], [sig], k=0.0, dtype=torch.float64)
    plain = {"mu": (a**4 + 18 * a**2 * sig**2 + 15 * sig**4) / sig**2 - 4 * a**2,
             "sigma": (2 * a**4 + 60 * a**2 * sig**2 + 78 * sig**4) / sig**2 - 4 * sig**2}
    oracle = {"mu": 8 * a**2 + 10 * sig**2, "sigma": 40 * a**2 + 56 * sig**2}

    sf = estimate("score-function", problem, n)
    for param in ("mu", "sigma"):
        var, se = variance_and_se(sf[param])
        assert torch.all((var - plain[param]).abs() <= Z * se), param

    previous = None
    for K in (2, 4, 16):
        loo = estimate("score-function-loo", problem, n, draws=K)
        for param in ("mu", "sigma"):
            var, se = variance_and_se(loo[param])
            per_eval, per_eval_se = K * var, K * se
            assert torch.all(per_eval >= oracle[param] - Z * per_eval_se), (K, param)
            assert torch.all(per_eval <= plain[param] - Z * per_eval_se), (K, param)
        if previous is not None:  # more draws per estimate: lower variance per estimate
            var_mu, se_mu = variance_and_se(loo["mu"])
            assert torch.all(previous[0] - var_mu > Z * torch.sqrt(previous[1] ** 2 + se_mu**2))
        previous = variance_and_se(loo["mu"])


# ---------------------------------------------------------------- vectorisation and accounting


@pytest.mark.parametrize("setting", ["quadratic-1d", "sum-squared-3d"])
@pytest.mark.parametrize("name", ["pathwise", "score-function", "score-function-loo",
                                  "score-function-cv", "measure-valued", "naive"])
def test_vectorised_and_evals_accounted_honestly(setting: str, name: str) -> None:
    """A large n finishes with a handful of batched cost calls (no per-sample loop), and the rows
    of f evaluated equal evals_per_estimate * n (+ warm-up evals) exactly."""
    torch.manual_seed(0)
    base = SETTINGS[setting]()
    cost, terms = CountingCost(base.cost), None
    capabilities: tuple = (DifferentiableCost(),)
    if (separable := base.offers(SeparableCost)) is not None:
        terms = CountingCost(separable.terms)
        capabilities += (SeparableCost(terms),)
    problem = Problem(params=base.params, distribution=base.distribution, cost=cost,
                      capabilities=capabilities, exact_gradient=base.exact_gradient,
                      truth_method=base.truth_method)
    # Deciding whether f depends on theta evaluates it once per problem; not an estimate's cost.
    problem.cost_depends_on_params()
    cost.rows.clear()
    estimator = get_estimator(name)
    hyper = {h.name: h.default for h in estimator.hyperparams.values()}
    n = 200_000
    out = estimate(name, problem, n, **hyper)
    assert all(value.shape[0] == n for value in out.values())

    calls = cost.rows + (terms.rows if terms else [])
    assert len(calls) <= 8, f"{len(calls)} cost calls: a loop over samples?"
    expected = estimator.evals_per_estimate(problem, hyper) * n
    expected += estimator.warmup_evals_total(problem, hyper)
    assert sum(calls) == expected


def test_evals_per_estimate_and_hyperparameter_checks() -> None:
    separable = SETTINGS["quadratic-3d"]()
    general = SETTINGS["sum-squared-3d"]()
    mv, loo, cv = (get_estimator(n) for n in
                   ("measure-valued", "score-function-loo", "score-function-cv"))
    assert mv.evals_per_estimate(separable, {"coupled": True}) == 4
    assert mv.evals_per_estimate(general, {"coupled": False}) == 4 * 3
    assert loo.evals_per_estimate(separable, {"draws": 7}) == 7
    assert cv.evals_per_estimate(separable, {"pilot": 500}) == 1
    assert cv.warmup_evals_total(separable, {"pilot": 500}) == 500
    assert loo.hyperparams["draws"].validate(1) is not None
    assert loo.hyperparams["draws"].validate(2) is None
    assert cv.hyperparams["pilot"].validate(1) is not None
    assert mv.hyperparams["coupled"].parse("false") is False
    with pytest.raises(ValueError, match="state"):
        cv.fn(separable, 10, pilot=100)
    for estimator in all_estimators().values():
        assert estimator.description, estimator.name


def test_requirements_gate_the_right_estimators() -> None:
    non_differentiable = Problem(
        params={"mu": torch.zeros(2), "sigma": torch.ones(2)},
        distribution=lambda mu, sigma: Normal(mu, sigma),
        cost=lambda z, params=None: (z > 0).sum(-1).to(z.dtype),
    )
    assert get_estimator("pathwise").applicability(non_differentiable) is not None
    for name in ("score-function", "score-function-loo", "score-function-cv", "measure-valued"):
        assert get_estimator(name).applicability(non_differentiable) is None
