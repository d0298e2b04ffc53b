"""Statistical decisions, in one place: is a bias significant, is a variance larger, what is
rounding. The terminal table, the report, `bench check` and the pytest plugin all call these
(asv's single `is_different`, here for a bias and a variance ratio).

- Rounding floor: a deterministic estimator (exact enumeration) computes the truth by another
  route, so a bias of a few ulps must not look significant when its SE is 0. The floor is
  sqrt(eps) of the dtype, relative to the larger of |truth| and |mean|: enumeration sums terms
  much larger than their total (a truth of 1e-4 from terms of 0.25 carries errors of ~1e-17).
- Bias z: |bias| / sqrt(bias_se^2 + floor^2), NaN where there is no truth.
- Within one cell (table, report): biased when the largest z exceeds
  max(4, Phi^-1(1 - alpha / (2 m))), m the coordinates tested: a Bonferroni bound keeps the
  per-cell false-alarm rate below alpha however many coordinates the cell has.
- Across a whole gate (`bench check`): the same z, referred to Student's t and corrected for
  the skewness of the draws (skewed_two_sided_p), then Benjamini-Hochberg (app.check explains).
- Variance ratio: one-sided test on log(v_c / v_b) with the delta-method SE
  sqrt((se_c / v_c)^2 + (se_b / v_b)^2), optionally against a margin log(tolerance), referred
  to Student's t with the Welch-Satterthwaite degrees of freedom of the two jackknife SEs.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from gradbench.core.student_t import normal_isf, t_sf_array

CELL_ALPHA = 1e-3  # per-cell false-alarm rate of the bias decision (table, report)
MIN_Z = 4.0  # never call a bias significant below 4 SE


def rounding_tolerance(dtype: str) -> float:
    """The relative difference floating-point rounding alone can explain between two routes to
    one deterministic number: sqrt(eps) of the dtype, half its digits."""
    return math.sqrt(torch.finfo(torch.float32 if dtype == "float32" else torch.float64).eps)


def rounding_floor(dtype: np.ndarray, *magnitudes: np.ndarray) -> np.ndarray:
    """Per row: rounding_tolerance(dtype) x the largest |magnitude| given (NaN counts as 0)."""
    dtype = np.asarray(dtype, dtype=object)
    eps = np.array([rounding_tolerance(str(d)) for d in dtype.ravel()], dtype=np.float64)
    stacked = np.abs(np.column_stack([np.asarray(m, dtype=np.float64).ravel()
                                      for m in magnitudes]))
    scale = np.nan_to_num(np.nanmax(np.where(np.isnan(stacked), -np.inf, stacked), axis=1),
                          nan=0.0, neginf=0.0)
    return eps.reshape(dtype.shape) * scale.reshape(dtype.shape)


def normal_sf(z: np.ndarray) -> np.ndarray:
    """P(Z > z) for standard normal Z, accurate far into the tail (erfc, no 1 - cdf
    cancellation); NaN stays NaN, +inf gives 0."""
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * torch.special.erfc(torch.from_numpy(z / math.sqrt(2.0))).numpy()


def bias_z(bias: np.ndarray, bias_se: np.ndarray, truth: np.ndarray, mean: np.ndarray,
           dtype: np.ndarray) -> np.ndarray:
    """|bias| / SE per row, the SE with the rounding floor added in quadrature. NaN where there
    is no truth, and where bias and SE are both exactly 0 (exact and exactly known: no test)."""
    bias = np.asarray(bias, dtype=np.float64)
    floor = rounding_floor(dtype, truth, mean)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(np.asarray(bias_se, dtype=np.float64) ** 2 + floor**2)
        return np.abs(bias) / se


@functools.lru_cache(maxsize=1024)
def bias_threshold(tests: int, alpha: float = CELL_ALPHA) -> float:
    """The z above which a cell with `tests` tested coordinates counts as biased."""
    return max(MIN_Z, normal_isf(alpha / (2 * max(1, int(tests)))))


def t_sf(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """P(T > t) for Student's t with df degrees of freedom per row (inf: the normal); NaN t
    stays NaN, +inf gives 0."""
    return t_sf_array(np.asarray(t, dtype=np.float64), np.asarray(df, dtype=np.float64))


def welch_df(rel_c: np.ndarray, df_c: np.ndarray, rel_b: np.ndarray, df_b: np.ndarray
             ) -> np.ndarray:
    """Welch-Satterthwaite degrees of freedom of sqrt(rel_c^2 + rel_b^2), each SE with its own
    degrees of freedom: (a + b)^2 / (a^2 / df_c + b^2 / df_b), a = rel_c^2, b = rel_b^2. Infinite
    degrees of freedom on both sides (or SEs of 0) give inf."""
    a, b = np.asarray(rel_c, np.float64) ** 2, np.asarray(rel_b, np.float64) ** 2
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        denominator = a * a / np.asarray(df_c, np.float64) + b * b / np.asarray(df_b, np.float64)
        df = (a + b) ** 2 / denominator
    return np.where(denominator > 0, df, np.inf)


def skewed_two_sided_p(z: np.ndarray, df: np.ndarray, skewness: np.ndarray, n: np.ndarray
                       ) -> np.ndarray:
    """Two-sided p-value of a studentised mean z = (mean - truth) / (s / sqrt(n)) of n draws
    with skewness g: P(|T| >= |z|) = 2 t_sf(|z|, df) cosh(g |z|^3 / (3 sqrt(n))).

    Why: the t tail is right for normal draws only. For skewed draws the studentised mean's tail
    opposite the skew is heavier, by the Cramer-type factor exp(g x^3 / (3 sqrt n)) of
    self-normalised sums (the large-x form of Hall's one-term Edgeworth expansion,
    P(T <= x) = Phi(x) + g (2x^2 + 1) phi(x) / (6 sqrt n)); the other tail is lighter by its
    inverse. At the levels a gate's Benjamini-Hochberg correction reaches (|z| ~ 4.5) and
    n = 1e4, g = 4 doubles the two-sided tail. Measured on exponential draws (g = 2), n = 1000,
    |z| >= 3.5: 7.0e-4 observed in 2e6 replications, 6.98e-4 corrected, 4.86e-4 from t alone;
    at n = 200 the correction over-shoots, i.e. is conservative (tests/test_check_reliability.py
    repeats that case). NaN skewness (no coordinate moments) leaves the t p-value as it is."""
    x = np.abs(np.asarray(z, np.float64))
    tail = t_sf(x, df)
    with np.errstate(over="ignore", invalid="ignore"):
        p = np.where(tail > 0, 2.0 * tail * _skew_factor(x, skewness, n), 0.0)
    return np.where(np.isnan(x), np.nan, np.minimum(p, 1.0))


def _skew_factor(x: np.ndarray, skewness: np.ndarray, n: np.ndarray) -> np.ndarray:
    """cosh(|g| x^3 / (3 sqrt n)): the two-sided tail's Cramer-type factor for skewed draws
    (skewed_two_sided_p); 1 where the skewness is NaN or 0, or x is NaN."""
    g = np.nan_to_num(np.asarray(skewness, np.float64), nan=0.0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        a = np.abs(g) * x**3 / (3.0 * np.sqrt(np.asarray(n, np.float64)))
        return np.cosh(np.nan_to_num(a, nan=0.0))


def skew_adjusted_z(z: np.ndarray, skewness: np.ndarray, n: np.ndarray) -> np.ndarray:
    """|z| of a bias, moved to the normal z with the same two-sided tail once the Cramer-type
    factor for skewed draws is applied (skewed_two_sided_p, normal reference): what the table's
    and the report's per-cell bias decisions compare with bias_threshold. NaN or 0 skewness
    leaves |z| as it is, and NaN z stays NaN."""
    x = np.abs(np.asarray(z, np.float64))
    factor = _skew_factor(x, skewness, n)
    with np.errstate(over="ignore", invalid="ignore"):
        half_p = np.minimum(normal_sf(x) * factor, 0.5)
        moved = -torch.special.ndtri(torch.from_numpy(np.asarray(half_p, np.float64))).numpy()
    # Where the normal tail underflows (|z| > ~38) the bias is beyond doubt either way.
    return np.where((factor > 1) & (half_p > 0), moved, x)


def two_sided_p(z: np.ndarray) -> np.ndarray:
    return np.minimum(2.0 * normal_sf(z), 1.0)


def log_ratio_se(v_c: np.ndarray, se_c: np.ndarray, v_b: np.ndarray, se_b: np.ndarray
                 ) -> np.ndarray:
    """SE of log(v_c / v_b) by the delta method, SE(log v) = SE(v) / v, sides independent."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.sqrt((se_c / v_c) ** 2 + (se_b / v_b) ** 2)


def variance_z(ratio: np.ndarray, log_se: np.ndarray, margin: np.ndarray | float = 0.0
               ) -> np.ndarray:
    """One-sided z for "current variance > baseline variance x exp(margin)" on the log scale,
    from the ratio v_c / v_b and log_ratio_se."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return (np.log(ratio) - margin) / log_se


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH adjusted p-values (q-values): reject at level alpha where q <= alpha. NaN p-values are
    not tests: they stay NaN and do not count in m."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return q
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = p[order] * m / np.arange(1, m + 1)
    # q_(i) = min over j >= i of p_(j) m / j: a running minimum from the largest p down.
    q[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return q
