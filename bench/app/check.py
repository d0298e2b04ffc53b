"""The statistical regression gate behind `bench check`: compare CURRENT results with a BASELINE
cell by cell and decide, with standard errors rather than point estimates, which rows regressed.

Pure functions on DataFrames (the CLI only prints; the pytest plugin and the tests reuse them).

Rows are matched on the schema's key columns: suite, settings (canonical JSON), estimator,
hyperparams (canonical JSON), device, dtype, param, level and coord; every other column is
metadata or a metric and never affects matching. A cell whose suite or estimator version differs
between the sides is not compared: it is reported as not comparable ("suite gaussian-quadratic
v1 -> v2"), since a changed suite or estimator measures a different thing under the same name.

The tests themselves (variance, bias, degrees of freedom, not-testable rows, exact verdicts)
are in gradbench.app.check_tests.

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
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pandas as pd

from gradbench.app.check_tests import (  # noqa: F401  (re-exported: the verdicts, bias_tests)
    BIAS,
    NONFINITE_ROSE,
    NOT_COMPARABLE,
    NOT_FINITE,
    NOT_TESTABLE,
    OK,
    REGRESSIONS,
    VALUE_CHANGED,
    VARIANCE,
    VARIANCE_AND_BIAS,
    VARIANCE_APPEARED,
    bias_statistics,
    bias_tests,
    bias_z,
    decide,
    variance_statistics,
)
from gradbench.app.errors import BenchError
from gradbench.core.schema import SCHEMA_VERSION

# Chosen from scripts/calibrate_check.py's measurements (docs/calibration-check.md). Tolerance:
# the smallest with no false alarm from the warm-up estimator (1.10 had 3-4 in 40 checks); power
# without a warm-up is the same from 1.0 to 1.15. Alpha: at 0.005 (nominally a 0.5% chance that
# a clean check fails) A/A pairs failed 0.8% of the time on categorical (4/500), 0.8% on gamma
# (3/368) and 1.4% on weibull (5/368), bias tests of skewed estimates at z = 4.3-5.1: too close to
# the 1% target to keep under it, or to show it with a few hundred pairs. At 0.001 categorical had
# 0/500 (95% upper bound 0.74%), for 87% instead of 90% of 1.25x-inflated cells flagged.
DEFAULT_TOLERANCE = 1.15
DEFAULT_ALPHA = 0.001
CELL_COLUMNS = ("suite", "settings", "estimator", "hyperparams", "device", "dtype")
ROW_KEY = ("_cell", "param", "level", "coord")
VERSION_COLUMNS = ("gradbench_version", "torch_version")

# Columns a frame may lack (hand-built frames, the pytest plugin's): their neutral values.
_DEFAULTS = {"warmup_evals": 0, "suite_version": 0, "estimator_version": 0,
             "variance_df": math.inf, "reliable": True, "mean_reliable": True,
             "reliability_reason": "", "samples_needed": math.nan, "param_size": 1,
             "level": "coord", "skewness": math.nan}


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

    @property
    def untestable(self) -> pd.DataFrame:
        """Rows with a test skipped because a number is not reliable at its n."""
        return self.rows[self.rows["untestable"] != ""]


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
    for column, value in _DEFAULTS.items():
        if column not in frame:
            frame[column] = value
    # Vectorised (str.cat): a row-wise join took half of a 5,000-row comparison's time.
    keys = frame[list(CELL_COLUMNS)].astype(str)
    frame["_cell"] = keys[CELL_COLUMNS[0]].str.cat([keys[c] for c in CELL_COLUMNS[1:]], sep="|")
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


_SIDE_COLUMNS = ("variance", "variance_se", "variance_df", "mean", "bias", "bias_se", "truth",
                 "truth_method", "unbiased", "n", "nonfinite", "warmup_evals", "samples", "seed",
                 "run_id", "reliable", "mean_reliable", "reliability_reason", "samples_needed",
                 "param_size", "skewness")


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
        raise BenchError(f"--alpha {alpha}: give a level strictly between 0 and 1 (e.g. 0.001)")
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

    variance_statistics(rows)
    bias_statistics(rows)
    rows, tests = decide(rows, tolerance, alpha)

    result = CheckResult(rows=rows, missing=missing, new=new, changed=changed,
                         tolerance=tolerance, alpha=alpha, allow_missing=allow_missing,
                         tests=tests)
    _context(result, cur, base)
    return result


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
        & ~(matched["variance_b"].fillna(0) <= 0) & matched["untestable"].eq("") \
        & ~(matched["level"].eq("tensor") & (matched["param_size_c"].fillna(1) <= 1))
    if untestable.any():
        result.notes.append(f"{int(untestable.sum())} matched rows have no variance test "
                            "(NaN variance in the baseline, or no SE)")


