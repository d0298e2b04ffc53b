"""The runner: unbiasedness through the whole pipeline (estimator -> chunks -> statistics),
seeds derived from cell keys, hyperparameter columns, and names that cannot collide."""

import math

import numpy as np
import pytest

from gradbench.app import measure, planning
from gradbench.core.schema import RESERVED
from gradbench.estimators import all_estimators
from gradbench.suites import all_suites

GAUSSIAN_SETTINGS = {
    "gaussian-quadratic": [
        {"mu": 1.0, "sigma": 1.0, "k": 0.0, "dim": 3},
        {"mu": 12.0, "sigma": 4.2, "k": 10.0, "dim": 2},
        {"mu": -0.5, "sigma": 0.1, "k": 1.0, "dim": 1},
    ],
    "gaussian-exp": [
        {"mu": 1.5, "sigma": 1.0, "k": 0.5, "dim": 2},
        {"mu": 0.3, "sigma": 0.25, "k": 2.0, "dim": 1},
    ],
    "gaussian-cos": [
        {"mu": 0.7, "sigma": 1.0, "k": 1.0, "dim": 2},
        {"mu": 0.7, "sigma": 0.25, "k": 3.0, "dim": 1},
    ],
}


def cell(suite, settings, estimator, samples=20_000, seed=0, hyper=(), device="cpu"):
    return planning.Cell(suite, tuple(settings.items()), estimator, tuple(hyper), device,
                       "float64", samples, seed)


def hyper_defaults(name):
    return tuple((h.name, h.default) for h in all_estimators()[name].hyperparams.values())


def unbiased_cases():
    for suite, grid in GAUSSIAN_SETTINGS.items():
        for settings in grid:
            for name, estimator in all_estimators().items():
                problem = all_suites()[suite].problem(settings)
                if estimator.unbiased and estimator.applicability(problem) is None:
                    yield pytest.param(suite, settings, name, id=f"{suite}-{name}-{settings}")


@pytest.mark.parametrize(("suite", "settings", "name"), list(unbiased_cases()))
def test_unbiased_estimators_match_exact_gradient(suite, settings, name):
    rows = measure.run_cell(cell(suite, settings, name, hyper=hyper_defaults(name)))
    bias, se = np.array(rows["bias"]), np.array(rows["bias_se"])
    assert np.all(se > 0)
    # 5 reported standard errors: a false alarm has probability ~6e-7 per coordinate.
    z = np.abs(bias) / se
    assert z.max() < 5, f"{name} on {suite} {settings}: bias/SE = {z.max():.2f}"
    assert np.all(np.array(rows["n"]) == 20_000)


@pytest.mark.parametrize("suite", sorted(GAUSSIAN_SETTINGS))
def test_naive_is_shown_biased(suite):
    settings = GAUSSIAN_SETTINGS[suite][0]
    rows = measure.run_cell(cell(suite, settings, "naive", samples=100))
    assert not all_estimators()["naive"].unbiased
    np.testing.assert_array_equal(rows["mean"], 0.0)
    np.testing.assert_array_equal(rows["bias"], -np.array(rows["truth"]))
    np.testing.assert_array_equal(rows["variance"], 0.0)


def test_cell_results_do_not_depend_on_other_cells_or_order():
    settings = GAUSSIAN_SETTINGS["gaussian-quadratic"][0]
    alone = measure.run_cell(cell("gaussian-quadratic", settings, "pathwise", samples=500))
    measure.run_cell(cell("gaussian-quadratic", settings, "score-function", samples=500))
    again = measure.run_cell(cell("gaussian-quadratic", settings, "pathwise", samples=500))
    assert alone["mean"] == again["mean"] and alone["variance"] == again["variance"]
    other_seed = measure.run_cell(cell("gaussian-quadratic", settings, "pathwise", samples=500,
                                      seed=1))
    assert other_seed["mean"] != alone["mean"]


def test_plan_crosses_settings_estimators_and_hyperparameters():
    request = planning.RunRequest(
        suite="gaussian-quadratic",
        estimators=("pathwise", "score-function-loo"),
        overrides={"sigma": ["1", "2"], "dim": ["1"], "draws": ["2", "5"]},
    )
    the_plan = planning.plan(request)
    suite = all_suites()["gaussian-quadratic"]
    others = math.prod(len(s.default) for n, s in suite.settings.items()
                       if n not in ("sigma", "dim"))
    # pathwise: one cell per setting; LOO: two (K = 2, 5).
    assert len(the_plan.cells) == 2 * others * (1 + 2)
    loo = [c for c in the_plan.cells if c.estimator == "score-function-loo"]
    assert {dict(c.hyperparams)["draws"] for c in loo} == {2, 5}
    assert len({c.cell_id for c in the_plan.cells}) == len(the_plan.cells)


def test_names_cannot_collide_with_result_columns():
    hyper_names = {h for e in all_estimators().values() for h in e.hyperparams}
    setting_names = {s for suite in all_suites().values() for s in suite.settings}
    assert not {h.lower() for h in hyper_names} & RESERVED
    assert not {s.lower() for s in setting_names} & RESERVED
    # A hyperparameter named like a setting would make `--set NAME=...` ambiguous.
    assert not hyper_names & setting_names


def test_rows_have_the_documented_statistics():
    settings = GAUSSIAN_SETTINGS["gaussian-quadratic"][0]
    rows = measure.run_cell(cell("gaussian-quadratic", settings, "pathwise", samples=1000))
    for column in ("mean", "mean_se", "bias", "bias_se", "variance", "variance_se", "snr",
                   "snr_se", "mse", "mse_se", "nonfinite", "seconds_per_estimate",
                   "seconds_per_estimate_se", "estimates_per_second", "truth", "truth_method"):
        assert column in rows
    assert rows["truth_method"][0] == "analytic"
    # pathwise on (z - k)^2: d/dmu = 2(z - k) with z ~ N(mu, sigma^2), variance 4 sigma^2.
    mu_rows = [i for i, (p, level) in enumerate(zip(rows["param"], rows["level"], strict=True))
               if p == "mu" and level == "coord"]
    variance = np.array(rows["variance"])[mu_rows]
    variance_se = np.array(rows["variance_se"])[mu_rows]
    assert np.all(np.abs(variance - 4.0) < 5 * variance_se)
