"""The statistical tests of `bench check` (gradbench.app.check): one p-value per matched row
(variance) and per current row of an estimator registered as unbiased whose truth is known
(bias), the verdicts, and the multiple-testing adjustment.


  variance: H0 v_c <= v_b against v_c > v_b, one-sided z test on the log ratio
      z = log(v_c / v_b) / sqrt((se_c / v_c)^2 + (se_b / v_b)^2)
    (delta method: SE(log s^2) = SE(s^2) / s^2; variance_se is the grouped jackknife's, which
    sees a tail the sample has drawn, and rows whose tail the sample may not have drawn are not
    tested at all: see "Not testable" below). A row is a variance regression
    when the test rejects after the multiple-testing correction AND the point ratio exceeds the
    tolerance: significance alone would fail CI on harmless 2% changes measured precisely, and the
    tolerance alone would fail it on noise. Taking logs makes the test symmetric in the two runs,
    and the log of a variance estimate is closer to normal than the estimate (its skewness drops).
    Estimators with a warm-up (warmup_evals > 0: a fitted control variate, ...) are the exception:
    the fit is random, so across fits the true variance differs by more than its SE shows
    (measured for score-function-cv when the fit followed the run seed: between-seed SD of log
    variance up to 0.08, ratios of 1.3 between two clean seeds at 1e5 samples). The runner now
    seeds warm-ups by the cell's configuration alone, so runs at different seeds share the fit;
    the rule stays as a guard against fits that move with code or library changes. Their null is
    "ratio <= tolerance": z = (log(v_c / v_b) - log(tolerance)) / SE, at the cost of power.
  bias: H0 E[estimate] = truth, two-sided z = |bias| / bias_se (bias_se already holds the
    reference truth's SE where the truth is a reference value), referred to Student's t with
    n - 1 degrees of freedom, its tail widened for skewed draws by the Cramer-type factor
    cosh(g |z|^3 / (3 sqrt n)) (decisions.skewed_two_sided_p): in the A/A calibration every
    bias false alarm had z of the sign opposite to its row's skewness, as that factor predicts.
    Tested on the current run alone: a registered-unbiased estimator that is biased is wrong
    whatever the baseline says.

Degrees of freedom. variance_se is a grouped-jackknife SE with variance_df = G - 1 degrees of
freedom (gradbench.core.jackknife), so the log-ratio statistic is referred to Student's t with
the Welch-Satterthwaite degrees of freedom of the two sides, not to the normal: at the per-row
levels BH reaches here (~1e-7) a t with 120 degrees of freedom has a tail several times the
normal's. Two-point rows (variance_df = inf) use the normal.

Not testable. A row whose variance is not reliable at its n on either side (`reliable`: a heavy
tail, rare states the sample may have missed, a learned surrogate's least likely states unseen,
n < 50; gradbench.core.reliability) gets no
variance test, and a current row whose mean or variance is not reliable (`mean_reliable`,
`reliable`) no bias test (its SE is sqrt(s^2 / n), wrong with s^2):
their SEs would be wrong in the direction that raises false alarms (issue 12: 5 of 15 clean
categorical pairs). They are reported as "not testable at this n", with the reason and about
how many estimates would make them testable, never passed or failed silently.

Rows tested. Coordinate rows, and the `tensor` row of every parameter with more than one
coordinate for its total variance (the trace pools every coordinate: a uniform 1.25x inflation
of a 1000-coordinate tensor shows there at once). A tensor whose coordinate rows were capped
(`bench run --coords`) is tested for bias on its tensor row: the worst coordinate's z, against
a Bonferroni bound over its param_size coordinates.

Exact verdicts (no test, no p-value): a baseline variance of exactly zero (naive, exact
estimators) regresses iff the current variance is nonzero, or, if both are zero, iff the
(deterministic) value changed; a current variance that is NaN (no finite estimates) where the
baseline had one regresses. "Zero" and "changed" allow for float rounding:
gradbench.results.decisions.rounding_floor (sqrt(eps) relative) at the estimate's magnitude.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gradbench.results import decisions

# Verdicts of a compared row (column `verdict`).
OK = "ok"
VARIANCE = "variance"
BIAS = "bias"
VARIANCE_AND_BIAS = "variance+bias"
VARIANCE_APPEARED = "variance appeared"
VALUE_CHANGED = "value changed"
NOT_FINITE = "variance not finite"
NONFINITE_ROSE = "non-finite estimates rose"
NOT_COMPARABLE = "not comparable"
NOT_TESTABLE = "not testable at this n"
REGRESSIONS = (VARIANCE, BIAS, VARIANCE_AND_BIAS, VARIANCE_APPEARED, VALUE_CHANGED, NOT_FINITE,
               NONFINITE_ROSE)

def decide(rows: pd.DataFrame, tolerance: float, alpha: float) -> tuple[pd.DataFrame, int]:
    """Tests and verdicts from the compared rows' statistics at this tolerance and alpha: adds
    z_variance, p_variance, q_variance, q_bias and verdict to a copy; returns it and the number of
    tests. Separate from `compare` so a calibration can sweep tolerance and alpha cheaply."""
    rows = rows.copy()
    # Rows of an estimator with a warm-up test "ratio <= tolerance" (see _variance_statistics).
    margin = np.where(rows["warmup"].to_numpy(), math.log(tolerance), 0.0)
    z = decisions.variance_z(rows["ratio"].to_numpy(np.float64),
                             rows["log_ratio_se"].to_numpy(np.float64), margin)
    rows["z_variance"] = z
    rows["p_variance"] = decisions.t_sf(z, rows["ratio_df"].to_numpy(np.float64))
    rows["q_variance"], rows["q_bias"], tests = _adjust(rows, alpha)
    variance_flag = (rows["q_variance"] <= alpha) & (rows["ratio"] > tolerance)
    bias_flag = rows["q_bias"] <= alpha
    verdict = np.where(variance_flag & bias_flag, VARIANCE_AND_BIAS,
                       np.where(variance_flag, VARIANCE, np.where(bias_flag, BIAS, OK)))
    exact = rows["exact"].to_numpy()
    verdict = np.where(exact != "", exact, verdict)
    verdict = np.where((verdict == OK) & nonfinite_rose(rows, alpha), NONFINITE_ROSE, verdict)
    rows["verdict"] = np.where((verdict == OK) & (rows["untestable"].to_numpy() != ""),
                               NOT_TESTABLE, verdict)
    return rows, tests


def nonfinite_rose(rows: pd.DataFrame, alpha: float) -> np.ndarray:
    """Matched rows whose share of non-finite (NaN/Inf) estimates rose: from zero in the
    baseline to any, or beyond noise (one-sided pooled two-proportion z test, Bonferroni over
    the rows with non-finite estimates on both sides, at `alpha`). An estimator that starts
    producing NaN has regressed even though its finite estimates look fine."""
    def column(name: str) -> np.ndarray:
        return rows[name].fillna(0).to_numpy(np.float64)

    bad_c, bad_b = column("nonfinite_c"), column("nonfinite_b")
    all_c, all_b = column("n_c") + bad_c, column("n_b") + bad_b
    matched = rows["matched"].to_numpy(bool)
    appeared = matched & (bad_c > 0) & (bad_b == 0)
    both = matched & (bad_c > 0) & (bad_b > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (bad_c + bad_b) / (all_c + all_b)
        se = np.sqrt(pooled * (1.0 - pooled) * (1.0 / all_c + 1.0 / all_b))
        z = (bad_c / all_c - bad_b / all_b) / se
    p = decisions.normal_sf(np.where(both, z, np.nan))
    tests = max(int(both.sum()), 1)
    return appeared | (both & (p <= alpha / tests))


def _adjust(rows: pd.DataFrame, alpha: float) -> tuple[np.ndarray, np.ndarray, int]:
    """BH q-values within each family (estimator x test kind), rescaled so that comparing them
    with alpha runs each family's BH at alpha_f = alpha m_f / m (m_f its tests, m all tests)."""
    kinds = {"variance": rows["p_variance"].to_numpy(), "bias": rows["p_bias"].to_numpy()}
    m = sum(int(np.count_nonzero(~np.isnan(p))) for p in kinds.values())
    out = {kind: np.full(len(rows), np.nan) for kind in kinds}
    estimators = rows["estimator"].astype(str).to_numpy()
    for name in np.unique(estimators):
        mask = estimators == name
        for kind, p in kinds.items():
            m_f = int(np.count_nonzero(~np.isnan(p[mask])))
            if m_f:
                # q <= alpha m_f / m  <=>  q m / m_f <= alpha
                out[kind][mask] = np.minimum(
                    decisions.benjamini_hochberg(p[mask]) * m / m_f, 1.0)
    return out["variance"], out["bias"], m


def variance_statistics(rows: pd.DataFrame) -> None:
    """ratio and the SE of its log (delta method) per matched row; `exact` verdicts for rows
    that need no test (zero or NaN variances); `warmup` for estimators with a warm-up."""
    v_c = rows["variance_c"].to_numpy(dtype=np.float64)
    v_b = rows["variance_b"].to_numpy(dtype=np.float64)
    se_c = rows["variance_se_c"].to_numpy(dtype=np.float64)
    se_b = rows["variance_se_b"].to_numpy(dtype=np.float64)
    matched = rows["matched"].to_numpy()
    floor = decisions.rounding_floor(rows["dtype"].to_numpy(), rows["mean_c"].to_numpy(),
                                     rows["mean_b"].to_numpy())
    zero_c = v_c <= floor**2
    zero_b = v_b <= floor**2
    # A one-coordinate tensor row repeats its coordinate row: tested once, as the coordinate.
    duplicate = (rows["level"].to_numpy() == "tensor") & (
        rows["param_size_c"].fillna(1).to_numpy() <= 1)
    reliable = _flag(rows, "reliable_c") & _flag(rows, "reliable_b")
    comparable = matched & np.isfinite(v_b) & np.isfinite(v_c) & ~zero_b & ~zero_c & ~duplicate
    testable = comparable & reliable
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.where(matched, v_c / v_b, np.nan)
        log_se = decisions.log_ratio_se(v_c, se_c, v_b, se_b)
        rows["ratio_df"] = decisions.welch_df(se_c / v_c, rows["variance_df_c"].to_numpy(
            np.float64), se_b / v_b, rows["variance_df_b"].to_numpy(np.float64))
    rows["ratio"] = ratio
    rows["untestable"] = _untestable(rows, comparable & ~reliable, "variance")
    # NaN log_se (untestable rows) makes z NaN: no test. A zero log_se (both SEs zero, only for
    # near-constant estimates) makes z +-inf: decided by the sign of the change.
    rows["log_ratio_se"] = np.where(testable, log_se, np.nan)
    # A warm-up (a fitted control variate, ...) makes the cell's true variance itself random from
    # seed to seed, by more than its SE shows (measured: score-function-cv sigma ratios up to 1.32
    # between seeds at 1e5 samples); for those rows the null is "ratio <= tolerance", not "<= 1".
    rows["warmup"] = (rows["warmup_evals_c"].fillna(0).to_numpy(np.float64) > 0) | (
        rows["warmup_evals_b"].fillna(0).to_numpy(np.float64) > 0)
    value_changed = np.abs(rows["mean_c"].to_numpy(np.float64)
                           - rows["mean_b"].to_numpy(np.float64)) > floor
    exact = np.full(len(rows), "", dtype=object)
    exact[matched & zero_b & ~zero_c & np.isfinite(v_c)] = VARIANCE_APPEARED
    exact[matched & zero_b & zero_c & value_changed] = VALUE_CHANGED
    exact[matched & np.isfinite(v_b) & np.isnan(v_c)] = NOT_FINITE
    rows["exact"] = exact


def bias_z(frame: pd.DataFrame, suffix: str = "") -> np.ndarray:
    """decisions.bias_z on a results frame's columns (with `suffix`), NaN where the truth is
    unknown."""
    z = decisions.bias_z(frame[f"bias{suffix}"].to_numpy(np.float64),
                         frame[f"bias_se{suffix}"].to_numpy(np.float64),
                         frame[f"truth{suffix}"].to_numpy(np.float64),
                         frame[f"mean{suffix}"].to_numpy(np.float64), frame["dtype"].to_numpy())
    known = (frame[f"truth_method{suffix}"].astype(str) != "none").to_numpy()
    return np.where(known, z, np.nan)


def _flag(rows: pd.DataFrame, column: str) -> np.ndarray:
    """A boolean column of one side; rows missing on that side count as True (no objection)."""
    return rows[column].fillna(True).astype(bool).to_numpy()


def _untestable(rows: pd.DataFrame, skipped: np.ndarray, test: str) -> np.ndarray:
    """Per row: '' or why its `test` was skipped, "variance: <reason>" (baseline's reason
    marked as such, the current's first), appended to what is already there."""
    out = (rows["untestable"].to_numpy(dtype=object).copy() if "untestable" in rows
           else np.full(len(rows), "", dtype=object))
    current = rows["reliability_reason_c"].fillna("").astype(str).to_numpy()
    baseline = rows["reliability_reason_b"].fillna("").astype(str).to_numpy() \
        if "reliability_reason_b" in rows else np.full(len(rows), "")
    for i in np.flatnonzero(skipped):
        reason = current[i] or (f"baseline: {baseline[i]}" if baseline[i] else "not reliable")
        if not out[i]:
            out[i] = f"{test}: {reason}"
        elif out[i].endswith(f": {reason}"):  # the same reason: "variance and bias: ..."
            tests, _, _ = out[i].partition(": ")
            out[i] = f"{tests} and {test}: {reason}"
        else:
            out[i] = f"{out[i]}; {test}: {reason}"
    return out


def bias_tests(frame: pd.DataFrame, suffix: str = "", cell: str = "cell_id"
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bias tests of one side of a comparison (or of one results frame): per row, z, the
    p-value, and whether the row is a test at all. Tested: rows of estimators registered
    unbiased with a known truth; a tensor row (its worst coordinate) only where the coordinate
    rows do not cover the tensor (capped by --coords), against a Bonferroni bound over its
    param_size coordinates. Rows whose mean or variance is not reliable are candidates but get
    NaN."""
    unbiased = frame[f"unbiased{suffix}"].fillna(False).astype(bool).to_numpy()
    level = frame["level"].to_numpy() if "level" in frame else np.full(len(frame), "coord")
    tensor = level == "tensor"
    size = (frame[f"param_size{suffix}"].fillna(1).to_numpy(np.float64)
            if f"param_size{suffix}" in frame else np.ones(len(frame)))
    # Per row: the coordinate rows shown of its (cell, parameter).
    shown = pd.Series(~tensor, index=frame.index).groupby(
        [frame[cell], frame["param"]], sort=False, dropna=False).transform("sum").to_numpy()
    covered = shown >= size
    candidate = unbiased & ~(tensor & covered)
    z = np.where(candidate, bias_z(frame, suffix), np.nan)
    candidate &= ~np.isnan(z)
    z = np.where(_trusted(frame, suffix), z, np.nan)
    # Student's t with n - 1 degrees of freedom (mean_se is the plug-in sqrt(s^2 / n)), its
    # tail corrected for the draws' skewness: the far tail BH reaches is where it matters.
    n = (frame[f"n{suffix}"].to_numpy(np.float64) if f"n{suffix}" in frame
         else np.full(len(frame), np.inf))
    skewness = (frame[f"skewness{suffix}"].to_numpy(np.float64) if f"skewness{suffix}" in frame
                else np.full(len(frame), np.nan))
    p = decisions.skewed_two_sided_p(z, np.where(n >= 2, n - 1.0, np.inf), skewness, n)
    return z, np.where(tensor, np.minimum(1.0, p * size), p), candidate


def _trusted(frame: pd.DataFrame, suffix: str) -> np.ndarray:
    """Rows whose bias can be tested: the mean reliable (mean_reliable), and the variance too
    (reliable): the test's SE is sqrt(s^2 / n), as wrong as s^2 when the tail is unseen, and
    its skewness correction needs the third moment a trustworthy variance implies."""
    trusted = np.ones(len(frame), dtype=bool)
    for column in (f"mean_reliable{suffix}", f"reliable{suffix}"):
        if column in frame:
            trusted &= frame[column].fillna(True).astype(bool).to_numpy()
    return trusted


def bias_statistics(rows: pd.DataFrame) -> None:
    z, p, candidate = bias_tests(rows, "_c", "_cell")
    rows["untestable"] = _untestable(rows, candidate & np.isnan(z), "bias")
    rows["z_bias"] = z
    rows["p_bias"] = p
