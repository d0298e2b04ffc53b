"""The runner's fast paths give what the plain paths give: closed-form cost gradients equal
autograd's, the fused pathwise estimator draws the same estimates as the autograd one, and the
streaming moments (power sums about a fixed shift) equal chunk-wise Moments merged, against an
extended-precision reference. Tolerances are derived next to each check."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from gradbench.app import measure, planning
from gradbench.core.capabilities import CostGradient, DifferentiableCost
from gradbench.core.moments import Moments
from gradbench.core.problem import Problem
from gradbench.core.streaming import StreamingMoments
from gradbench.estimators import get_estimator
from gradbench.estimators import pathwise as pathwise_module
from gradbench.estimators._fused import own_bernoulli_logits, own_normal
from gradbench.suites import all_suites, get_suite

EPS = float(np.finfo(np.float64).eps)


def suite_problems():
    """Problems with a cost_grad: every suite's default grid (first 6 settings each)."""
    for suite in all_suites().values():
        names = list(suite.settings)
        for values in list(zip(*(suite.settings[n].defaults for n in names), strict=False))[:6]:
            settings = dict(zip(names, values, strict=True))
            if suite.validate(settings) is not None:
                continue
            problem = suite.problem(settings)
            if problem.offers(CostGradient) is not None:
                yield pytest.param(problem, id=f"{suite.name}-{settings}")


@pytest.mark.parametrize("problem", list(suite_problems()))
def test_cost_grad_equals_autograd(problem: Problem) -> None:
    torch.manual_seed(0)
    z = problem.q().sample((500,)).requires_grad_(True)
    (expected,) = torch.autograd.grad(problem.cost(z, problem.params).sum(), z)
    got = problem.offers(CostGradient).grad(z.detach(), problem.params)
    assert got.shape == z.shape
    # The same derivative evaluated by two formula orderings: a few roundings of the largest
    # term, 16 eps relative to the gradient's scale.
    scale = expected.abs().max().clamp(min=1.0)
    torch.testing.assert_close(got, expected, rtol=0, atol=16 * EPS * float(scale))


@pytest.mark.parametrize("problem", list(suite_problems()))
def test_fused_pathwise_draws_the_autograd_estimates(problem: Problem) -> None:
    if pathwise_module._normal_loc_scale(problem) is None:
        pytest.skip("not a Normal in its own loc/scale parameters: the fused path does not apply")
    plain = without_cost_gradient(problem)  # forces the autograd path
    torch.manual_seed(1)
    fused = pathwise_module.pathwise(problem, 4000)
    torch.manual_seed(1)
    autograd = pathwise_module.pathwise(plain, 4000)
    # Same generator state -> the same eps and z; g's formula rounds like autograd's or within a
    # few eps of it (the cost_grad test above), then the same products.
    for name in problem.params:
        scale = float(autograd[name].abs().max().clamp(min=1.0))
        torch.testing.assert_close(fused[name], autograd[name], rtol=0, atol=16 * EPS * scale)


def without_cost_gradient(problem: Problem) -> Problem:
    kept = tuple(c for c in problem.capabilities if not isinstance(c, CostGradient))
    return dataclasses.replace(problem, capabilities=kept)


def test_fused_path_only_for_normals_in_their_own_parameters() -> None:
    def cost(z: torch.Tensor, params: object = None) -> torch.Tensor:
        return (z**2).sum(-1)

    def grad(z: torch.Tensor, params: object = None) -> torch.Tensor:
        return 2 * z

    params = {"mu": torch.tensor([0.5], dtype=torch.float64),
              "log_sigma": torch.tensor([0.3], dtype=torch.float64)}
    exact = {"mu": torch.tensor([1.0]).double(), "log_sigma": torch.tensor([0.0]).double()}
    logscale = Problem(params=params, distribution=lambda mu, log_sigma: Normal(mu,
                       log_sigma.exp()), cost=cost, exact_gradient=exact,
                       capabilities=(DifferentiableCost(), CostGradient(grad)),
                       truth_method="analytic")
    assert pathwise_module._normal_loc_scale(logscale) is None
    torch.manual_seed(2)
    got = pathwise_module.pathwise(logscale, 1000)
    torch.manual_seed(2)
    expected = pathwise_module.pathwise(without_cost_gradient(logscale), 1000)
    for name in params:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
    direct = dataclasses.replace(logscale, params={"mu": params["mu"],
                                                   "sigma": params["log_sigma"].exp()},
                                 distribution=lambda mu, sigma: Normal(mu, sigma),
                                 exact_gradient={"mu": exact["mu"], "sigma": exact["mu"]})
    assert pathwise_module._normal_loc_scale(direct) == ("mu", "sigma")


def test_fused_pathwise_has_the_exact_variance_through_the_runner() -> None:
    # f = (z - k)^2, z = mu + sigma eps: d/dmu = 2(z - k), Var = 4 sigma^2;
    # d/dsigma = 2(z - k) eps = 2((mu - k) eps + sigma eps^2), Var = 4(mu - k)^2 + 8 sigma^2
    # (E[eps^2] = 1, E[eps^3] = 0, E[eps^4] = 3). The runner's variance and its SE must agree.
    mu, sigma, k = 1.0, 0.5, 3.0
    cell = planning.Cell("gaussian-quadratic", (("mu", mu), ("sigma", sigma), ("k", k),
                                              ("dim", 1)), "pathwise", (), "cpu", "float64",
                       200_000, 0)
    rows = measure.run_cell(cell)
    expected = {"mu": 4 * sigma**2, "sigma": 4 * (mu - k) ** 2 + 8 * sigma**2}
    for param, variance, se in zip(rows["param"], rows["variance"], rows["variance_se"],
                                   strict=True):
        assert abs(variance - expected[param]) < 5 * se, (param, variance, expected[param], se)


# ------------------------------------------------------------------------- streaming moments


def long_double(x: np.ndarray) -> tuple[np.ndarray, ...]:
    """(count, mean, M2, M3, M4) per column over the finite entries, in extended precision."""
    out = []
    for column in x.T:
        finite = column[np.isfinite(column)]
        # About a float64 centre c: x - c is exact in long double (both are float64 values), and
        # the deviations from their mean are then resolved far below float64's rounding. (At
        # 1e8 + N(0, 1) a long-double mean itself is only good to ~1e-11, which would move M3
        # by 3 M2 1e-11, above the bounds below.)
        c = np.median(finite) if finite.size else 0.0
        v = finite.astype(np.longdouble) - np.longdouble(c)
        delta = v.mean() if v.size else np.longdouble(0)
        d = v - delta
        out.append((v.size, np.longdouble(c) + delta, (d**2).sum(), (d**3).sum(), (d**4).sum()))
    return tuple(np.array([float(row[i]) for row in out]) for i in range(5))


def check_against_reference(m: Moments, x: np.ndarray, chunks: int) -> None:
    """Tolerances, per column with s = its std over finite entries:
    - mean: |mean| * 4 eps (one rounding of shift + delta, the shift's own rounding) plus
      s * 1e-13 (delta = S1 / n with S1 summed over chunks: per chunk a pairwise sum of <= 2^15
      terms of size ~s, a few eps of sqrt(n) s each, then `chunks` additions).
    - M_k: n s^k * 1e-11: sums of positive-ish terms of size ~s^k, each pass a pairwise sum
      (<= 16 eps relative) and `chunks` additions (chunks eps), times the binomial corrections
      (|delta| << s, at most a few terms of the same size); 1e-11 covers chunks <= 1e4.
    A missing or wrong shift correction errs by n delta^2 s^(k-2) ~ n s^k / first chunk size,
    >= 1e-4 relative here: orders of magnitude outside these bounds."""
    count, mean, m2, m3, m4 = long_double(x)
    np.testing.assert_array_equal(m.count.numpy(), count)
    np.testing.assert_array_equal(m.nonfinite.numpy(), (~np.isfinite(x)).sum(0))
    s = np.sqrt(m2 / np.maximum(count, 1))
    assert chunks <= 10_000
    assert np.all(np.abs(m.mean.numpy() - mean) <= 4 * EPS * np.abs(mean) + 1e-13 * s)
    for k, ref in ((2, m2), (3, m3), (4, m4)):
        err = np.abs(getattr(m, f"m{k}").numpy() - ref)
        assert np.all(err <= 1e-11 * count * s**k), (k, err, count * s**k)


def stream(x: np.ndarray, size: int) -> StreamingMoments:
    acc = StreamingMoments(x.shape[1])
    for start in range(0, x.shape[0], size):
        acc.add(torch.from_numpy(x[start:start + size]))
    return acc


def test_streaming_moments_match_extended_precision_and_chunked_merges() -> None:
    rng = np.random.default_rng(7)
    n = 20_000
    x = np.stack([1e8 + rng.standard_normal(n), rng.exponential(2.0, n),
                  -7.0 + 1e-3 * rng.standard_normal(n), rng.standard_normal(n),
                  rng.standard_t(3, n)], axis=1)
    for size in (n, 4096, 333, 7):
        m = stream(x, size).moments()
        check_against_reference(m, x, math.ceil(n / size))
        # Chunk-wise Moments merged (Chan/Pebay) agree within their own, looser bound (each
        # merge re-centres on a rounded mean: M_k moves by ~k eps |mean| / s relative, 2e-8
        # at the 1e8 offset, over sqrt(merges) roundings; tests/test_statistics.py derives it).
        merged = Moments.merge_all(Moments.of(torch.from_numpy(x[a:a + size]))
                                   for a in range(0, n, size))
        count = m.count.numpy()
        s = np.sqrt(m.m2.numpy() / count)
        r = EPS * (1 + np.abs(m.mean.numpy()) / s) * 8 * math.sqrt(math.ceil(n / size) + 1)
        assert np.all(np.abs(merged.mean.numpy() - m.mean.numpy()) <= 2 * r * s)
        for k in (2, 3, 4):
            err = np.abs(getattr(merged, f"m{k}").numpy() - getattr(m, f"m{k}").numpy())
            assert np.all(err <= 2 * r * count * s**k), k


def test_streaming_moments_nonfinite_constant_and_late_starting_columns() -> None:
    rng = np.random.default_rng(8)
    n = 3000
    x = np.stack([rng.standard_normal(n), np.full(n, 0.1), 1e8 + rng.standard_normal(n),
                  np.full(n, np.nan)], axis=1)
    x[rng.choice(n, 40, replace=False), 0] = np.inf
    x[:1500, 2] = np.nan  # no finite value in the first chunks: its shift comes later
    for size in (1000, 64):
        acc = stream(x, size)
        m = acc.moments()
        check_against_reference(m, x, math.ceil(n / size))
        assert m.mean[1].item() == 0.1  # a constant column: exact value, moments exactly 0
        assert m.m2[1].item() == m.m3[1].item() == m.m4[1].item() == 0.0
        assert m.count[3].item() == 0 and m.mean[3].item() == 0.0  # never finite: empty
        summary = m.summarize()
        assert np.isnan(summary["mean"][3]) and summary["nonfinite"][3] == n


def test_streaming_moments_reject_wrong_widths() -> None:
    # (float32 chunks: tests/test_streaming_float32.py)
    acc = StreamingMoments(2)
    with pytest.raises(ValueError, match=r"expected \[n, 2\]"):
        acc.add(torch.zeros(4, 3))
    acc.add(torch.zeros(0, 2))  # an empty chunk changes nothing
    assert acc.moments().count.tolist() == [0, 0]


# ---------------------------------------------------------------- closed-form score and weak paths


def _opaque(problem: Problem) -> Problem:
    """The same problem with q built through an exact no-op (x * 1.0): q's parameters are no
    longer the problem's own tensors, so the estimators take their general autograd paths."""
    build = problem.distribution
    return dataclasses.replace(
        problem, distribution=lambda **params: build(**{k: v * 1.0 for k, v in params.items()}))


FUSED_CASES = [
    ("score-function", "gaussian-quadratic", {"mu": 1.0, "sigma": 2.0, "k": 3.0, "dim": 3}),
    ("score-function", "bernoulli-toy", {"theta": 0.5, "t": 0.45, "dim": 4}),
    ("measure-valued", "gaussian-exp", {"mu": 1.5, "sigma": 1.0, "k": 0.5, "dim": 3}),
    ("arm", "bernoulli-toy", {"theta": -1.0, "t": 0.45, "dim": 5}),
    ("disarm", "bernoulli-toy", {"theta": 2.0, "t": 0.499, "dim": 5}),
]


@pytest.mark.parametrize(("name", "suite", "settings"), FUSED_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in FUSED_CASES])
def test_closed_form_paths_draw_the_autograd_estimates(name, suite, settings) -> None:
    """Where q is a Normal or Bernoulli of the problem's own parameters, score-function,
    measure-valued, ARM and DisARM skip the parameter copies and the backward pass; with the same
    generator state they give the general path's estimates up to rounding."""
    problem = get_suite(suite).problem(settings)
    general = _opaque(problem)
    fn = get_estimator(name).fn
    assert (own_normal(problem) or own_bernoulli_logits(problem)) is not None
    assert own_normal(general) is None and own_bernoulli_logits(general) is None
    torch.manual_seed(4)
    fused = fn(problem, 3000)
    torch.manual_seed(4)
    plain = fn(general, 3000)
    for param in problem.params:
        scale = float(plain[param].abs().max().clamp(min=1.0))
        torch.testing.assert_close(fused[param], plain[param], rtol=0, atol=64 * EPS * scale)
