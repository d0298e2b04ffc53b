"""Student's t tail probabilities and quantiles, accurate far into the tail (no scipy at run time).

Why: jackknife standard errors from G groups carry G - 1 degrees of freedom, and the gate tests
at per-row levels down to ~1e-8 (Benjamini-Hochberg over 1e5 rows), where a t with 60 degrees of
freedom has a tail ~20 times the normal's: normal p-values would be a false-alarm factory.

P(T > t) = I_x(nu/2, 1/2) / 2 with x = nu / (nu + t^2) (t > 0), I the regularised incomplete beta
function, evaluated by its continued fraction (DLMF 8.17.22) with the modified Lentz algorithm
(Press et al., Numerical Recipes, 3rd ed., sec. 5.2), which converges fast for x < (a+1)/(a+b+2);
otherwise the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) applies. Deep in the tail x is small, so
the tail probability is computed directly, never as 1 - (something near 1).
"""

from __future__ import annotations

import math

import numpy as np

_TINY = 1e-300
_ITERATIONS = 300
_TOLERANCE = 1e-15


def _beta_fraction(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The continued fraction of I_x(a, b), elementwise (valid and fast for
    x < (a + 1) / (a + b + 2)); iterates until every element has converged."""
    c = np.ones_like(x)
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / np.where(np.abs(d) > _TINY, d, _TINY)
    result = d.copy()
    for m in range(1, _ITERATIONS + 1):
        step = np.ones_like(x)
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / np.where(np.abs(d) > _TINY, d, _TINY)
            c = 1.0 + numerator / c
            c = np.where(np.abs(c) > _TINY, c, _TINY)
            step = step * c * d
        result = result * step
        if np.all(np.abs(step - 1.0) < _TOLERANCE):
            break
    return result


def incomplete_beta(a: np.ndarray | float, b: np.ndarray | float, x: np.ndarray | float,
                    y: np.ndarray | float | None = None) -> np.ndarray:
    """The regularised incomplete beta function I_x(a, b), a, b > 0, 0 <= x <= 1, elementwise.
    `y` = 1 - x, when the caller has it more accurately than 1 - x (x near 1)."""
    x = np.asarray(x, dtype=np.float64)
    y = 1.0 - x if y is None else np.asarray(y, dtype=np.float64)
    a, b, x, y = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64), x, y)
    direct = x < (a + 1.0) / (a + b + 2.0)
    # The fraction runs on (a, b, x) where it converges fast, else on (b, a, 1 - x).
    pa, pb, px = np.where(direct, a, b), np.where(direct, b, a), np.where(direct, x, y)
    inner = np.clip(px, 1e-300, 1.0 - 1e-16)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_front = (a * np.log(x) + b * np.log(y) + _lgamma(a + b) - _lgamma(a) - _lgamma(b))
        part = np.exp(log_front) * _beta_fraction(pa, pb, inner) / pa
    out = np.where(direct, part, 1.0 - part)
    return np.where(x <= 0.0, 0.0, np.where(y <= 0.0, 1.0, out))


def _lgamma(v: np.ndarray) -> np.ndarray:
    return np.vectorize(math.lgamma, otypes=[np.float64])(v)


def t_sf_array(t: np.ndarray | float, df: np.ndarray | float) -> np.ndarray:
    """P(T > t) for Student's t with df > 0 degrees of freedom, elementwise; df = inf gives the
    normal; NaN in, NaN out."""
    t, df = np.broadcast_arrays(np.asarray(t, np.float64), np.asarray(df, np.float64))
    out = np.full(t.shape, np.nan)
    normal = np.isinf(df) & ~np.isnan(t)
    out[normal] = 0.5 * np.vectorize(math.erfc, otypes=[np.float64])(t[normal] / math.sqrt(2.0))
    finite = ~np.isnan(t) & ~np.isnan(df) & ~np.isinf(df)
    if finite.any():
        tf, nu = t[finite], df[finite]
        with np.errstate(over="ignore", invalid="ignore"):
            t2 = tf * tf
            # x = nu / (nu + t^2) and 1 - x = t^2 / (nu + t^2), each without cancellation.
            x = np.where(np.isinf(t2), 0.0, nu / (nu + t2))
            y = np.where(np.isinf(t2), 1.0, t2 / (nu + t2))
        tail = 0.5 * incomplete_beta(0.5 * nu, 0.5, x, y)
        out[finite] = np.where(tf >= 0, tail, 1.0 - tail)
    return out


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with df > 0 degrees of freedom (df = inf: the normal)."""
    return float(t_sf_array(t, df))


def t_isf(p: float, df: float) -> float:
    """t with P(T > t) = p, 0 < p < 1: Newton's method on t_sf from the normal quantile
    (t_sf' = -density), then bisection if Newton ever leaves the bracket it keeps."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_isf needs 0 < p < 1, got {p}")
    if math.isinf(df):
        return normal_isf(p)
    log_norm = (math.lgamma((df + 1) / 2) - math.lgamma(df / 2)
                - 0.5 * math.log(df * math.pi))
    low, high = -math.inf, math.inf
    t = normal_isf(p)
    for _ in range(100):
        excess = t_sf(t, df) - p
        if excess == 0.0:
            return t
        if excess > 0:
            low = max(low, t)
        else:
            high = min(high, t)
        density = math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))
        step = t + excess / density
        if not low < step < high:  # Newton overshot: halve the bracket (or widen it)
            step = 0.5 * (low + high) if math.isfinite(low + high) else (
                2 * t + 1 if math.isinf(high) else 2 * t - 1)
        if abs(step - t) <= 1e-15 * max(1.0, abs(t)):
            return step
        t = step
    return t


def normal_isf(p: float) -> float:
    """z with P(Z > z) = p (0 < p < 1), by bisection on erfc (no scipy): 80 halvings of
    [-40, 40] are below float64 resolution."""
    low, high = -40.0, 40.0
    for _ in range(80):
        mid = 0.5 * (low + high)
        if 0.5 * math.erfc(mid / math.sqrt(2.0)) > p:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)
