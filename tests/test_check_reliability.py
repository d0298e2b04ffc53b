"""`bench check` and numbers that are not reliable at their n: such rows are reported "not
testable at this n" with the reason, never passed or failed silently; t-based p-values; tensor
rows tested for the trace, and for bias (Bonferroni) where coordinate rows were capped."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import invoke
from scipy import stats
from test_check import frame, row

from gradbench.app import check, check_summary
from gradbench.results import decisions

REASON = ("heavy tail: k-hat 1.20 > 0.70 for n = 4000 (squared deviations, 189 largest); "
          "about 81,000 needed if the tail is stretched-exponential")


def test_unreliable_rows_are_not_testable_neither_passed_nor_failed():
    base = frame(row(coord=0), row(coord=1), row(coord=2, reliable=False,
                                                 reliability_reason=REASON))
    cur = frame(
        row(coord=0, variance=9.0, variance_se=0.1, reliable=False, reliability_reason=REASON,
            samples_needed=81_000.0),  # 9x, but the current side is not reliable
        row(coord=1, bias=0.5, mean=1.5, mean_reliable=False, reliable=False,
            reliability_reason="rare states: ...", samples_needed=31_000.0),
        row(coord=2, variance=9.0, variance_se=0.1),  # baseline side not reliable
    )
    result = check.compare(cur, base)
    assert not result.failed
    verdicts = result.rows.set_index("coord")["verdict"]
    assert (verdicts == check.NOT_TESTABLE).all()
    assert result.rows["z_variance"].isna().all()
    # Coordinate 0's mean is reliable but its variance is not: the bias test's SE sqrt(s^2 / n)
    # is as untrustworthy as s^2, so the bias is not tested either.
    assert result.rows.set_index("coord")["z_bias"].isna().tolist() == [True, True, False]
    cells = check_summary.untestable_cells(result)
    assert len(cells) == 1 and cells.loc[0, "rows"] == 3
    assert cells.loc[0, "samples_needed"] == 81_000.0
    reasons = " ".join(result.rows["untestable"])
    assert "variance and bias: heavy tail" in reasons
    assert "variance and bias: rare states" in reasons
    assert "variance: baseline: heavy tail" in reasons
    assert any(line.startswith(check.NOT_TESTABLE) for line in
               check_summary.summary_lines(result))
    assert "Not testable at this n" in check_summary.to_markdown(result)


def test_cli_prints_not_testable_cells_with_reason(tmp_path):
    base = frame(row(coord=0))
    cur = frame(row(coord=0, variance=9.0, reliable=False, reliability_reason=REASON))
    base.to_parquet(tmp_path / "b.parquet")
    cur.to_parquet(tmp_path / "c.parquet")
    result = invoke("check", str(tmp_path / "c.parquet"), "--baseline",
                    str(tmp_path / "b.parquet"))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "not testable at this n (variance and bias: heavy tail: k-hat 1.20" in text
    assert "about 81,000 needed" in text


def test_skewness_corrected_bias_p_value_holds_its_level_where_t_alone_does_not():
    # Studentised means of n = 200 exponential draws (skewness 2): the two-sided tail beyond 3.0
    # by simulation (4e5 replications, fixed seed) against Student's t alone and with the
    # Cramer-type factor. t alone is anti-conservative by many SEs; the correction must not be
    # (it may over-shoot: its next term is O(x^4 / n)).
    n, reps, x = 200, 400_000, 3.0
    generator = torch.Generator().manual_seed(12)
    hits = 0
    for _ in range(reps // 50_000):
        draws = torch.empty(50_000, n, dtype=torch.float64).exponential_(generator=generator)
        t = (draws.mean(1) - 1.0) / (draws.std(1) / math.sqrt(n))
        hits += int((t.abs() >= x).sum())
    observed = hits / reps
    se = math.sqrt(observed * (1 - observed) / reps)
    plain = 2 * stats.t.sf(x, n - 1)
    corrected = decisions.skewed_two_sided_p(np.array([x]), np.array([n - 1.0]),
                                             np.array([2.0]), np.array([n]))[0]
    assert plain < observed - 5 * se
    assert corrected > observed - 3 * se
    assert corrected == pytest.approx(plain * math.cosh(2.0 * x**3 / (3 * math.sqrt(n))))
    # The sign of z does not matter (two-sided), NaN skewness means no correction.
    both = decisions.skewed_two_sided_p(np.array([-x, x, np.inf]), np.array([n - 1.0] * 3),
                                        np.array([-2.0, np.nan, 2.0]), np.array([n] * 3))
    assert both[0] == pytest.approx(corrected) and both[1] == pytest.approx(plain)
    assert both[2] == 0.0


def test_bias_test_of_a_skewed_row_uses_the_corrected_tail():
    # z = 4.4 at n = 10000: skewness -3 multiplies the t tail by cosh(3 x 4.4^3 / 300) = 1.6.
    cur = frame(row(n=10_000, bias=0.044, mean=1.044, skewness=-3.0))
    rows = check.compare(cur, frame(row(n=10_000))).rows
    expected = 2 * stats.t.sf(4.4, 9999) * math.cosh(3.0 * 4.4**3 / 300.0)
    assert rows["p_bias"].iloc[0] == pytest.approx(expected, rel=1e-6)


def test_variance_p_values_use_student_t_with_welch_degrees_of_freedom():
    # log ratio 0.5 with relative SEs 0.1 on both sides: z = 0.5 / sqrt(0.02) = 3.54; with 10
    # dof per side Welch gives 20: P(T_20 > 3.54) = 1.04e-3 (scipy), the normal's 2.0e-4.
    base = frame(row(variance=1.0, variance_se=0.1, variance_df=10.0))
    cur = frame(row(variance=math.exp(0.5), variance_se=0.1 * math.exp(0.5), variance_df=10.0))
    rows = check.compare(cur, base).rows
    assert rows["ratio_df"].iloc[0] == pytest.approx(20.0)
    assert rows["p_variance"].iloc[0] == pytest.approx(stats.t.sf(0.5 / math.sqrt(0.02), 20),
                                                       rel=1e-9)


def test_tensor_rows_test_the_trace_and_capped_tensors_test_bias():
    tensor = {"level": "tensor", "coord": -1, "param_size": 1000}
    # All 1000 coordinate rows present: the tensor row's bias is not tested again.
    base = frame(*[row(coord=c, param_size=1000) for c in range(1000)], row(**tensor))
    cur = frame(*[row(coord=c, param_size=1000) for c in range(1000)],
                row(**tensor, bias=0.05, mean=1.05))  # z = 5 on its worst coordinate
    got = check.compare(cur, base).rows.set_index(["level", "coord"])
    assert math.isnan(got.loc[("tensor", -1), "z_bias"])
    assert got.loc[("tensor", -1), "z_variance"] == 0.0  # the trace is tested
    # Coordinates capped (2 of 1000 shown): the tensor row's worst coordinate is tested against
    # a Bonferroni bound over 1000 coordinates: p = 1000 x 2 P(T_3999 > 5) = 5.8e-4.
    base = frame(row(coord=0, param_size=1000), row(coord=1, param_size=1000), row(**tensor))
    cur = frame(row(coord=0, param_size=1000), row(coord=1, param_size=1000),
                row(**tensor, bias=0.05, mean=1.05))
    got = check.compare(cur, base).rows.set_index(["level", "coord"])
    assert got.loc[("tensor", -1), "p_bias"] == pytest.approx(1000 * 2 * stats.t.sf(5, 3999),
                                                              rel=1e-9)


def test_one_coordinate_tensor_rows_are_not_tested_twice():
    base = frame(row(coord=0), row(level="tensor", coord=-1))
    cur = frame(row(coord=0, variance=1.3, variance_se=0.01),
                row(level="tensor", coord=-1, variance=1.3, variance_se=0.01))
    result = check.compare(cur, base)
    assert result.tests == 2  # the coordinate's variance and bias
    tensor = result.rows[result.rows["level"] == "tensor"].iloc[0]
    assert np.isnan(tensor["z_variance"]) and tensor["verdict"] == check.OK


def test_table_and_report_decide_bias_on_the_skewness_adjusted_z():
    # The normal z with the corrected two-sided tail: 2 sf(z') = 2 sf(z) cosh(|g| z^3 / 3 sqrt n).
    z, g, n = np.array([4.4, 3.0, 4.4]), np.array([-3.0, 2.0, 0.0]), np.array([1e4, 200, 1e4])
    moved = decisions.skew_adjusted_z(z, g, n)
    expected = stats.norm.sf(z) * np.cosh(np.abs(g) * z**3 / (3 * np.sqrt(n)))
    np.testing.assert_allclose(stats.norm.sf(moved), expected, rtol=1e-9)
    assert moved[2] == 4.4
    # One cell, one coordinate at z = 4.1 (threshold 4 for one coordinate): skewness 3 at
    # n = 10000 moves it to 4.05, still biased; skewness 6 to 3.92, not measurably biased.
    from gradbench.app import table
    rows = frame(row(n=10_000, bias=0.041, mean=1.041, skewness=3.0)).assign(cell_id="c")
    assert table.biased_cells(rows)[0]
    assert not table.biased_cells(rows.assign(skewness=6.0))[0]
