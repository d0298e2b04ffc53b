"""bayes-linear: data, truth, costs, and the closed-form variances of the shared weight sample
(pathwise) and of local reparameterization.

Closed-form single-estimate variances. Take one output o (outputs are independent under q and
add up in f), write x~_n = (x_n, 1) for a row with the bias column, theta~ = (w_o, b_o) with
means mu~ and standard deviations sigma~ (sigma~ = exp(log sigma~)), c = N / (B noise^2),
G = X~^T X~ [in + 1, in + 1], h = X~^T y_o, and a = c (G mu~ - h) (the exact gradient in mu~).
f = (c / 2) sum_n (y_n - x~_n . theta~)^2, so df/dtheta~ = c (G theta~ - h).

Pathwise, one shared draw theta~ = mu~ + sigma~ eps, eps ~ N(0, I):
    g_mu = c (G mu~ - h) + c G diag(sigma~) eps, so
        Var(g_mu_j) = c^2 sum_k G_jk^2 sigma~_k^2.
    g_logsigma_j = sigma~_j eps_j (a_j + c sum_k G_jk sigma~_k eps_k)
                 = sigma~_j [a_j eps_j + c G_jj sigma~_j eps_j^2 + c eps_j S_j],
    S_j = sum_{k != j} G_jk sigma~_k eps_k independent of eps_j. The three terms are
    uncorrelated (E eps^3 = 0, E S_j = 0) with variances a_j^2, 2 c^2 G_jj^2 sigma~_j^2
    (Var eps^2 = 2) and c^2 sum_{k != j} G_jk^2 sigma~_k^2, so
        Var(g_logsigma_j) = sigma~_j^2 [a_j^2 + c^2 G_jj^2 sigma~_j^2
                                        + c^2 sum_k G_jk^2 sigma~_k^2].

Local reparameterization, a_n = m_n + sqrt(v_n) zeta_n independent per row, with
m_n = x~_n . mu~, v_n = sum_k x~_nk^2 sigma~_k^2, r_n = m_n - y_n:
    g_mu_j = c sum_n (r_n + sqrt(v_n) zeta_n) x~_nj, so
        Var(g_mu_j) = c^2 sum_n v_n x~_nj^2.
    da_n / dlog sigma~_j = zeta_n x~_nj^2 sigma~_j^2 / sqrt(v_n), so
    g_logsigma_j = c sigma~_j^2 sum_n x~_nj^2 (r_n zeta_n / sqrt(v_n) + zeta_n^2), and with
    Var(r zeta / sqrt v + zeta^2) = r^2 / v + 2 (uncorrelated, E zeta^3 = 0):
        Var(g_logsigma_j) = c^2 sigma~_j^4 sum_n x~_nj^4 (r_n^2 / v_n + 2).

The pathwise variance of g_mu sums G_jk^2 = (sum_n x~_nj x~_nk)^2 over all pairs of rows; the
local one only the diagonal n = n': rows stop sharing noise, which is the whole point.
"""

from __future__ import annotations

import dataclasses
import socket

import numpy as np
import pytest
import torch

from gradbench.app import measure, planning
from gradbench.app.planning import DEFAULT_COORDS
from gradbench.core.capabilities import CostGradient, GaussianLinearLayer
from gradbench.estimators import all_estimators, get_estimator
from gradbench.estimators import pathwise as pathwise_module
from gradbench.suites import _datasets, bayes_linear, get_suite

F64 = torch.float64
DIABETES = {"data": "diabetes", "batch": 32, "log_sigma": 0.0, "noise": 1.0,
            "in_features": 10, "out_features": 1}
SYNTHETIC = {"data": "synthetic", "batch": 16, "log_sigma": -1.0, "noise": 0.5,
             "in_features": 5, "out_features": 3}
ROWS = {"diabetes": _datasets.DIABETES_ROWS, "synthetic": _datasets.SYNTHETIC_ROWS}
Z_LIMIT = 5.0


def problem(settings: dict):
    return get_suite("bayes-linear").problem(settings)


def run(settings: dict, estimator: str, samples: int = 20_000) -> dict:
    hyper = tuple((h.name, h.default) for h in get_estimator(estimator).hyperparams.values())
    cell = planning.Cell("bayes-linear", tuple(settings.items()), estimator, hyper, "cpu",
                         "float64", samples, 0)
    return measure.run_cell(cell)


def by_param(rows: dict, column: str) -> dict[str, np.ndarray]:
    """Per parameter, its coordinate rows' values in coordinate order (tensor rows left out)."""
    out: dict[str, list] = {}
    for param, level, value in zip(rows["param"], rows["level"], rows[column], strict=True):
        if level == "coord":
            out.setdefault(param, []).append(value)
    return {name: np.array(values) for name, values in out.items()}


# ---------------------------------------------------------------- data


def test_diabetes_comes_standardised_from_the_installed_package(monkeypatch) -> None:
    from sklearn.datasets import load_diabetes

    def no_network(*args, **kwargs):
        raise AssertionError("the data must not be downloaded")

    monkeypatch.setattr(socket, "socket", no_network)
    _datasets.diabetes.cache_clear()
    x, y = _datasets.diabetes()
    raw_x, raw_y = load_diabetes(return_X_y=True, scaled=False)
    expected = (raw_x - raw_x.mean(0)) / raw_x.std(0)
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y.numpy()[:, 0], (raw_y - raw_y.mean()) / raw_y.std(), atol=1e-12)
    assert x.shape == (442, 10) and y.shape == (442, 1)


def test_problem_data_is_the_reproducible_nested_minibatch() -> None:
    x_all, y_all = _datasets.diabetes()
    small, large = problem({**DIABETES, "batch": 1}), problem(DIABETES)
    assert small.data["X"].shape == (1, 10) and large.data["y"].shape == (32, 1)
    torch.testing.assert_close(large.data["X"][:1], small.data["X"])  # nested minibatches
    rows = _datasets.minibatch_rows(442, 32)
    torch.testing.assert_close(large.data["X"], x_all[rows])
    torch.testing.assert_close(large.data["y"], y_all[rows])
    torch.testing.assert_close(problem(DIABETES).data["X"], large.data["X"])  # reproducible
    full = problem({**DIABETES, "batch": 442}).data["X"]
    assert sorted(map(tuple, full.tolist())) == sorted(map(tuple, x_all.tolist()))


@pytest.mark.parametrize(("change", "fragment"), [
    ({"in_features": 5}, "diabetes has 10 features"),
    ({"batch": 443}, "exceeds the 442 rows"),
    ({"data": "synthetic", "batch": 2000}, "exceeds the 1024 rows"),
])
def test_invalid_combinations_are_refused_with_the_fix(change: dict, fragment: str) -> None:
    reason = get_suite("bayes-linear").validate({**DIABETES, **change})
    assert reason is not None and fragment in reason


# ---------------------------------------------------------------- truth and costs


def expected_cost(problem_, params: dict) -> torch.Tensor:
    """E_q[f] written directly: (c / 2) sum_n sum_o [(m_no - y_no)^2 + v_no]."""
    x, y = problem_.data["X"], problem_.data["y"]
    settings = problem_.settings
    scale = ROWS[settings["data"]] / (settings["batch"] * settings["noise"] ** 2)
    mean = x @ params["weight_mu"].T + params["bias_mu"]
    variance = x.square() @ (2 * params["weight_log_sigma"]).exp().T + (
        2 * params["bias_log_sigma"]).exp()
    return 0.5 * scale * ((mean - y).square() + variance).sum()


@pytest.mark.parametrize("settings", [DIABETES, SYNTHETIC, {**DIABETES, "batch": 1}])
def test_truth_is_the_gradient_of_the_expected_cost(settings: dict) -> None:
    p = problem(settings)
    leaves = {k: v.clone().requires_grad_(True) for k, v in p.params.items()}
    grads = torch.autograd.grad(expected_cost(p, leaves), list(leaves.values()))
    for (name, _), grad in zip(leaves.items(), grads, strict=True):
        torch.testing.assert_close(p.exact_gradient[name], grad, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("settings", [DIABETES, SYNTHETIC, {**DIABETES, "batch": 1}])
def test_both_cost_routes_and_the_cost_gradient_agree_with_the_definition(settings) -> None:
    p = problem(settings)
    torch.manual_seed(0)
    z = p.q().sample((300,)).requires_grad_(True)
    x, y = p.data["X"], p.data["y"]
    out, width = y.shape[1], x.shape[1]
    weight, bias = z[:, : out * width].unflatten(-1, (out, width)), z[:, out * width:]
    scale = ROWS[settings["data"]] / (settings["batch"] * settings["noise"] ** 2)
    residual = y - (torch.einsum("bi,moi->mbo", x, weight) + bias.unsqueeze(1))
    direct = 0.5 * scale * residual.square().sum((1, 2))
    cost = p.cost(z, p.params)
    torch.testing.assert_close(cost, direct, rtol=1e-10, atol=1e-9)
    (expected,) = torch.autograd.grad(direct.sum(), z)
    got = p.offers(CostGradient).grad(z.detach(), p.params)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-8)


# ---------------------------------------------------------------- estimators


def unbiased_applicable(p) -> list[str]:
    return [name for name, est in all_estimators().items()
            if est.unbiased and est.applicability(p) is None]


def test_the_expected_estimators_apply() -> None:
    names = set(unbiased_applicable(problem(DIABETES)))
    assert {"pathwise", "local-reparam", "flipout", "score-function", "score-function-cv",
            "score-function-loo", "measure-valued"} <= names


def assert_unbiased(settings: dict, estimator: str) -> None:
    rows = run(settings, estimator)
    z = np.abs(np.array(rows["bias"])) / np.array(rows["bias_se"])
    assert np.all(np.array(rows["bias_se"]) > 0)
    assert z.max() < Z_LIMIT, f"{estimator} at {settings}: max bias/SE {z.max():.2f}"


@pytest.mark.parametrize("estimator", unbiased_applicable(problem(DIABETES)))
def test_every_unbiased_estimator_is_unbiased(estimator: str) -> None:
    assert_unbiased(DIABETES, estimator)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 32, 442])
@pytest.mark.parametrize("log_sigma", [-5.0, -2.0, 0.0])
@pytest.mark.parametrize("estimator", unbiased_applicable(problem(DIABETES)))
def test_every_unbiased_estimator_is_unbiased_on_the_default_grid(batch, log_sigma, estimator
                                                                 ) -> None:
    assert_unbiased({**DIABETES, "batch": batch, "log_sigma": log_sigma}, estimator)


@pytest.mark.slow
@pytest.mark.parametrize("estimator", unbiased_applicable(problem(SYNTHETIC)))
def test_every_unbiased_estimator_is_unbiased_with_several_outputs(estimator: str) -> None:
    assert_unbiased(SYNTHETIC, estimator)


def test_naive_shows_the_tutorials_bug() -> None:
    rows = run(DIABETES, "naive", samples=100)
    assert not get_estimator("naive").unbiased
    np.testing.assert_array_equal(rows["mean"], 0.0)  # .sample() cuts every gradient path
    np.testing.assert_array_equal(rows["bias"], -np.array(rows["truth"]))


@pytest.mark.parametrize("settings", [DIABETES, SYNTHETIC])
def test_shared_sample_path_draws_the_autograd_estimates(settings: dict) -> None:
    p = problem(settings)
    plain = dataclasses.replace(p, capabilities=tuple(
        c for c in p.capabilities if not isinstance(c, GaussianLinearLayer)))
    for each in (p, plain):
        each.cost_depends_on_params()  # decided (with one draw) before seeding
    torch.manual_seed(3)
    fast = pathwise_module.pathwise(p, 2000)
    torch.manual_seed(3)
    autograd = pathwise_module.pathwise(plain, 2000)
    for name in p.params:
        scale = float(autograd[name].abs().max())
        torch.testing.assert_close(fast[name], autograd[name], rtol=0, atol=1e-12 * scale)


def closed_form_variances(p) -> dict[str, dict[str, torch.Tensor]]:
    """The module docstring's formulas, per estimator and parameter, in float64."""
    x, y = p.data["X"].to(F64), p.data["y"].to(F64)
    settings = p.settings
    c = ROWS[settings["data"]] / (settings["batch"] * settings["noise"] ** 2)
    xt = torch.cat([x, torch.ones(x.shape[0], 1, dtype=F64)], dim=1)  # [B, in + 1]
    mu = torch.cat([p.params["weight_mu"], p.params["bias_mu"].unsqueeze(1)], 1).to(F64)
    sigma = torch.cat([p.params["weight_log_sigma"], p.params["bias_log_sigma"].unsqueeze(1)],
                      1).exp().to(F64)  # [out, in + 1]
    gram, h = xt.T @ xt, y.T @ xt  # [in + 1, in + 1], [out, in + 1]
    a = c * (mu @ gram - h)
    spread = c**2 * sigma.square() @ gram.square().T  # [out, in + 1]: c^2 sum_k G_jk^2 s_k^2
    shared_mu = spread
    shared_log = sigma.square() * (a.square() + c**2 * gram.diagonal().square() * sigma.square()
                                   + spread)
    v = xt.square() @ sigma.square().T  # [B, out]
    r = xt @ mu.T - y
    local_mu = c**2 * v.T @ xt.square()
    local_log = c**2 * sigma.pow(4) * ((r.square() / v + 2).T @ xt.pow(4))

    def split(both: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"weight": both[:, :-1].reshape(-1), "bias": both[:, -1]}

    out = {}
    for name, (var_mu, var_log) in {"pathwise": (shared_mu, shared_log),
                                    "local-reparam": (local_mu, local_log)}.items():
        mus, logs = split(var_mu), split(var_log)
        out[name] = {"weight_mu": mus["weight"], "bias_mu": mus["bias"],
                     "weight_log_sigma": logs["weight"], "bias_log_sigma": logs["bias"]}
    return out


@pytest.mark.parametrize("settings", [DIABETES, SYNTHETIC, {**DIABETES, "batch": 1}])
@pytest.mark.parametrize("estimator", ["pathwise", "local-reparam"])
def test_single_estimate_variance_matches_its_closed_form(settings: dict, estimator: str
                                                          ) -> None:
    p = problem(settings)
    forms = closed_form_variances(p)
    rows = run(settings, estimator)
    variance, se = by_param(rows, "variance"), by_param(rows, "variance_se")
    for name, expected in forms[estimator].items():
        z = np.abs(variance[name] - expected.numpy()) / se[name]
        assert z.max() < Z_LIMIT, f"{estimator} {name}: z {z.max():.2f}"
    if settings["batch"] > 1:  # the test can tell the two estimators apart
        other = forms["local-reparam" if estimator == "pathwise" else "pathwise"]
        z = np.abs(variance["weight_mu"] - other["weight_mu"].numpy()) / se["weight_mu"]
        assert z.max() > 10 * Z_LIMIT


def test_measure_valued_refuses_the_big_layer_and_a_two_hundred_thousand_parameter_cell_runs(
) -> None:
    big = {"data": "synthetic", "batch": 128, "log_sigma": -3.0, "noise": 1.0,
           "in_features": 784, "out_features": 256}
    p = problem(big)
    assert p.numel == 2 * (784 * 256 + 256) > 2e5
    reason = get_estimator("measure-valued").applicability(p)
    assert reason is not None and "not separable" in reason and "200,960 coordinates" in reason
    rows = run(big, "pathwise", samples=8)
    # Coordinate rows for the first DEFAULT_COORDS coordinates of each tensor, and one tensor
    # row each that aggregates all of it.
    level, param = np.array(rows["level"]), np.array(rows["param"])
    for name, value in p.params.items():
        assert (level[param == name] == "coord").sum() == min(value.numel(), DEFAULT_COORDS)
        tensor = (level == "tensor") & (param == name)
        assert tensor.sum() == 1 and np.array(rows["param_size"])[tensor][0] == value.numel()
    assert np.all(np.array(rows["n"]) == 8)
    assert np.all(np.isfinite(rows["variance"]))


def test_gram_form_is_used_only_where_it_is_cheaper() -> None:
    x, y = torch.randn(32, 10, dtype=F64), torch.randn(32, 1, dtype=F64)
    assert bayes_linear.LinearGaussianCost(x, y, 1.0).gram
    assert not bayes_linear.LinearGaussianCost(x[:5], y[:5], 1.0).gram
