"""The statistical regression gate behind `bench check`: compare CURRENT results with a BASELINE
cell by cell and decide, with standard errors rather than point estimates, which rows regressed.

Pure functions on DataFrames (the CLI only prints; the pytest plugin and the tests reuse them).

Rows are matched on the schema's key columns: suite, settings (canonical JSON), estimator,
hyperparams (canonical JSON), device, dtype, param, level and coord; every other column is
metadata or a metric and never affects matching. A cell whose suite or estimator version differs
between the sides is not compared: it is reported as not comparable ("suite gaussian-quadratic
v1 -> v2"), since a changed suite or estimator measures a different thing under the same name.

Tests, one p-value per matched row (variance) and per current row of an estimator registered as
unbiased whose truth is known (bias):

  variance: H0 v_c <= v_b against v_c > v_b, one-sided z test on the log ratio
      z = log(v_c / v_b) / sqrt((se_c / v_c)^2 + (se_b / v_b)^2)
    (delta method: SE(log s^2) = SE(s^2) / s^2; variance_se comes from the fourth moment, so a
    heavy-tailed estimator gets a wide SE instead of a false alarm). A row is a variance regression
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
    reference truth's SE where the truth is a reference value). Tested on the current run alone:
    a registered-unbiased estimator that is biased is wrong whatever the baseline says.

Multiple testing: Benjamini-Hochberg (BH), within families (one per estimator and test kind),
each at alpha_f = alpha m_f / m (m_f its tests, m all tests of the check). Why BH and not Holm:
the gate's false-alarm rate is the probability that a clean run flags anything; under that
complete null every rejection is false, so each family's FDR is the probability that it flags
anything, <= alpha_f, and the union bound gives P(any flag) <= sum alpha_f = alpha, Holm's
guarantee. The smallest p-value faces alpha/m in both procedures. They differ when something
did regress: Holm's bar stays near alpha/m (m ~ 1e5 rows here), while BH's step-up lets the many
rows of a real regression (every coordinate of a 1000-dimensional cell) lower each other's bar
towards alpha_f k/m_f, so a real 1.25x inflation is found with far more power. The price: up to a
fraction alpha of the rows listed in an already failing run may be false. Why families: one
global BH would let a variance regression of one estimator lower the bar for the others and for
the bias tests, and report false "biased" rows next to a real variance regression (measured:
267 "biased" rows among the 47,560 flagged in a 1.25x-inflated run). BH needs independence or
positive dependence (PRDS) within a family: rows of different cells are independent (separate
seeds) and the coordinates of one cell positively dependent (squares and absolute values of
correlated estimates). scripts/calibrate_check.py measures the error rates this gives.

Exact verdicts (no test, no p-value): a baseline variance of exactly zero (naive, exact
estimators) regresses iff the current variance is nonzero, or, if both are zero, iff the
(deterministic) value changed; a current variance that is NaN (no finite estimates) where the
baseline had one regresses. "Zero" and "changed" allow for float rounding:
gradbench.results.decisions.rounding_floor (sqrt(eps) relative) at the estimate's magnitude.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gradbench.app.errors import BenchError
from gradbench.core.schema import SCHEMA_VERSION
from gradbench.results import decisions

# Chosen from scripts/calibrate_check.py's measurements (40 seed pairs; see the README's
# "bench check" section). Tolerance: the smallest with no false alarm from the warm-up estimator
# (1.10 had 3-4 in 40 checks); power without a warm-up is the same from 1.0 to 1.15. Alpha: the
# null z statistics' tails run 1.2-1.5x the normal's at z = 4-4.5 (plug-in SEs), so the nominal
# level sits below the 1% target with that headroom; power lost against 0.01: <= 0.3 points.
DEFAULT_TOLERANCE = 1.15
DEFAULT_ALPHA = 0.005
CELL_COLUMNS = ("suite", "settings", "estimator", "hyperparams", "device", "dtype")
ROW_KEY = ("_cell", "param", "level", "coord")
VERSION_COLUMNS = ("gradbench_version", "torch_version")

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
REGRESSIONS = (VARIANCE, BIAS, VARIANCE_AND_BIAS, VARIANCE_APPEARED, VALUE_CHANGED, NOT_FINITE,
               NONFINITE_ROSE)


@dataclass
class CheckResult:
    """What `compare` found. `rows`: one row per current (cell, param, coord), matched or new,
    with the statistics and the verdict; `missing`/`new`: one row per cell present on one side
    only; `warnings`: differences worth a look that do not fail the check; `notes`: context."""

    rows: pd.DataFrame
    missing: pd.DataFrame
    new: pd.DataFrame
    changed: pd.DataFrame  # cells whose suite or estimator version differs: not compared
    tolerance: float
    alpha: float
    allow_missing: bool
    tests: int
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> pd.DataFrame:
        return self.rows[self.rows["verdict"].isin(REGRESSIONS)]

    @property
    def failed(self) -> bool:
        return len(self.regressions) > 0 or (len(self.missing) > 0 and not self.allow_missing)

    @property
    def matched(self) -> pd.DataFrame:
        return self.rows[self.rows["matched"]]


# ---------------------------------------------------------------- matching


def _label(settings: str, hyperparams: str) -> str:
    """A readable label of a cell's settings and hyperparameters: "sigma=1 k=0 dim=30"."""
    values = {**json.loads(settings), **json.loads(hyperparams)}
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in values.items())


def _prepare(frame: pd.DataFrame, side: str) -> pd.DataFrame:
    if len(frame) == 0:
        raise BenchError(f"{side} holds no result rows; give results written by `bench run`")
    versions = sorted({int(v) for v in frame["schema_version"].dropna().unique()})
    if versions != [SCHEMA_VERSION]:
        raise BenchError(f"{side} has results schema {', '.join(map(str, versions))}, this "
                         f"gradbench reads schema {SCHEMA_VERSION}; regenerate it with `bench run`")
    frame = frame.copy()
    for column in ("warmup_evals", "suite_version", "estimator_version"):
        if column not in frame:
            frame[column] = 0
    frame["_cell"] = frame[list(CELL_COLUMNS)].astype(str).agg("|".join, axis=1)
    labels = {cell: _label(s, h) for cell, s, h in
              frame[["_cell", "settings", "hyperparams"]].drop_duplicates("_cell").itertuples(
                  index=False)}
    frame["_label"] = frame["_cell"].map(labels)
    duplicated = frame.duplicated(list(ROW_KEY))
    if duplicated.any():
        runs = sorted(frame.loc[duplicated, "run_id"].astype(str).unique())[:3]
        cells = frame.loc[duplicated, "_cell"].nunique()
        raise BenchError(f"{side} measures {cells} cell(s) more than once (runs "
                         f"{', '.join(runs)}, ...); give one run folder per cell, not a results "
                         "root holding repeated runs")
    return frame


def _versions(cur: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    """Cells on both sides whose suite or estimator version differs: one row each, with the
    reason ("suite gaussian-quadratic v1 -> v2")."""
    columns = ["_cell", "suite", "estimator", "suite_version", "estimator_version"]
    both = pd.merge(cur[columns].drop_duplicates("_cell"),
                    base[columns].drop_duplicates("_cell"),
                    on=["_cell", "suite", "estimator"], suffixes=("_c", "_b"))
    reasons = []
    for row in both.itertuples(index=False):
        parts = []
        if row.suite_version_b != row.suite_version_c:
            parts.append(f"suite {row.suite} v{row.suite_version_b} -> v{row.suite_version_c}")
        if row.estimator_version_b != row.estimator_version_c:
            parts.append(f"estimator {row.estimator} v{row.estimator_version_b} -> "
                         f"v{row.estimator_version_c}")
        reasons.append("; ".join(parts))
    both["reason"] = reasons
    return both[both["reason"] != ""][["_cell", "reason"]]


# ---------------------------------------------------------------- the comparison


_SIDE_COLUMNS = ("variance", "variance_se", "mean", "bias", "bias_se", "truth", "truth_method",
                 "unbiased", "n", "nonfinite", "warmup_evals", "samples", "seed", "run_id")


def compare(
    current: pd.DataFrame,
    baseline: pd.DataFrame,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    alpha: float = DEFAULT_ALPHA,
    allow_missing: bool = False,
) -> CheckResult:
    """Compare CURRENT with BASELINE (tidy results frames); see the module docstring."""
    if not (math.isfinite(tolerance) and tolerance >= 1.0):
        raise BenchError(f"--tolerance {tolerance}: give a variance ratio >= 1 (e.g. 1.15)")
    if not 0.0 < alpha < 1.0:
        raise BenchError(f"--alpha {alpha}: give a level strictly between 0 and 1 (e.g. 0.005)")
    cur = _prepare(current, "CURRENT")
    base = _prepare(baseline, "BASELINE")
    versions = _versions(cur, base)
    changed = _cells(cur[cur["_cell"].isin(set(versions["_cell"]))], versions)
    cur = cur[~cur["_cell"].isin(set(versions["_cell"]))]
    base = base[~base["_cell"].isin(set(versions["_cell"]))]

    keep = [*ROW_KEY, *_SIDE_COLUMNS]
    merged = pd.merge(
        cur[[*keep, "_label", "suite", "estimator", "device", "dtype"]],
        base[keep],
        on=list(ROW_KEY),
        how="outer",
        suffixes=("_c", "_b"),
        indicator=True,
    )
    only_base = merged["_merge"] == "right_only"
    if not (merged["_merge"] == "both").any() and not len(changed):
        raise BenchError(_no_overlap_message(cur, base))

    missing = _cells(base[base["_cell"].isin(set(merged.loc[only_base, "_cell"]))])
    rows = merged[~only_base].drop(columns="_merge").reset_index(drop=True)
    rows["matched"] = merged.loc[~only_base, "_merge"].to_numpy() == "both"
    new = _cells(cur[cur["_cell"].isin(set(rows.loc[~rows["matched"], "_cell"]))])
    rows = rows.rename(columns={"_label": "settings"})

    _variance_statistics(rows)
    _bias_statistics(rows)
    rows, tests = decide(rows, tolerance, alpha)

    result = CheckResult(rows=rows, missing=missing, new=new, changed=changed,
                         tolerance=tolerance, alpha=alpha, allow_missing=allow_missing,
                         tests=tests)
    _context(result, cur, base)
    return result


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
    rows["p_variance"] = decisions.normal_sf(z)
    rows["q_variance"], rows["q_bias"], tests = _adjust(rows, alpha)
    variance_flag = (rows["q_variance"] <= alpha) & (rows["ratio"] > tolerance)
    bias_flag = rows["q_bias"] <= alpha
    verdict = np.where(variance_flag & bias_flag, VARIANCE_AND_BIAS,
                       np.where(variance_flag, VARIANCE, np.where(bias_flag, BIAS, OK)))
    exact = rows["exact"].to_numpy()
    verdict = np.where(exact != "", exact, verdict)
    rows["verdict"] = np.where((verdict == OK) & nonfinite_rose(rows, alpha), NONFINITE_ROSE,
                               verdict)
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


def _variance_statistics(rows: pd.DataFrame) -> None:
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
    testable = matched & np.isfinite(v_b) & np.isfinite(v_c) & ~zero_b & ~zero_c
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.where(matched, v_c / v_b, np.nan)
        log_se = decisions.log_ratio_se(v_c, se_c, v_b, se_b)
    rows["ratio"] = ratio
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


def _bias_statistics(rows: pd.DataFrame) -> None:
    unbiased = rows["unbiased_c"].fillna(False).astype(bool).to_numpy()
    z = np.where(unbiased, bias_z(rows, "_c"), np.nan)
    rows["z_bias"] = z
    rows["p_bias"] = decisions.two_sided_p(z)


def _cells(frame: pd.DataFrame, reasons: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per cell: suite, settings label, estimator, device, dtype, rows (and the reason,
    for cells that are not comparable)."""
    columns = ["suite", "settings", "estimator", "device", "dtype", "rows"]
    columns += ["reason"] if reasons is not None else []
    if len(frame) == 0:
        return pd.DataFrame(columns=columns)
    grouped = frame.groupby("_cell", sort=False)
    out = grouped[["suite", "estimator", "device", "dtype"]].first()
    out["settings"] = grouped["_label"].first()
    out["rows"] = grouped.size()
    if reasons is not None:
        out = out.join(reasons.set_index("_cell"))
    return out.reset_index(drop=True)[columns]


def _no_overlap_message(cur: pd.DataFrame, base: pd.DataFrame) -> str:
    def values(frame: pd.DataFrame, column: str) -> str:
        return ", ".join(sorted(frame[column].astype(str).unique()))

    for column in ("suite", "device", "dtype", "estimator"):
        if not set(cur[column].astype(str)) & set(base[column].astype(str)):
            return (f"no cells in common: CURRENT has {column} {values(cur, column)}, BASELINE "
                    f"has {values(base, column)}; run CURRENT with the baseline's {column}")
    return ("no cells in common between CURRENT and BASELINE (same suites, estimators, devices "
            "and dtypes, but different settings or hyperparameters); run CURRENT on the "
            "baseline's grid")


def _distinct(frame: pd.DataFrame, column: str) -> list[str]:
    if column not in frame:
        return ["(absent)"]
    return sorted(frame[column].dropna().astype(str).unique())


def _context(result: CheckResult, cur: pd.DataFrame, base: pd.DataFrame) -> None:
    for column in VERSION_COLUMNS:
        b, c = _distinct(base, column), _distinct(cur, column)
        if b != c:
            result.warnings.append(f"{column} differs: baseline {', '.join(b)}, current "
                                   f"{', '.join(c)}")
    for column in ("device", "dtype"):
        b, c = _distinct(base, column), _distinct(cur, column)
        if b != c:
            result.warnings.append(f"{column} differs: baseline {', '.join(b)}, current "
                                   f"{', '.join(c)}; only cells with the same {column} compare")
    matched = result.matched
    flags = matched.groupby("estimator")[["unbiased_c", "unbiased_b"]].first()
    for name, row in flags.iterrows():
        if bool(row["unbiased_c"]) != bool(row["unbiased_b"]):
            result.warnings.append(f"{name} is registered unbiased={bool(row['unbiased_c'])} "
                                   f"now, unbiased={bool(row['unbiased_b'])} in the baseline")
    b_samples, c_samples = _distinct(base, "samples"), _distinct(cur, "samples")
    if b_samples != c_samples:
        result.notes.append(f"samples per cell: baseline {', '.join(b_samples)}, current "
                            f"{', '.join(c_samples)} (the tests use each side's own SEs)")
    shared = set(_distinct(base, "seed")) & set(_distinct(cur, "seed"))
    if shared:
        result.notes.append(f"baseline and current share seed {', '.join(sorted(shared))}: "
                            "cells of unchanged code give identical estimates, so variance "
                            "tests compare a run with itself there")
    warm = sorted(matched.loc[matched["warmup"], "estimator"].astype(str).unique())
    if warm:
        result.notes.append(f"{', '.join(warm)}: a fitted warm-up can move the true variance "
                            f"itself, so their rows test ratio > {result.tolerance:g} "
                            "rather than ratio > 1 (less power)")
    untestable = matched["exact"].eq("") & matched["z_variance"].isna() \
        & ~(matched["variance_b"].fillna(0) <= 0)
    if untestable.any():
        result.notes.append(f"{int(untestable.sum())} matched rows have no variance test "
                            "(NaN variance in the baseline, or no SE)")


