"""Statistical tests of the discrete-latent estimators on the Bernoulli and categorical problems of
discrete_problems (truths: closed forms and brute-force enumeration, derived there): unbiasedness,
exact variances, RELAX's warm-up, the conditional sampler, evaluation accounting and contracts.
The biased relaxations' means are tested in test_estimators_relaxed.

Unbiasedness: |mean - truth| <= 5 SE, SE = std / sqrt(n) of i.i.d. rows; variances against
formulas within 5 SE of the sample variance (SE = std((g - mean)^2) / sqrt(n)). Every test is
seeded, hence deterministic.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from discrete_problems import (
    F64,
    MINE,
    RELAXED,
    SETTINGS,
    UNBIASED,
    Z,
    assert_mean,
    assert_variance,
    bernoulli_problem,
    brute_force_gradient,
    categorical_problem,
    estimate,
    one_thread,  # noqa: F401 (an autouse fixture: this module runs on one thread)
    sigmoid,
    variance_and_se,
)
from helpers import CountingCost, assert_estimate_contract
from torch.distributions import Bernoulli, Normal, OneHotCategorical

from gradbench.core.problem import Problem
from gradbench.estimators import get_estimator
from gradbench.estimators._relaxations import discrete_view

# ---------------------------------------------------------------- unbiasedness


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize(("name", "hyper"), UNBIASED)
def test_unbiased_within_standard_errors(setting: str, name: str, hyper: dict[str, Any]) -> None:
    torch.manual_seed(2024)
    problem = SETTINGS[setting]()
    estimator = get_estimator(name)
    assert estimator.unbiased
    reason = estimator.applicability(problem)
    if name in ("arm", "disarm") and isinstance(problem.q(), OneHotCategorical):
        assert reason is not None and "Bernoulli" in reason  # ARM/DisARM are binary only
        return
    assert reason is None, reason
    n = 50_000
    est = estimate(name, problem, n, **hyper)
    assert problem.exact_gradient is not None
    for param, value in problem.params.items():
        assert est[param].shape == (n, *value.shape)
        assert_mean(est[param], problem.exact_gradient[param], f"{name} {hyper} {setting}")


def test_truths_used_here_agree_with_each_other() -> None:
    """The closed forms above against the brute-force enumeration (and bench's own)."""
    from gradbench.core.enumeration import exact_gradient

    for setting in ("logits-mixed-d5", "coupled-tanh-d4", "quadratic-form-probs-d3",
                    "categorical-2x3", "zero-on-support-bernoulli"):
        problem = SETTINGS[setting]()
        assert problem.exact_gradient is not None
        for param, grad in exact_gradient(problem).items():
            torch.testing.assert_close(grad, problem.exact_gradient[param], rtol=1e-12,
                                       atol=1e-14)
    theta = torch.tensor([2.0, 0.0, -2.5, 1.0, -0.5], dtype=F64)
    torch.testing.assert_close(brute_force_gradient(theta, lambda z: ((z - 0.45) ** 2).sum(-1)),
                               bernoulli_problem(theta.tolist(), 0.45).exact_gradient["logits"])


def test_exact_has_zero_variance_and_equals_truth() -> None:
    estimator = get_estimator("exact")
    assert estimator.family == "exact" and estimator.unbiased
    for setting in ("logits-mixed-d5", "probs-d3", "coupled-tanh-d4", "categorical-2x3"):
        problem = SETTINGS[setting]()
        out = estimator.fn(problem, 50)
        assert problem.exact_gradient is not None
        for param, rows in out.items():
            assert torch.equal(rows, rows[:1].expand_as(rows))  # every row identical: variance 0
            torch.testing.assert_close(rows[0], problem.exact_gradient[param], rtol=1e-12,
                                       atol=1e-14)
    assert estimator.evals_per_estimate(SETTINGS["logits-mixed-d5"](), {}) == 2**5
    assert estimator.evals_per_estimate(SETTINGS["categorical-2x3"](), {}) == 3**2



# ---------------------------------------------------------------- variances of unbiased ones


@pytest.mark.parametrize("theta", [0.0, 2.0, -2.5])
@pytest.mark.parametrize("t", [0.499, 0.45])
def test_one_dimensional_variances_match_their_derivation(theta: float, t: float) -> None:
    """dim 1, f = (b - t)^2, d/dtheta; D = 1 - 2t, q = min(p, 1 - p), truth g* = D p (1 - p):
        score function f(b)(b - p):  E g^2 = p (1-p)^2 f1^2 + (1-p) p^2 f0^2
        ARM: nonzero on two u-intervals of length q where it is +-D (u - 1/2):
             E g^2 = D^2 * 2 int_{1/2-q}^{1/2} w^2 dw = D^2 (2/3) (1/8 - (1/2 - q)^3)
        DisARM: D (1 - q)/2 with probability 2q, else 0:
             Var = D^2 q (1 - q)^2 (1/2 - q)  (zero at theta = 0: the pair always differs)
    """
    torch.manual_seed(8)
    n = 40_000
    problem = bernoulli_problem([theta], t)
    p = 1 / (1 + math.exp(-theta))
    q, d = min(p, 1 - p), 1 - 2 * t
    f1, f0 = (1 - t) ** 2, t**2
    truth = d * p * (1 - p)
    expected = {
        "score-function": p * (1 - p) ** 2 * f1**2 + (1 - p) * p**2 * f0**2 - truth**2,
        "arm": d**2 * (2 / 3) * (1 / 8 - (0.5 - q) ** 3) - truth**2,
        "disarm": d**2 * q * (1 - q) ** 2 * (0.5 - q),
    }
    for name, var in expected.items():
        rows = estimate(name, problem, n)["logits"]
        assert_mean(rows, truth, name)
        assert_variance(rows, var, name)
        if name == "disarm" and theta == 0:
            torch.testing.assert_close(rows, torch.full_like(rows, d / 4), rtol=1e-12, atol=0)
    assert expected["disarm"] <= expected["arm"] + 1e-18


def test_relax_warmup_cuts_variance_below_rebar_and_is_seeded() -> None:
    """The REBAR toy, theta = 0, t = 0.499, dim 1: RELAX's fitted surrogate (default budget) has
    a variance far below REBAR's at its starting point (eta = 1, tau = 0.5) and below the plain
    score function's; the warm-up depends only on the global generator's seed."""
    problem = bernoulli_problem([0.0], 0.499)
    relax = get_estimator("relax")
    torch.manual_seed(9)
    state = relax.warmup(problem)
    torch.manual_seed(9)
    again = relax.warmup(problem)
    assert all(torch.equal(state[k], again[k]) for k in state)
    torch.manual_seed(10)
    n = 20_000
    relaxed = relax.fn(problem, n, state=state)["logits"]
    rebar = estimate("rebar", problem, n)["logits"]
    score = estimate("score-function", problem, n)["logits"]
    assert_mean(relaxed, problem.exact_gradient["logits"], "relax")  # type: ignore[index]
    (v_relax, se_relax), (v_rebar, se_rebar) = variance_and_se(relaxed), variance_and_se(rebar)
    v_score, se_score = variance_and_se(score)
    assert torch.all(v_rebar - v_relax > Z * torch.sqrt(se_relax**2 + se_rebar**2))
    assert torch.all(v_score - v_relax > Z * torch.sqrt(se_relax**2 + se_score**2))
    assert torch.all(v_relax < 0.05 * v_score)
    with pytest.raises(ValueError, match="state"):
        relax.fn(problem, 10)


# ---------------------------------------------------------------- the conditional sampler


def test_conditional_draws_have_the_right_law() -> None:
    """z~ ~ p(z | H(z) = b) with b ~ q: H(z~) = b always, and the mixture over b is the
    unconditional law (Logistic(theta) / theta + Gumbel), checked through CDFs at a few points
    (binomial SEs)."""
    torch.manual_seed(11)
    n = 100_000
    theta = torch.tensor([1.3, -0.4], dtype=F64)
    d = discrete_view(Bernoulli(logits=theta.expand(n, 2)))
    b = Bernoulli(logits=theta.expand(n, 2)).sample()
    z = d.conditional(b)
    assert torch.equal(d.hard(z), b)
    for x in (-2.0, -0.5, 0.0, 0.7, 2.5):
        hit = (z <= x).double()
        assert_mean(hit, sigmoid(x - theta), f"bernoulli conditional cdf at {x}")

    logits = torch.log_softmax(torch.tensor([[0.5, -1.0, 1.5, 0.0]], dtype=F64), -1)
    q = OneHotCategorical(logits=logits.expand(n, 1, 4))
    d = discrete_view(q)
    b = q.sample()
    z = d.conditional(b, copies=2)
    assert z.shape == (2, n, 1, 4)
    assert torch.equal(d.hard(z[0]), b) and torch.equal(d.hard(z[1]), b)
    for x in (-1.0, 0.3, 2.0):
        hit = (z[0] <= x).double()
        assert_mean(hit, torch.exp(-torch.exp(-(x - logits))), f"gumbel conditional cdf at {x}")
        top = (z[0].max(-1).values <= x).double()  # max of th + G is Gumbel(logsumexp th = 0)
        assert_mean(top, math.exp(-math.exp(-x)), f"gumbel max cdf at {x}")


# ---------------------------------------------------------------- accounting and contracts


@pytest.mark.parametrize("setting", ["logits-mixed-d5", "categorical-2x3"])
@pytest.mark.parametrize("name", MINE)
def test_vectorised_and_evals_accounted_honestly(setting: str, name: str) -> None:
    torch.manual_seed(0)
    base = SETTINGS[setting]()
    cost = CountingCost(base.cost)
    problem = Problem(params=base.params, distribution=base.distribution, cost=cost,
                      capabilities=RELAXED)
    # Deciding whether f depends on theta evaluates it once per problem; not an estimate's cost.
    problem.cost_depends_on_params()
    cost.rows.clear()
    estimator = get_estimator(name)
    if estimator.applicability(problem) is not None:
        assert name in ("arm", "disarm") and setting == "categorical-2x3"
        return
    hyper = {h.name: h.default for h in estimator.hyperparams.values()}
    if name == "relax":
        hyper.update(warmup_steps=5)
    state = {"state": estimator.warmup(problem, **hyper)} if estimator.warmup else {}
    warmup_rows, warmup_calls = sum(cost.rows), len(cost.rows)
    assert warmup_rows == estimator.warmup_evals_total(problem, hyper)
    n = 50_000
    out = estimator.fn(problem, n, **hyper, **state)
    calls = cost.rows[warmup_calls:]
    assert all(v.shape[0] == n for v in out.values())
    assert len(calls) <= 3, f"{len(calls)} cost calls: a loop over samples?"
    evals = estimator.evals_per_estimate(problem, hyper)
    if name == "exact":  # one enumeration per call, standing for `evals` per estimate
        assert sum(calls) == evals
    else:
        assert sum(calls) == evals * n
    expected = {"straight-through": 1, "gumbel-softmax": 1, "straight-through-gumbel": 1,
                "gumbel-rao": 1, "arm": 2, "disarm": 2, "rebar": 3, "relax": 3,
                "exact": 2**5 if setting == "logits-mixed-d5" else 3**2}
    assert evals == expected[name]
    if name == "relax":
        assert warmup_rows == 5 * 64 * 3


@pytest.mark.parametrize("name", [*MINE, "score-function", "score-function-loo"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    estimator = get_estimator(name)
    for problem in (bernoulli_problem([0.5, -1.0, 2.0], 0.45, dtype=dtype),
                    bernoulli_problem([0.2, 0.7], 0.45, param="p", dtype=dtype),
                    categorical_problem(dtype=dtype)):
        if estimator.applicability(problem) is not None:
            continue
        hyper = {"warmup_steps": 3} if name == "relax" else {}
        state = {"state": estimator.warmup(problem, **hyper)} if estimator.warmup else {}
        assert_estimate_contract(estimator.fn(problem, 7, **hyper, **state), problem, 7, dtype)


def test_hyperparameter_validation() -> None:
    problem = bernoulli_problem([0.0], 0.45)
    for name in ("gumbel-softmax", "straight-through-gumbel", "gumbel-rao", "rebar", "relax"):
        tau = get_estimator(name).hyperparams["tau"]
        for bad in (0.0, -0.5, math.inf, math.nan):
            assert tau.validate(bad) is not None, (name, bad)
        assert tau.validate(0.5) is None
        with pytest.raises(ValueError, match="tau"):
            get_estimator(name).fn(problem, 4, tau=0.0)
    m = get_estimator("gumbel-rao").hyperparams["m"]
    assert m.validate(0) is not None and m.validate(1) is None
    with pytest.raises(ValueError, match="m must be"):
        get_estimator("gumbel-rao").fn(problem, 4, m=0)
    eta = get_estimator("rebar").hyperparams["eta"]
    assert eta.validate(math.nan) is not None and eta.validate(-2.0) is None
    relax = get_estimator("relax").hyperparams
    assert relax["warmup_steps"].validate(-1) is not None
    assert relax["warmup_steps"].validate(0) is None
    assert relax["warmup_batch"].validate(0) is not None
    assert relax["lr"].validate(0.0) is not None
    with pytest.raises(ValueError, match="warmup_batch"):
        get_estimator("relax").warmup(problem, warmup_batch=0)
    assert get_estimator("gumbel-rao").hyperparams["m"].parse("12") == 12


def test_applicability_reasons() -> None:
    bern = bernoulli_problem([0.0], 0.45)
    cat = categorical_problem()
    big = bernoulli_problem([0.0] * 20, 0.45)
    hard_cost = Problem(params={"logits": torch.zeros(2, dtype=F64)},
                        distribution=lambda logits: Bernoulli(logits=logits),
                        cost=lambda z, params=None: (z.sum(-1) == 1).to(z.dtype))
    gauss = Problem(params={"mu": torch.zeros(2, dtype=F64)},
                    distribution=lambda mu: Normal(mu, torch.ones_like(mu)),
                    cost=lambda z, params=None: z.sum(-1))
    for name in MINE:
        assert get_estimator(name).applicability(bern) is None, name
    for name in ("arm", "disarm"):
        reason = get_estimator(name).applicability(cat)
        assert reason is not None and "Bernoulli" in reason and "OneHotCategorical" in reason
    for name in ("straight-through", "gumbel-softmax", "straight-through-gumbel", "gumbel-rao",
                 "rebar", "relax", "exact"):
        assert get_estimator(name).applicability(cat) is None, name
    reason = get_estimator("exact").applicability(big)
    assert reason is not None and "2^20" in reason and "2^16" in reason
    for name in ("straight-through", "gumbel-softmax", "straight-through-gumbel", "gumbel-rao",
                 "rebar", "relax"):
        reason = get_estimator(name).applicability(hard_cost)
        assert reason is not None and reason.startswith("the problem offers no relaxed cost"), name
        assert "Bernoulli or one-hot categorical" in str(get_estimator(name).applicability(gauss))
    for name in ("arm", "disarm", "exact"):
        assert get_estimator(name).applicability(hard_cost) is None
    assert "no finite support" in str(get_estimator("exact").applicability(gauss))
    for name in MINE:
        estimator = get_estimator(name)
        assert estimator.description and not estimator.description.endswith(":"), name
