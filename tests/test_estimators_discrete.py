"""Statistical tests of the discrete-latent estimators on Bernoulli and one-hot categorical problems
built here, with truths derived by hand (closed forms), by brute-force enumeration written out in
this file, or by 1-D numerical integration (scipy quad) for the biased relaxations' means.

Closed forms (p = sigma(theta) = P(b = 1), D = f(1) - f(0) = 1 - 2t for f = sum_i (b_i - t)^2):

    E[(b - t)^2] = t^2 + p (1 - 2t)    d/dp = 1 - 2t    d/dtheta = (1 - 2t) p (1 - p)
    quadratic form f = (b - t)^T A (b - t):
        E = sum_{i != j} A_ij (p_i - t)(p_j - t) + sum_i A_ii (t^2 + p_i (1 - 2t))
        dE/dp_k = sum_{j != k} (A_kj + A_jk)(p_j - t) + A_kk (1 - 2t)
    categorical, z_i one-hot with probs p_i., f = sum_i (z_i . v - t)^2, a_k = (v_k - t)^2:
        E = sum_i sum_k p_ik a_k,  dE/dlogits_ik = p_ik (a_k - sum_j p_ij a_j)
    "zero on the support": f = sum y (1 - y) (Bernoulli), f = sum_i (1 - |y_i|^2) (categorical)
        vanish at every discrete point, so E_q[f] = 0 and the gradient is 0 for every theta,
        while f is large on the relaxation: the score terms vanish and what REBAR / RELAX
        return is their control variate alone, whose mean must be 0 (a sharp test of the
        conditional sampler z~ | b and its reparameterization).

Unbiasedness: |mean - truth| <= 5 SE, SE = std / sqrt(n) of i.i.d. rows; variances against
formulas within 5 SE of the sample variance (SE = std((g - mean)^2) / sqrt(n)). Every test is
seeded, hence deterministic.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from helpers import CountingCost, assert_estimate_contract
from scipy.integrate import quad
from torch import Tensor
from torch.distributions import Bernoulli, Normal, OneHotCategorical

from gradbench.core.capabilities import DifferentiableCost, RelaxedCost, SeparableCost
from gradbench.core.problem import Problem
from gradbench.estimators import get_estimator
from gradbench.estimators._relaxations import discrete_view

Z = 5.0
F64 = torch.float64
MINE = ["straight-through", "gumbel-softmax", "straight-through-gumbel", "gumbel-rao", "arm",
        "disarm", "rebar", "relax", "exact"]
FAST_RELAX = {"warmup_steps": 10, "warmup_batch": 32}  # any surrogate is unbiased
UNBIASED = [
    ("score-function", {}),
    ("score-function-loo", {"draws": 4}),
    ("score-function-cv", {"pilot": 1000}),
    ("arm", {}),
    ("disarm", {}),
    ("rebar", {}),
    ("rebar", {"eta": 0.3, "tau": 2.0}),
    ("relax", FAST_RELAX),
    ("exact", {}),
]


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run many small autograd graphs; on the shared 2-core machine two intra-op
    threads made them ~9x slower (measured: RELAX warm-up 1.7 s on 1 thread, 14.5 s on 2), so
    run this module on one thread and restore the session's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- problems with exact truths


def sigmoid(x: Tensor) -> Tensor:
    return torch.sigmoid(x)


def bernoulli_problem(theta: Sequence[float], t: float, param: str = "logits",
                      dtype: torch.dtype = F64) -> Problem:
    """f = sum_i (b_i - t)^2 with Bernoulli(logits=theta) or Bernoulli(probs=theta)."""
    value = torch.tensor(theta, dtype=F64)
    if param == "logits":
        p = sigmoid(value)
        grad = (1 - 2 * t) * p * (1 - p)
        distribution: Callable[..., Any] = lambda logits: Bernoulli(logits=logits)  # noqa: E731
    else:
        grad = torch.full_like(value, 1 - 2 * t)
        distribution = lambda p: Bernoulli(probs=p)  # noqa: E731
    return Problem(
        params={param: value.to(dtype)}, distribution=distribution,
        cost=lambda z, params=None: ((z - t) ** 2).sum(-1),
        capabilities=(SeparableCost(lambda z, params=None: (z - t) ** 2), DifferentiableCost(),
                      RelaxedCost()),
        exact_gradient={param: grad.to(dtype)},
        truth_method="analytic",
    )


RELAXED = (DifferentiableCost(), RelaxedCost())


def brute_force_gradient(theta: Tensor, cost: Callable[[Tensor], Tensor]) -> Tensor:
    """d/dtheta sum_b prod_i p_i^b_i (1 - p_i)^(1 - b_i) f(b), p = sigmoid(theta), by listing all
    2^dim states with itertools (independent of bench.enumeration)."""
    leaf = theta.detach().to(F64).requires_grad_(True)
    p = sigmoid(leaf)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=theta.numel())), dtype=F64)
    prob = (p**states * (1 - p) ** (1 - states)).prod(-1)
    (grad,) = torch.autograd.grad((prob * cost(states)).sum(), leaf)
    return grad


# A fixed one-layer tanh network (non-separable): f(b) = v . tanh(W b + c).
_W = torch.tensor([[1.5, -2.0, 0.7, 1.1], [-0.4, 0.9, 2.2, -1.3], [0.8, 0.3, -1.7, 2.4]], dtype=F64)
_C = torch.tensor([0.2, -0.5, 0.1], dtype=F64)
_V = torch.tensor([1.0, -0.8, 0.6], dtype=F64)


def _tanh_net(z: Tensor, params: object = None) -> Tensor:
    return torch.tanh(z @ _W.T.to(z.dtype) + _C.to(z.dtype)) @ _V.to(z.dtype)


def coupled_problem() -> Problem:
    theta = torch.tensor([0.3, -1.0, 1.5, 0.0], dtype=F64)
    return Problem(
        params={"logits": theta}, distribution=lambda logits: Bernoulli(logits=logits),
        cost=_tanh_net, capabilities=(DifferentiableCost(), RelaxedCost()),
        exact_gradient={"logits": brute_force_gradient(theta, _tanh_net)},
        truth_method="enumeration",
    )


def quadratic_form_problem() -> Problem:
    """Bernoulli(probs=p), f = (b - t)^T A (b - t) with a non-symmetric A: closed-form truth."""
    p = torch.tensor([0.3, 0.55, 0.8], dtype=F64)
    a = torch.tensor([[1.0, -2.0, 0.5], [0.7, 0.4, 1.5], [-1.2, 0.3, 2.0]], dtype=F64)
    t = 0.3
    grad = torch.stack([
        sum((a[k, j] + a[j, k]) * (p[j] - t) for j in range(3) if j != k) + a[k, k] * (1 - 2 * t)
        for k in range(3)
    ])

    def cost(z: Tensor, params: object = None) -> Tensor:
        d = z - t
        return ((d @ a.T.to(z.dtype)) * d).sum(-1)

    return Problem(params={"p": p}, distribution=lambda p: Bernoulli(probs=p), cost=cost,
                   capabilities=RELAXED, exact_gradient={"p": grad}, truth_method="analytic")


def categorical_problem(dtype: torch.dtype = F64) -> Problem:
    logits = torch.tensor([[0.0, 1.0, -1.0], [0.5, 0.2, -2.0]], dtype=F64)
    v, t = torch.tensor([1.0, 2.0, 3.0], dtype=F64), 1.5
    p = torch.softmax(logits, -1)
    a = (v - t) ** 2
    grad = p * (a - (p * a).sum(-1, keepdim=True))
    return Problem(
        params={"logits": logits.to(dtype)},
        distribution=lambda logits: OneHotCategorical(logits=logits),
        cost=lambda z, params=None: ((z @ v.to(z.dtype) - t) ** 2).sum(-1),
        capabilities=RELAXED,
        exact_gradient={"logits": grad.to(dtype)}, truth_method="analytic",
    )


def zero_on_support_problem(kind: str) -> Problem:
    if kind == "bernoulli":
        params = {"logits": torch.tensor([0.4, -1.2, 2.0], dtype=F64)}
        distribution: Callable[..., Any] = lambda logits: Bernoulli(logits=logits)  # noqa: E731
        cost: Callable[..., Tensor] = lambda y, params=None: (y * (1 - y)).sum(-1)  # noqa: E731
    else:
        params = {"logits": torch.tensor([[0.3, -0.6, 1.1], [1.5, 0.0, -0.4]], dtype=F64)}
        distribution = lambda logits: OneHotCategorical(logits=logits)  # noqa: E731
        cost = lambda y, params=None: (1 - (y**2).sum(-1)).sum(-1)  # noqa: E731
    zero = {k: torch.zeros_like(v) for k, v in params.items()}
    return Problem(params=params, distribution=distribution, cost=cost, capabilities=RELAXED,
                   exact_gradient=zero, truth_method="analytic")


SETTINGS: dict[str, Callable[[], Problem]] = {
    "logits-th0-t0.45-d1": lambda: bernoulli_problem([0.0], 0.45),
    "logits-th2-t0.499-d1": lambda: bernoulli_problem([2.0], 0.499),
    "logits-th0-t0.499-d5": lambda: bernoulli_problem([0.0] * 5, 0.499),
    "logits-th2-t0.45-d5": lambda: bernoulli_problem([2.0] * 5, 0.45),
    "logits-mixed-d5": lambda: bernoulli_problem([2.0, 0.0, -2.5, 1.0, -0.5], 0.45),
    "probs-d3": lambda: bernoulli_problem([0.25, 0.6, 0.9], 0.45, param="p"),
    "coupled-tanh-d4": coupled_problem,
    "quadratic-form-probs-d3": quadratic_form_problem,
    "categorical-2x3": categorical_problem,
    "zero-on-support-bernoulli": lambda: zero_on_support_problem("bernoulli"),
    "zero-on-support-categorical": lambda: zero_on_support_problem("categorical"),
}


# ---------------------------------------------------------------- helpers


def estimate(name: str, problem: Problem, n: int, **hyper: Any) -> dict[str, Tensor]:
    """Run an estimator as the runner does (warm-up first, its state passed in), in float64."""
    estimator = get_estimator(name)
    state = {"state": estimator.warmup(problem, **hyper)} if estimator.warmup else {}
    out = estimator.fn(problem, n, **hyper, **state)
    return {key: value.double() for key, value in out.items()}


def mean_and_se(rows: Tensor) -> tuple[Tensor, Tensor]:
    return rows.mean(0), rows.std(0) / math.sqrt(rows.shape[0])


def assert_mean(rows: Tensor, expected: Tensor | float, label: str) -> None:
    mean, se = mean_and_se(rows)
    err = (mean - torch.as_tensor(expected, dtype=F64)).abs()
    # + 1e-12: rounding slack for zero-variance rows (DisARM at theta = 0, score-function-cv).
    assert torch.all(err <= Z * se + 1e-12), f"{label}: mean {mean} expected {expected} se {se}"


def variance_and_se(rows: Tensor) -> tuple[Tensor, Tensor]:
    sq = (rows - rows.mean(0)) ** 2
    return sq.mean(0), sq.std(0) / math.sqrt(rows.shape[0])


def assert_variance(rows: Tensor, expected: float, label: str) -> None:
    var, se = variance_and_se(rows)
    ok = (var - expected).abs() <= Z * se + 1e-12
    assert torch.all(ok), f"{label}: var {var} expected {expected} se {se}"


def logistic_density(x: float) -> float:
    e = math.exp(-abs(x))
    return e / (1 + e) ** 2


def sig(x: float) -> float:
    return 0.5 * (1 + math.tanh(x / 2))


def integrate(fn: Callable[[float], float], lo: float = -math.inf, hi: float = math.inf) -> float:
    value, error = quad(fn, lo, hi, epsabs=1e-13, epsrel=1e-12, limit=500)
    assert error < 1e-9
    return value


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
