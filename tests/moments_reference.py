"""Independent references for the moment tests (test_statistics, test_statistics_calibration):
summarize() recomputed with numpy/scipy and in long double, test data with varied columns, and
the rounding scale behind the tolerances."""

from __future__ import annotations

import numpy as np
from scipy import stats

EPS = float(np.finfo(np.float64).eps)


# ----------------------------------------------------------------------------------- references


def reference_summary(
    x: np.ndarray, truth: np.ndarray | None = None, truth_se: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """summarize() recomputed with numpy/scipy, the snr SE in a different algebraic form (the
    standardised Lo/Mertens one: (1 - snr * skew + snr^2 * n Var(s^2) / (4 s^4)) / n)."""
    n = x.shape[0]
    mean = x.mean(0)
    var = x.var(0, ddof=1)
    sd = np.sqrt(var)
    mu3 = stats.moment(x, order=3, axis=0)
    mu4 = stats.moment(x, order=4, axis=0)
    var_var = np.maximum(mu4 - (n - 3) / (n - 1) * var**2, 0.0) / n
    snr = np.abs(mean) / sd
    snr_var = (1 - np.sign(mean) * snr * mu3 / sd**3 + snr**2 * n * var_var / var**2 / 4) / n
    out = {
        "n": np.full(x.shape[1], n),
        "mean": mean,
        "mean_se": np.sqrt(var / n),
        "variance": var,
        "variance_se": np.sqrt(var_var),
        "std": sd,
        "snr": snr,
        "snr_se": np.sqrt(snr_var),
    }
    if truth is not None:
        t_se = np.zeros_like(truth) if truth_se is None else truth_se
        bias = mean - truth
        out["bias"] = bias
        out["bias_se"] = np.sqrt(var / n + t_se**2)
        out["mse"] = bias**2 + var
        out["mse_se"] = np.sqrt(4 * bias**2 * (var / n + t_se**2) + var_var + 4 * bias * mu3 / n)
    return out


def long_double_moments(x: np.ndarray) -> tuple[np.ndarray, ...]:
    """(mean, M2, M3, M4) per column in extended precision (64-bit mantissa on x86): more accurate
    than any float64 computation, so it judges one-pass and merged results alike."""
    xl = x.astype(np.longdouble)
    mean = xl.mean(0)
    d = xl - mean
    return tuple(
        np.asarray(v, dtype=np.float64) for v in (mean, (d**2).sum(0), (d**3).sum(0), (d**4).sum(0))
    )


def varied_columns(n: int, rng: np.random.Generator) -> np.ndarray:
    """A huge offset, a skewed column, a small spread around an offset, a plain normal."""
    return np.stack(
        [
            1e8 + rng.standard_normal(n),
            rng.exponential(2.0, size=n),
            -7.0 + 1e-3 * rng.standard_normal(n),
            rng.standard_normal(n),
        ],
        axis=1,
    )


def rounding_scale(x: np.ndarray) -> np.ndarray:
    """Per column, eps * (1 + |mean| / std): one rounding of the mean, in units of std.

    A mean off by r shifts M_k by about k * r * M_(k-1), i.e. by k * r / std in units of
    n * std^k; so this is also the error scale of the standardised moment sums M_k / (n std^k).
    """
    return EPS * (1.0 + np.abs(x.mean(0)) / x.std(0))


def assert_within(got: np.ndarray, expected: np.ndarray, tol: np.ndarray, what: str) -> None:
    err = np.abs(np.asarray(got, dtype=np.float64) - np.asarray(expected, dtype=np.float64))
    assert np.all(err <= tol), f"{what}: error {err} exceeds tolerance {tol}"


def assert_matches_reference(got: dict, ref: dict, x: np.ndarray) -> None:
    """Tolerances: numpy sums pairwise, so its mean is off by at most ~log2(n) eps |mean| (<= 16
    roundings for n <= 65536), ours by a few roundings; two implementations -> 32 roundings.
    - mean, bias: absolutely, 32 * rounding_scale * std.
    - Quantities built from mean and M2 only (M2 is insensitive to the centre at first order:
      dM2/dmean = -2 M1 = 0): relative 64 eps, the summation error of the centred sums.
    - Quantities that use M3 or M4 (first order in the centre's error, k <= 4): relative
      4 * 32 * rounding_scale; mse also, through bias^2, whose error is 2 |bias| * 32 r.
    """
    scale = rounding_scale(x)
    sd = x.std(0)
    np.testing.assert_array_equal(got["n"], ref["n"])
    for key, expected in ref.items():
        if key in ("mean", "bias"):
            assert_within(got[key], expected, 32 * scale * sd, key)
        elif key in ("mean_se", "variance", "std", "snr", "bias_se"):
            assert_within(got[key], expected, 64 * EPS * np.abs(expected), key)
        elif key in ("variance_se", "snr_se", "mse_se", "mse"):
            assert_within(got[key], expected, 128 * scale * np.abs(expected), key)
