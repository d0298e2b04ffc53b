"""Bernoulli suites: b ~ Bernoulli in `dim` independent coordinates; the gradient is taken with
respect to the distribution's own parameters (logits, or probabilities for bernoulli-probs).

Closed forms (derived by hand, checked against sympy and enumeration in
tests/test_suites_discrete.py). Per coordinate, with p = P(b = 1):

    E[(b - t)^2] = p (1 - t)^2 + (1 - p) t^2 = t^2 + p (1 - 2 t)
    d/dp          = 1 - 2 t
    d/dtheta      = sigma(theta) (1 - sigma(theta)) (1 - 2 t)      (p = sigma(theta), logits)

bernoulli-toy (logits) holds the classic hard case t = 0.499: the true gradient is
0.25 * 0.002 = 5e-4 at theta = 0 while a REINFORCE estimate f(b) (b - p) is about +-0.125, an SNR
of ~0.004 (Tucker et al. 2017, REBAR; Grathwohl et al. 2018, RELAX).

bernoulli-probs parameterizes by p itself, so that the well-known tutorial example is a setting:
y ~ Bernoulli(p), p = 0.25, d/dp E[y^2] = 1 (t = 0). Straight-through differentiates f at the hard
sample, d f/d y = 2 y, whose mean is 2 p = 0.5 (biased by -0.5); a low-temperature Gumbel-softmax
relaxation gives about 0.94. Why a separate suite rather than a parameterization switch: a
Problem's gradient is w.r.t. its own `params`, and d/dp = d/dtheta / (p (1 - p)) is a different
quantity with a different variance; a separate name keeps results columns unambiguous.

bernoulli-coupled makes coordinates interact: f(b) = v . tanh(W b + c), a fixed random one-layer
network (see `coupled_network`) drawn from a generator seeded by `net_seed`, so the problem is a
pure function of its settings. The logits are the scalar `theta` in every coordinate (rather than
drawn from that generator): one knob for how far p is from 1/2, which is what decides, e.g.,
whether straight-through is nearly unbiased (p = 1/2) or not. Truth is exact enumeration for
dim <= 16 and otherwise a reference value: the mean of the local-expectation (exact conditional)
estimator over many samples, with its standard error as `truth_se` (see `coupled_reference`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Bernoulli

from gradbench.core import enumeration
from gradbench.core.capabilities import DifferentiableCost, RelaxedCost, SeparableCost
from gradbench.core.moments import Moments
from gradbench.core.params import at_least, finite
from gradbench.core.problem import Problem
from gradbench.core.seeding import derive_seed
from gradbench.core.suite import Setting, register_suite

# ---------------------------------------------------------------- shared pieces


def probability(value: float) -> str | None:
    """Domain check for a Bernoulli probability: strictly inside (0, 1), where logits are finite
    and the log-probability (hence the score) is defined for both outcomes."""
    return None if 0 < value < 1 else "must be strictly between 0 and 1"


def check_resolution(p: float, dtype: torch.dtype) -> None:
    """Refuse p closer to 0 or 1 than the dtype's resolution: torch.distributions clamps
    probabilities to [eps, 1 - eps], so there every gradient with respect to p (score, enumeration,
    relaxations) would be zero instead of the truth. Raises ValueError naming the bounds."""
    eps = torch.finfo(dtype).eps
    if not eps <= p <= 1 - eps:
        name = str(dtype).removeprefix("torch.")
        raise ValueError(f"p={p!r} is closer to 0 or 1 than {name} resolves: torch clamps "
                         f"probabilities to [{eps:.3g}, 1 - {eps:.3g}], which would make every "
                         "gradient with respect to p zero; give p in that range (or use "
                         "bernoulli-toy's logits for extreme probabilities)")


def _quadratic_terms(t: float) -> Callable[..., Tensor]:
    def terms(b: Tensor, params: object = None) -> Tensor:
        # Defined on the relaxation [0, 1] too, and differentiable there: d/db = 2 (b - t).
        return (b - t) ** 2

    return terms


def _logits_bernoulli(logits: Tensor) -> Bernoulli:
    return Bernoulli(logits=logits)


def _probs_bernoulli(p: Tensor) -> Bernoulli:
    return Bernoulli(probs=p)


def _separable_problem(
    name: str, value: float, grad: float, t: float, dim: int,
    distribution: Callable[..., Bernoulli], settings: dict[str, float | int],
    device: torch.device, dtype: torch.dtype,
) -> Problem:
    terms = _quadratic_terms(t)

    def cost(b: Tensor, params: object = None) -> Tensor:
        return terms(b).sum(dim=-1)

    return Problem(
        params={name: torch.full((dim,), value, device=device, dtype=dtype)},
        distribution=distribution,
        cost=cost,
        capabilities=(SeparableCost(terms), DifferentiableCost(), RelaxedCost()),
        exact_gradient={name: torch.full((dim,), grad, device=device, dtype=dtype)},
        truth_method="analytic",
        settings=settings,
    )


def toy_gradient(theta: float, t: float) -> float:
    """d/dtheta E[(b - t)^2], b ~ Bernoulli(sigmoid(theta)): sigma(theta)(1 - sigma(theta))(1 - 2t).

    sigma (1 - sigma) is computed as sigmoid(theta) * sigmoid(-theta), which keeps full relative
    precision for large |theta| (1 - sigmoid(theta) would cancel to 0 in float64 beyond ~37)."""
    return _sigmoid(theta) * _sigmoid(-theta) * (1 - 2 * t)


def _sigmoid(x: float) -> float:
    # Stable for either sign of x (math.exp(-x) overflows for x < -709).
    if x >= 0:
        return 1 / (1 + math.exp(-x))
    e = math.exp(x)
    return e / (1 + e)


def probs_gradient(t: float) -> float:
    """d/dp E[(b - t)^2], b ~ Bernoulli(p): 1 - 2t, for any p (the expectation is linear in p)."""
    return 1 - 2 * t


# ---------------------------------------------------------------- bernoulli-toy


def _t_setting(default: tuple[float, ...]) -> Setting:
    return Setting("t", float, default, "target of the quadratic, f = sum_i (b_i - t)^2", finite)


# Default grid (12 cells). t = 0.499 is the classic hard case: the gradient (1 - 2t) p (1 - p) is
# 500x smaller than at t = 0 and REINFORCE's SNR is ~0.004; t = 0.45 is the same cost with a
# 50x larger gradient. theta = 0 (p = 1/2) is where straight-through happens to be unbiased for
# this cost (its mean 2 (p - t) p (1 - p) equals the truth at p = 1/2); theta = 2 and -2.5
# (p = 0.88, 0.076) are where it is badly biased, even in sign. dim = 20 adds the other
# coordinates' noise to every score-function estimate (variance ~ dim), dim = 1 has none.
#
# 20,000 estimates per cell: in the hard case the quantity that separates estimators is the
# variance, not the (unresolvable) mean, and its relative SE is ~sqrt(2 / n) = 1%. Even so a
# REINFORCE mean has SE 0.125 / sqrt(2e4) = 8.8e-4 > |truth| = 5e-4 there: resolving its sign
# needs ~10^6 draws, which is the point of the case. The whole default grid is ~1e6 coordinate
# estimates per estimator: seconds on one core.
@register_suite(
    "bernoulli-toy",
    offers=(SeparableCost, DifferentiableCost, RelaxedCost),
    settings=(
        Setting("theta", float, (0.0, 2.0, -2.5), "logit of every coordinate, p = sigmoid(theta)",
                finite),
        _t_setting((0.499, 0.45)),
        Setting("dim", int, (1, 20), "number of independent coordinates", at_least(1)),
    ),
    samples=20_000,
)
def bernoulli_toy(
    theta: float, t: float, dim: int, *, device: torch.device, dtype: torch.dtype
) -> Problem:
    """f(b) = sum_i (b_i - t)^2, b ~ Bernoulli(logits=theta)^dim: t = 0.499 is the REBAR toy."""
    return _separable_problem(
        "logits", theta, toy_gradient(theta, t), t, dim, _logits_bernoulli,
        {"theta": theta, "t": t, "dim": dim}, device, dtype,
    )


# ---------------------------------------------------------------- bernoulli-probs


# Default grid (8 cells). p = 0.25, t = 0 is the tutorial: d/dp E[y^2] = 1, straight-through
# averages 2p = 0.5. t = 0.45 shrinks the truth to 0.1 while straight-through averages
# 2 (p - t) = -0.4 at p = 0.25 (wrong sign) and +0.6 at p = 0.75. Samples as for bernoulli-toy.
@register_suite(
    "bernoulli-probs",
    offers=(SeparableCost, DifferentiableCost, RelaxedCost),
    settings=(
        Setting("p", float, (0.25, 0.75), "P(b_i = 1) of every coordinate (the parameter)",
                probability),
        _t_setting((0.0, 0.45)),
        Setting("dim", int, (1, 20), "number of independent coordinates", at_least(1)),
    ),
    samples=20_000,
)
def bernoulli_probs(
    p: float, t: float, dim: int, *, device: torch.device, dtype: torch.dtype
) -> Problem:
    """f(b) = sum_i (b_i - t)^2, b ~ Bernoulli(probs=p)^dim, d/dp; t=0, p=0.25: E y^2 tutorial."""
    check_resolution(p, dtype)
    return _separable_problem(
        "p", p, probs_gradient(t), t, dim, _probs_bernoulli, {"p": p, "t": t, "dim": dim},
        device, dtype,
    )


# ---------------------------------------------------------------- bernoulli-coupled

# Element budget of one reference run, in tanh evaluations: the number of reference samples is
# REFERENCE_BUDGET / (dim * hidden), clamped to [REFERENCE_MIN, REFERENCE_MAX]. At the default
# dim = 200, hidden = 32 that is 2^15 samples: ~2.5 s on one core (the dim x hidden tanh's per
# sample, ~8 ns each in float64, are nearly all of it).
REFERENCE_BUDGET = (1 << 15) * 200 * 32
REFERENCE_MIN = 1 << 12
REFERENCE_MAX = 1 << 17
# Elements of the [chunk, dim, hidden] flip batch: 8 MB of float64, cache-friendly on the CPU.
_REFERENCE_CHUNK_ELEMENTS = 1 << 20


def coupled_network(dim: int, hidden: int, net_seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """The fixed network (W [hidden, dim], c [hidden], v [hidden]) in float64 on the CPU, drawn
    from its own generator seeded by net_seed: the problem is a pure function of its settings.

    Scales: W ~ N(0, 4 / dim), c ~ N(0, 1), v ~ N(0, 1 / hidden). With b half ones, W b has
    mean and fluctuation of sd ~1 each, so pre-activations sit in tanh's curved range (a
    coupled, non-linear cost) at any dim; v keeps f = O(1) at any width.
    """
    gen = torch.Generator().manual_seed(net_seed)
    w = torch.randn(hidden, dim, generator=gen, dtype=torch.float64) * (2 / math.sqrt(dim))
    c = torch.randn(hidden, generator=gen, dtype=torch.float64)
    v = torch.randn(hidden, generator=gen, dtype=torch.float64) / math.sqrt(hidden)
    return w, c, v


def _network_cost(w: Tensor, c: Tensor, v: Tensor) -> Callable[..., Tensor]:
    def cost(b: Tensor, params: object = None) -> Tensor:
        # .to is a no-op when b already has the network's dtype and device; it lets the float64
        # enumeration and relaxed float inputs of any dtype through.
        ww, cc, vv = (x.to(dtype=b.dtype, device=b.device) for x in (w, c, v))
        return torch.tanh(b @ ww.T + cc) @ vv

    return cost


def reference_samples(dim: int, hidden: int) -> int:
    """How many local-expectation samples `coupled_reference` draws by default."""
    return max(REFERENCE_MIN, min(REFERENCE_MAX, REFERENCE_BUDGET // (dim * hidden)))


def local_expectation(b: Tensor, logits: Tensor, w: Tensor, c: Tensor, v: Tensor) -> Tensor:
    """Per-sample local-expectation gradients g [m, dim] for draws b [m, dim] of
    Bernoulli(logits) and the cost f(b) = v . tanh(W b + c):

        g_i = sigma'(theta_i) (f(b with b_i = 1) - f(b with b_i = 0))
            = sigma'(theta_i) (2 b_i - 1) (f(b) - f(b xor e_i)),

    since one of the two is f(b) itself. Flipping b_i shifts h = W b + c by (1 - 2 b_i) W[:, i],
    so the dim flipped costs take dim x hidden tanh's per sample, not dim forward passes.
    """
    wt = w.T.contiguous()  # [dim, hidden]: row i is the pre-activation shift of flipping b_i
    slope = torch.sigmoid(logits) * torch.sigmoid(-logits)  # sigma' without 1 - p cancelling
    h = b @ wt + c  # [m, hidden]
    f_b = torch.tanh(h) @ v  # [m]
    sign = 1 - 2 * b  # +1 where flipping adds W[:, i] (b_i = 0), -1 where it removes it
    flipped = torch.tanh_(torch.addcmul(h[:, None, :], sign[:, :, None], wt[None])) @ v
    # (2 b_i - 1)(f(b) - f(b xor e_i)) = -sign_i (f_b - flipped_i) = sign_i (flipped_i - f_b)
    return slope * sign * (flipped - f_b[:, None])


@functools.lru_cache(maxsize=64)
def coupled_reference(
    dim: int, theta: float, hidden: int, net_seed: int, samples: int | None = None
) -> tuple[Tensor, Tensor]:
    """Reference d/dlogits E[f] and its standard error ([dim] each, float64, CPU) for
    bernoulli-coupled, at any dim (also where enumeration would be possible: tests use that).

    The local-expectation (exact conditional) estimator: for b ~ q,

        g_i = sigma'(theta_i) (f(b with b_i = 1) - f(b with b_i = 0)),

    unbiased because E[f | b_-i] is p_i f(b_i=1) + (1 - p_i) f(b_i=0), whose theta_i-derivative
    is exactly g_i, and b_-i ~ q. `local_expectation` computes it without a loop over samples or
    coordinates; each chunk is one [m, dim, hidden] batch of flipped pre-activations.

    Randomness comes from a generator of its own with a seed derived from the settings, never
    torch's global one: the reference does not depend on (or disturb) the runner's seeding.
    Cached, because the runner builds the same problem once per cell.
    """
    n_total = reference_samples(dim, hidden) if samples is None else samples
    if n_total < 2:
        raise ValueError(f"a reference needs at least 2 samples for its SE, not {n_total}")
    network = coupled_network(dim, hidden, net_seed)
    logits = torch.full((dim,), theta, dtype=torch.float64)
    p = torch.sigmoid(logits)
    gen = torch.Generator().manual_seed(
        derive_seed("bernoulli-coupled reference", dim, theta, hidden, net_seed, n_total))
    chunk = max(1, _REFERENCE_CHUNK_ELEMENTS // (dim * hidden))
    moments = Moments.zeros(dim)
    done = 0
    while done < n_total:
        m = min(chunk, n_total - done)
        b = (torch.rand(m, dim, generator=gen, dtype=torch.float64) < p).to(torch.float64)
        moments = moments.merge(Moments.of(local_expectation(b, logits, *network)))
        done += m
    summary = moments.summarize()
    return (torch.from_numpy(summary["mean"]).clone(),
            torch.from_numpy(summary["mean_se"]).clone())


def _coupled_problem_without_truth(
    dim: int, theta: float, hidden: int, net_seed: int, device: torch.device, dtype: torch.dtype
) -> Problem:
    w, c, v = (x.to(device=device, dtype=dtype) for x in coupled_network(dim, hidden, net_seed))
    return Problem(
        params={"logits": torch.full((dim,), theta, device=device, dtype=dtype)},
        distribution=_logits_bernoulli,
        cost=_network_cost(w, c, v),
        # f does not split over coordinates; tanh(W b + c) is smooth on [0, 1]^dim.
        capabilities=(DifferentiableCost(), RelaxedCost()),
        settings={"dim": dim, "theta": theta, "hidden": hidden, "net_seed": net_seed},
    )


@functools.lru_cache(maxsize=64)
def coupled_truth(
    dim: int, theta: float, hidden: int, net_seed: int, device: torch.device,
    dtype: torch.dtype, method: str = "auto",
) -> tuple[str, Tensor, Tensor | None]:
    """(truth_method, gradient [dim], truth_se [dim] or None) on `device` in `dtype`.

    method "auto": enumeration when the 2^dim joint states fit bench.enumeration.MAX_STATES,
    else the local-expectation reference. "enumeration" or "reference" forces one (tests).
    Always computed in float64 on the CPU, then converted, so the truth does not depend on the
    dtype the estimators run in. Cached on all arguments.
    """
    if method == "auto":
        method = "enumeration" if 2**dim <= enumeration.MAX_STATES else "reference"
    if method == "enumeration":
        exact = _coupled_problem_without_truth(dim, theta, hidden, net_seed,
                                               torch.device("cpu"), torch.float64)
        grad = enumeration.exact_gradient(exact)["logits"]
        return "enumeration", grad.to(device=device, dtype=dtype), None
    if method == "reference":
        mean, se = coupled_reference(dim, theta, hidden, net_seed)
        return "reference", mean.to(device=device, dtype=dtype), se.to(device=device, dtype=dtype)
    raise ValueError(f"method must be 'auto', 'enumeration' or 'reference', not {method!r}")


def build_coupled(
    dim: int, theta: float, hidden: int, net_seed: int, *, device: torch.device,
    dtype: torch.dtype, method: str = "auto",
) -> Problem:
    """The bernoulli-coupled problem, with the truth `method` of `coupled_truth`."""
    problem = _coupled_problem_without_truth(dim, theta, hidden, net_seed, device, dtype)
    truth_method, grad, se = coupled_truth(dim, theta, hidden, net_seed, device, dtype, method)
    return dataclasses.replace(
        problem,
        exact_gradient={"logits": grad},
        truth_method=truth_method,
        truth_se=None if se is None else {"logits": se},
    )


# Default grid (4 cells): dim = 12 has an enumerated truth (4096 states); dim = 200 is the
# DisARM/RODEO scale, where the truth is the reference (2^15 local-expectation samples, built
# once per process and cached, ~3 s each). theta = 0 puts every p at 1/2, where score-function
# noise is largest relative to the signal; but there straight-through is nearly unbiased at
# dim = 200 (each W[:, i] is small, f is nearly linear in b_i, and averaging df/db_i over
# b_i in {0, 1} with equal weights is the trapezoid rule for f(1) - f(0)): theta = -2 (p = 0.12)
# makes its bias first-order (~8% of the truth, measured). 5,000 estimates per cell. Measured at
# dim = 200, theta = 0 (median over coordinates of truth_se / the estimator's mean SE): 0.01
# score-function, 0.02 DisARM, 0.03 leave-one-out, 0.06 RELAX, 0.4 straight-through and
# Gumbel-Rao (whose biases are tens of SEs); a local-expectation estimator with the same n would
# see sqrt(5000 / 32768) = 0.39. bias_se adds truth_se in quadrature, so it stays honest anyway.
@register_suite(
    "bernoulli-coupled",
    offers=(DifferentiableCost, RelaxedCost),
    settings=(
        Setting("dim", int, (12, 200), "number of Bernoulli coordinates (enumerated truth up to "
                "16, a reference estimate beyond)", at_least(1)),
        Setting("theta", float, (0.0, -2.0), "logit of every coordinate, p = sigmoid(theta)",
                finite),
        Setting("hidden", int, (32,), "hidden width of the cost network", at_least(1)),
        Setting("net_seed", int, (0,), "seed of the cost network's weights", at_least(0)),
    ),
    samples=5_000,
)
def bernoulli_coupled(
    dim: int, theta: float, hidden: int, net_seed: int, *, device: torch.device,
    dtype: torch.dtype,
) -> Problem:
    """f(b) = v . tanh(W b + c), a fixed random network of b ~ Bernoulli(logits=theta)^dim."""
    return build_coupled(dim, theta, hidden, net_seed, device=device, dtype=dtype)
