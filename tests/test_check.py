"""`bench check`: the decision rules on hand-built frames (values derived by hand), the gate on
real runs (passes for another seed, fails for a deliberately degraded or biased estimator, passes
against the committed baseline), and the CLI's exit codes and outputs."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import gradbench
from gradbench.app import check, check_summary
from gradbench.app.cli import app
from gradbench.app.errors import BenchError
from gradbench.app.pytest_plugin import run
from gradbench.core.estimator import _REGISTRY  # to unregister the test-only estimators
from gradbench.core.schema import SCHEMA_VERSION
from gradbench.estimators import get_estimator, register_estimator
from gradbench.results import decisions, store

BASELINE = Path(__file__).resolve().parents[1] / "results" / "baseline"


# ---------------------------------------------------------------- hand-built frames


def row(**values):
    """One results row; `settings` and `hyperparams` (the key's JSON) follow the sigma, dim and
    draws values given, as the runner writes them."""
    settings = {"sigma": values.get("sigma", 1.0), "dim": values.get("dim", 1)}
    hyper = {"draws": values["draws"]} if values.get("draws") is not None else {}
    base = {
        "run_id": "r", "schema_version": SCHEMA_VERSION, "gradbench_version": gradbench.__version__,
        "torch_version": torch.__version__, "suite": "toy", "sigma": 1.0, "dim": 1,
        "settings": store.canonical_json(settings), "hyperparams": store.canonical_json(hyper),
        "suite_version": 1, "estimator_version": 1, "level": "coord",
        "estimator": "pathwise", "estimator_family": "pathwise", "unbiased": True,
        "device": "cpu", "dtype": "float64", "param": "mu", "coord": 0, "n": 4000,
        "nonfinite": 0, "mean": 1.0, "truth": 1.0, "truth_se": 0.0, "truth_method": "analytic",
        "bias": 0.0, "bias_se": 0.01, "variance": 1.0, "variance_se": 0.02, "samples": 4000,
        "seed": 0, "evals_per_estimate": 1.0, "seconds_per_estimate": 1e-6,
    }
    return base | values


def frame(*rows):
    return pd.DataFrame(list(rows))


def verdicts(result):
    return dict(zip(zip(result.rows["estimator"], result.rows["coord"], strict=True),
                    result.rows["verdict"], strict=True))


def test_normal_tail_and_benjamini_hochberg_by_hand():
    sf = decisions.normal_sf(np.array([0.0, 1.959963984540054, 10.0, np.inf, np.nan]))
    assert sf[0] == 0.5 and sf[1] == pytest.approx(0.025, rel=1e-12)
    assert sf[2] == pytest.approx(7.619853024160527e-24, rel=1e-12)  # far tail: erfc, not 1-cdf
    assert sf[3] == 0.0 and np.isnan(sf[4])
    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> p m / rank = 0.02, 0.02, 0.04, 0.04, running min.
    q = decisions.benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.005, np.nan]))
    np.testing.assert_allclose(q[:4], [0.02, 0.04, 0.04, 0.02])
    assert np.isnan(q[4])


def test_identical_results_pass():
    f = frame(row(coord=0), row(coord=1), row(param="sigma"))
    result = check.compare(f, f)
    assert not result.failed and len(result.regressions) == 0
    assert result.tests == 6  # 3 variance + 3 bias tests
    assert (result.rows["ratio"] == 1.0).all() and (result.rows["z_variance"] == 0.0).all()


def test_variance_regression_needs_significance_and_the_tolerance():
    base = frame(*[row(coord=c) for c in range(4)])
    cur = frame(
        row(coord=0, variance=2.0, variance_se=0.04),  # 2x, rel SE 0.02 on both sides
        row(coord=1, variance=1.10, variance_se=0.0011),  # significant, but below 1.15
        row(coord=2, variance=1.5, variance_se=0.75),  # above 1.15, but rel SE 0.5: noise
        row(coord=3, variance=0.5, variance_se=0.01),  # an improvement
    )
    result = check.compare(cur, base)
    got = result.rows.set_index("coord")
    # z = log 2 / sqrt(0.02^2 + 0.02^2), by hand.
    assert got.loc[0, "z_variance"] == pytest.approx(math.log(2) / (0.02 * math.sqrt(2)))
    assert got["verdict"].tolist() == [check.VARIANCE, check.OK, check.OK, check.OK]
    assert got.loc[1, "q_variance"] < check.DEFAULT_ALPHA  # significant: the tolerance spared it
    assert result.failed
    assert check.compare(cur, base, tolerance=1.05).rows["verdict"].tolist()[:2] == [
        check.VARIANCE, check.VARIANCE]


def test_estimators_with_a_warm_up_are_tested_against_the_tolerance():
    # Same numbers, with and without a warm-up: ratio 1.2 with a tiny SE is significant against
    # 1 but not against the tolerance 1.15 + noise; ratio 1.5 is significant against both.
    rows = [row(coord=0, variance=1.2, variance_se=0.0012),
            row(coord=1, variance=1.5, variance_se=0.0015)]
    base = frame(row(coord=0, variance_se=0.05), row(coord=1, variance_se=0.001))
    plain = check.compare(frame(*rows), base)
    warm = check.compare(frame(*rows).assign(warmup_evals=1000.0),
                         base.assign(warmup_evals=1000.0))
    assert plain.rows["verdict"].tolist() == [check.VARIANCE, check.VARIANCE]
    assert warm.rows["verdict"].tolist() == [check.OK, check.VARIANCE]
    se = math.hypot(0.05, 0.001)
    assert warm.rows["z_variance"].iloc[0] == pytest.approx((math.log(1.2) - math.log(1.15)) / se)
    assert plain.rows["z_variance"].iloc[0] == pytest.approx(math.log(1.2) / se)
    assert any("warm-up" in note for note in warm.notes)


def test_one_estimators_regression_does_not_lower_the_bar_for_another():
    # 1000 rows of estimator A regress beyond doubt. B has one bias z = 3.5 (p = 4.7e-4): one
    # global BH over all 2002 tests at the default alpha 0.001 would reject it (rank 1001:
    # 0.001 * 1001 / 2002 = 5.0e-4); B's own family (1 bias test) stands at alpha * 1 / 2002 =
    # 5e-7 and must not.
    base = frame(*[row(estimator="A", coord=c) for c in range(1000)], row(estimator="B"))
    cur = frame(*[row(estimator="A", coord=c, variance=2.0, variance_se=0.04)
                  for c in range(1000)], row(estimator="B", bias=0.035, mean=1.035))
    result = check.compare(cur, base)
    got = verdicts(result)
    assert all(got[("A", c)] == check.VARIANCE for c in range(1000))
    assert got[("B", 0)] == check.OK
    # Student's t with n - 1 = 3999 degrees of freedom (plug-in mean_se).
    p = 2 * decisions.t_sf(np.array([3.5]), np.array([3999.0]))[0]
    assert p == pytest.approx(2 * decisions.normal_sf(np.array([3.5]))[0], rel=0.02)
    assert result.rows.set_index("estimator").loc["B", "q_bias"] == pytest.approx(p * 2002)


def test_cells_match_on_the_key_columns_only():
    # Baseline: two estimators in one file, so `draws` is a float column with NaN for pathwise.
    base = frame(row(estimator="pathwise", draws=None), row(estimator="loo", draws=4))
    assert base["draws"].isna().iloc[0]
    # Current: pathwise from a run without any draws column, loo with draws as an int, plus a
    # metadata column the baseline does not have: none of it affects matching.
    cur = pd.concat([frame(row(estimator="pathwise")), frame(row(estimator="loo", draws=4))],
                    ignore_index=True).assign(hostname=["a", "b"])
    cur_no_k = frame(row(estimator="pathwise"))
    result = check.compare(cur, base)
    assert result.rows["matched"].all() and len(result.missing) == 0 and len(result.new) == 0
    assert check.compare(cur_no_k, base, allow_missing=True).rows["matched"].all()
    other_k = frame(row(estimator="pathwise"), row(estimator="loo", draws=2))
    result = check.compare(other_k, base)
    assert len(result.missing) == 1 and len(result.new) == 1 and result.failed
    assert result.missing["settings"].iloc[0] == "dim=1 sigma=1 draws=4"


def test_a_changed_version_is_reported_not_compared():
    base = frame(row(coord=0), row(coord=0, estimator="loo"))
    cur = frame(row(coord=0, suite_version=2, variance=9.0),
                row(coord=0, estimator="loo", estimator_version=3, variance=9.0))
    result = check.compare(cur, base)
    assert not result.failed and len(result.rows) == 0
    assert sorted(result.changed["reason"]) == ["estimator loo v1 -> v3",
                                                 "suite toy v1 -> v2"]
    assert any("not comparable" in line for line in check_summary.summary_lines(result))


def test_zero_variance_cells_are_decided_exactly():
    zero = {"estimator": "naive", "unbiased": False, "variance": 0.0, "variance_se": 0.0,
            "mean": 3.0, "bias": 2.0}
    base = frame(*[row(coord=c, **zero) for c in range(5)], row(coord=5))
    cur = frame(
        row(coord=0, **zero),  # still exactly zero
        row(coord=1, **zero | {"variance": 1e-6, "variance_se": 1e-8}),
        row(coord=2, **zero | {"mean": 4.0}),  # deterministic value changed
        row(coord=3, **zero | {"mean": np.nextafter(3.0, 4.0)}),  # one ulp: rounding
        row(coord=4, **zero | {"variance": np.nan, "variance_se": np.nan, "n": 1}),
        row(coord=5, variance=0.0, variance_se=0.0),  # variance vanished: an improvement
    )
    result = check.compare(cur, base)
    assert result.rows.sort_values("coord")["verdict"].tolist() == [
        check.OK, check.VARIANCE_APPEARED, check.VALUE_CHANGED, check.OK, check.NOT_FINITE,
        check.OK]
    assert result.rows["z_variance"].isna().all()  # no division by zero, no test


def test_bias_is_tested_for_registered_unbiased_estimators_with_a_truth():
    cur = frame(
        row(coord=0, bias=0.1, mean=1.1),  # 10 SE
        row(coord=1, bias=0.1, mean=1.1, unbiased=False),  # biased by design
        row(coord=2, bias=np.nan, truth=np.nan, truth_method="none", bias_se=np.nan),
        row(coord=3, bias=1e-16, mean=1.0 + 1e-16, bias_se=0.0, variance=0.0,
            variance_se=0.0),  # an exact estimator, off by rounding only
        row(coord=4, bias=0.0, mean=0.0, bias_se=0.0, variance=0.0, variance_se=0.0,
            truth=0.0),  # exactly right, zero SE: 0/0 is no evidence
    )
    base = cur.assign(bias=0.0)
    result = check.compare(cur, base)
    got = result.rows.sort_values("coord")
    assert got["verdict"].tolist()[:2] == [check.BIAS, check.OK]
    assert got["z_bias"].iloc[0] == pytest.approx(10.0)
    assert got["z_bias"].iloc[1:].isna().iloc[:2].all()
    assert got["z_bias"].iloc[3] < 1 and np.isnan(got["z_bias"].iloc[4])


def test_missing_cells_fail_unless_allowed_and_new_cells_inform():
    base = frame(row(sigma=1.0), row(sigma=2.0))
    cur = frame(row(sigma=1.0), row(sigma=3.0))
    result = check.compare(cur, base)
    assert result.failed and len(result.regressions) == 0
    assert result.missing["settings"].tolist() == ["dim=1 sigma=2"]
    assert result.new["settings"].tolist() == ["dim=1 sigma=3"]
    assert not check.compare(cur, base, allow_missing=True).failed
    markdown = check_summary.to_markdown(result)
    assert "### Missing from current" in markdown and "dim=1 sigma=2" in markdown


def test_version_and_device_differences_are_warnings():
    base = frame(row(), row(device="cuda"))
    cur = frame(row(torch_version="0.0.1"), row(dtype="float32"))
    result = check.compare(cur, base, allow_missing=True)
    assert not result.failed
    text = " ".join(result.warnings)
    assert "torch_version differs" in text and "0.0.1" in text
    assert "device differs" in text and "dtype differs" in text


@pytest.mark.parametrize(
    ("current", "baseline", "options", "fragment"),
    [
        (frame(row(schema_version=1)), frame(row()), {}, "schema 1"),
        (frame(row()).iloc[:0], frame(row()), {}, "no result rows"),
        (frame(row(device="cuda")), frame(row()), {}, "device cuda"),
        (frame(row(sigma=5.0)), frame(row()), {}, "different settings"),
        (frame(row(), row(run_id="s")), frame(row()), {}, "more than once"),
        (frame(row()), frame(row()), {"tolerance": 0.9}, "--tolerance"),
        (frame(row()), frame(row()), {"alpha": 1.5}, "--alpha"),
    ],
)
def test_bad_input_is_a_bench_error(current, baseline, options, fragment):
    with pytest.raises(BenchError, match=fragment):
        check.compare(current, baseline, **options)


# ---------------------------------------------------------------- real runs, degraded estimators

SETTINGS = {"mu": 1.0, "sigma": 1.0, "k": [0.0, 10.0], "dim": 3}
INFLATION = 1.5


@pytest.fixture(scope="module")
def degraded():
    """Test-only estimators, removed from the registry afterwards (other tests list them all).

    inflated: X1 + a (X2 - X3) from three independent pathwise draws, a^2 = (c - 1) / 2, so the
    mean is pathwise's and the variance exactly c times it, whatever the problem.
    biased: pathwise shifted by a quarter of its standard deviation (as measured in the chunk),
    registered unbiased: a bug the gate must catch (|bias| / SE ~ 0.25 sqrt(4000) ~ 16).
    """
    pathwise = get_estimator("pathwise")
    a = math.sqrt((INFLATION - 1) / 2)

    @register_estimator("test-inflated-pathwise", family="pathwise", unbiased=True,
                        requires=pathwise.requires, evals=3)
    def inflated(problem, n):
        x1, x2, x3 = (pathwise.fn(problem, n) for _ in range(3))
        return {k: x1[k] + a * (x2[k] - x3[k]) for k in x1}

    @register_estimator("test-biased-pathwise", family="pathwise", unbiased=True,
                        requires=pathwise.requires)
    def biased(problem, n):
        return {k: v + 0.25 * v.std(dim=0) for k, v in pathwise.fn(problem, n).items()}

    yield
    _REGISTRY.pop("test-inflated-pathwise")
    _REGISTRY.pop("test-biased-pathwise")


def quadratic(estimator, seed, samples=4000):
    return run(estimator, "gaussian-quadratic", SETTINGS, samples=samples, seed=seed)


def test_same_code_another_seed_passes():
    names = ("pathwise", "score-function", "measure-valued", "naive")
    base = pd.concat([quadratic(name, seed=1) for name in names], ignore_index=True)
    cur = pd.concat([quadratic(name, seed=2) for name in names], ignore_index=True)
    result = check.compare(cur, base)
    assert not result.failed, check_summary.to_markdown(result)
    # estimators x k x params x (3 coordinates + the tensor row)
    assert len(result.matched) == len(base) == 4 * 2 * 2 * 4
    # naive's zero variance is compared exactly, not tested; each unbiased estimator's 12
    # coordinate rows get a bias test, its 12 coordinate and 4 tensor rows a variance test,
    # except rows not reliable at n = 4000 (score-function's d/dsigma tail, on either side; the
    # current side's for bias).
    rows = result.rows
    reliable = rows["reliable_c"] & rows["reliable_b"]
    variance = int(((rows["estimator"] != "naive") & reliable).sum())
    bias = int(((rows["estimator"] != "naive") & (rows["level"] == "coord")
                & rows["mean_reliable_c"] & rows["reliable_c"]).sum())
    assert result.tests == variance + bias
    assert variance >= 2 * 2 * 2 * 4  # pathwise and measure-valued are reliable throughout
    assert (rows.loc[~reliable, "verdict"] == check.NOT_TESTABLE).all()


def test_a_degraded_estimator_fails_the_gate(degraded):
    base = quadratic("pathwise", seed=1)
    cur = quadratic("test-inflated-pathwise", seed=2).assign(estimator="pathwise")
    result = check.compare(cur, base)
    assert result.failed
    rows = result.rows
    assert set(rows["verdict"]) == {check.VARIANCE}, check_summary.to_markdown(result)
    # The measured ratio is the designed one, within 5 of its standard errors, on every row.
    z = (np.log(rows["ratio"]) - math.log(INFLATION)) / rows["log_ratio_se"]
    assert np.abs(z).max() < 5


def test_a_biased_estimator_registered_unbiased_fails(degraded):
    base = quadratic("pathwise", seed=1)
    cur = quadratic("test-biased-pathwise", seed=2).assign(estimator="pathwise")
    result = check.compare(cur, base)
    coordinates = result.rows["level"] == "coord"
    assert set(result.rows.loc[coordinates, "verdict"]) == {check.BIAS}
    # Tensor rows of fully listed tensors test the trace only; the variance is pathwise's own:
    # no variance regression alongside.
    assert set(result.rows.loc[~coordinates, "verdict"]) == {check.OK}
    assert (result.rows["q_variance"] > 0.01).all()


def test_the_committed_baseline_passes_for_another_seed():
    # The cheap part of the baseline's grid (dim <= 30 of gaussian-quadratic), every estimator
    # the baseline has, a seed the baseline was not made with.
    baseline = store.read_results(BASELINE)
    quad = baseline[baseline["suite"] == "gaussian-quadratic"]
    small = sorted(int(d) for d in quad["dim"].dropna().unique() if d <= 30)
    assert small, "the baseline lacks the gaussian-quadratic dim <= 30 cells"
    parts = [run(name, "gaussian-quadratic", {"dim": small}, seed=77)
             for name in sorted(quad["estimator"].unique())]
    result = check.compare(pd.concat(parts, ignore_index=True), baseline, allow_missing=True)
    assert not result.failed, check_summary.to_markdown(result)
    assert len(result.new) == 0 and result.matched["_cell"].nunique() == sum(
        p["cell_id"].nunique() for p in parts)


# ---------------------------------------------------------------- the CLI

cli = CliRunner()


def write(tmp_path, name, f):
    path = tmp_path / f"{name}.parquet"
    f.to_parquet(path)
    return path


def test_cli_exit_codes_and_markdown(tmp_path):
    base = write(tmp_path, "base", frame(row(coord=0), row(coord=1)))
    same = write(tmp_path, "same", frame(row(coord=0), row(coord=1, seed=3)))
    worse = write(tmp_path, "worse", frame(row(coord=0, variance=2.0, variance_se=0.04),
                                           row(coord=1)))
    md = tmp_path / "summary.md"
    ok = cli.invoke(app, ["check", str(same), "--baseline", str(base), "--markdown", str(md)])
    assert ok.exit_code == 0, ok.output
    assert "passed" in ok.output and md.read_text().startswith("## gradbench check: passed")
    bad = cli.invoke(app, ["check", str(worse), "--baseline", str(base), "--markdown", str(md)])
    assert bad.exit_code == 1, bad.output
    assert "regressions" in bad.output and "FAILED" in bad.output
    text = md.read_text()
    assert text.startswith("## gradbench check: FAILED") and "| variance |" in text


@pytest.mark.parametrize(
    ("make", "options", "fragment"),
    [
        (lambda d: frame(row(schema_version=7)), [], "schema 7"),
        (lambda d: frame(row(device="cuda")), [], "no cells in common"),
        (lambda d: frame(row()), ["--tolerance", "0.5"], "--tolerance"),
        (lambda d: frame(row()), ["--markdown", "BLOCKED/sub.md"], "cannot write --markdown"),
        (None, [], "holds no .parquet"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, make, options, fragment):
    base = write(tmp_path, "base", frame(row()))
    if make is None:
        current = tmp_path / "empty"
        current.mkdir()
    else:
        current = write(tmp_path, "current", make(tmp_path))
    (tmp_path / "BLOCKED").write_text("a file, not a folder")
    options = [o.replace("BLOCKED", str(tmp_path / "BLOCKED")) for o in options]
    result = cli.invoke(app, ["check", str(current), "--baseline", str(base), *options])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_cli_help_states_the_defaults_in_use():
    # The CLI's help text spells the defaults out (typer options default to None so bench.check
    # stays unimported until `check` runs); they must be the ones bench.check applies.
    text = " ".join(cli.invoke(app, ["check", "--help"], env={"COLUMNS": "200"}).output.split())
    assert f"(default {check.DEFAULT_TOLERANCE:g})" in text
    assert f"(default {check.DEFAULT_ALPHA:g})" in text
