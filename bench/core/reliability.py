"""When a cell's numbers cannot be trusted at its n, and why: the per-row `reliable` (the variance
and everything built on it) and `mean_reliable` verdicts, a reason, and about how many
estimates would be needed.

Three causes, each measured by scripts/calibrate_intervals.py:
- Heavy tails. The Pareto k-hat of the squared deviations (gradbench.core.tail_index) above
  Vehtari et al.'s min(1 - 1/log10 n, 0.7) makes the variance unreliable; k-hat / 2 (the tail of
  |x - mean| itself) above it makes the mean unreliable too.
- Rare states. Where the support is enumerable, the effective probability p_eff of the states
  that carry the variance is known exactly (gradbench.core.rare_states): if fewer than RARE_COUNT
  such draws are expected among the n estimates, they may be missing from the sample, and with
  them most of the variance (issue 12: a state of probability 1e-4 carried 99% of a variance;
  absent, the variance read 230x too small and the bias z = 15). Both mean and variance are then
  unreliable. RARE_COUNT = 10: a single such state is then missed with probability e^-10, and
  n >= 10 (kurtosis - 1) bounds the variance's relative SE, sqrt((kurtosis - 1) / n), by 0.32.
- Too few estimates (n < 50) to check the tail at all.
A sample whose variance is exactly 0 (a deterministic estimator) and a two-point sample (exact
binomial interval, gradbench.core.uncertainty) are reliable whatever their tail index says.

Samples needed, for heavy tails: the estimators here are polynomials, exponentials or ratios of
Gaussian, Gamma and uniform draws, whose tails are stretched exponentials P(Y > y) ~ exp(-y^b):
their local Pareto index at tail probability p is (1 - b) / (b log(1/p)), and the fit's tail
fraction is p = M(n) / n = 3 / sqrt(n). So k-hat falls like 1 / log(1/p(n)) with n, and the n at
which it would meet the threshold is extrapolated from A = k-hat log(1/p(n)). A genuine power-law
tail (constant k) would need more: the number is a lower bound then, and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradbench.core.tail_index import reliable_tail_index, tail_size

MIN_SAMPLES = 50  # below: too few estimates for a tail diagnostic (M < 10 tail points)
RARE_COUNT = 10.0  # expected draws of the states that matter
MAX_EXTRAPOLATION = 1e12


@dataclass(frozen=True)
class RareStates:
    """Per coordinate: the effective probability p_eff = 1 / (kurtosis - 1) of the states that
    carry the reference estimate's variance, and that exact kurtosis (NaN: not known)."""

    probability: np.ndarray
    kurtosis: np.ndarray


def tail_fraction(n: float) -> float:
    return min(0.2, 3.0 / math.sqrt(n))


def samples_for_tail(n: int, k_hat: float, halve: bool = False) -> float:
    """About how many estimates make k-hat (or k-hat / 2 with `halve`) meet the threshold, under
    the stretched-exponential model of the module docstring; inf beyond MAX_EXTRAPOLATION.

    k(n') = A / log(1 / p(n')) with A = k log(1 / p(n)); above n' = 2154 the threshold is 0.7
    and p(n') = 3 / sqrt(n'), so k(n') = 0.7 at n' = 9 exp(2 A / 0.7), rounded up to two
    significant digits; below, the threshold is smaller and the condition is checked directly."""
    k = k_hat / 2.0 if halve else k_hat
    strength = k * math.log(1.0 / tail_fraction(n))
    exponent = 2.0 * strength / 0.7
    if exponent > math.log(MAX_EXTRAPOLATION / 9.0):
        return math.inf
    candidate = max(float(n), 9.0 * math.exp(exponent))
    while strength / math.log(1.0 / tail_fraction(candidate)) > reliable_tail_index(
            int(candidate)):
        candidate *= 1.01  # only where the threshold is below 0.7 (n' < 2154)
    return float(_round_up(candidate))


def _round_up(value: float) -> float:
    """Two significant digits, rounded up."""
    scale = 10.0 ** (math.floor(math.log10(value)) - 1)
    return math.ceil(value / scale) * scale


def judge(n: np.ndarray, k_hat: np.ndarray, variance: np.ndarray, two_point: np.ndarray,
          rare: RareStates | None, proxy: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per row: reliable, mean_reliable, reliability_reason ('' when reliable) and
    samples_needed (NaN when reliable). `proxy` marks rows whose k-hat is not their own (the
    largest of the parameter's tracked coordinates and its tensor norms)."""
    n = np.asarray(n, dtype=np.int64)
    rows = len(n)
    random = np.asarray(variance, dtype=np.float64) > 0  # constant (or no data): nothing to judge
    p = np.full(rows, np.nan) if rare is None else np.asarray(rare.probability, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        is_rare = random & (n * np.nan_to_num(p, nan=np.inf) < RARE_COUNT)
    few = random & ~is_rare & ~two_point & (n < MIN_SAMPLES)
    limit = np.array([reliable_tail_index(int(count)) for count in n]) if rows else np.zeros(0)
    k = np.asarray(k_hat, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        heavy = random & ~is_rare & ~two_point & ~few & (k > limit)
        heavy_mean = heavy & (k / 2.0 > limit)
    reasons = np.full(rows, "", dtype=object)
    needed = np.full(rows, np.nan)
    for i in np.flatnonzero(is_rare):
        needed[i] = _round_up(RARE_COUNT / p[i])
        reasons[i] = (f"rare states: the variance comes from states of probability about "
                      f"{p[i]:.2g} (exact kurtosis {rare.kurtosis[i]:.3g}), expected "
                      f"{n[i] * p[i]:.2g} times in {n[i]} estimates; about "
                      f"{needed[i]:,.0f} needed")
    for i in np.flatnonzero(few):
        needed[i] = MIN_SAMPLES
        reasons[i] = f"n = {n[i]}: too few estimates to check the tail (need {MIN_SAMPLES})"
    for i in np.flatnonzero(heavy):
        needed[i] = samples_for_tail(int(n[i]), float(k[i]))
        source = ("the largest of the parameter's tracked coordinates and tensor norms, "
                  if proxy is not None and proxy[i] else "")
        reasons[i] = (f"heavy tail: k-hat {k[i]:.2f} > {limit[i]:.2f} for n = {n[i]} ({source}"
                      f"squared deviations, {tail_size(int(n[i]))} largest)"
                      + ("; the mean's too" if heavy_mean[i] else "")
                      + "; about " + (f"{needed[i]:,.0f}" if math.isfinite(needed[i])
                                      else f"more than {MAX_EXTRAPOLATION:.0e}")
                      + " needed if the tail is stretched-exponential")
    return {"reliable": ~(is_rare | few | heavy), "mean_reliable": ~(is_rare | heavy_mean),
            "reliability_reason": reasons, "samples_needed": needed}
