"""Problems and helpers shared by the discrete-latent estimator tests (test_estimators_discrete,
test_estimators_relaxed): Bernoulli and one-hot categorical problems built here, with truths
derived by hand (closed forms) or by brute-force enumeration written out in this file.

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
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from scipy.integrate import quad
from torch import Tensor
from torch.distributions import Bernoulli, OneHotCategorical

from gradbench.core.capabilities import DifferentiableCost, RelaxedCost, SeparableCost
from gradbench.core.problem import Problem
from gradbench.estimators import get_estimator

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
