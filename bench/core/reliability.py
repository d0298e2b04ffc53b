"""When a cell's numbers cannot be trusted at its n, and why: the per-row `reliable` (the variance
and everything built on it) and `mean_reliable` verdicts, a reason, and about how many
estimates would be needed. Each rule was chosen on scripts/calibrate_intervals.py's replicated
cells with exact moments (docs/calibration-intervals.md).

- Heavy tails. A mean of n draws has a normal-theory interval only if the draws have a finite
  variance, i.e. a Pareto tail index k < 1/2, and pre-asymptotically Vehtari et al. (2024) find
  means reliable for k-hat < 1 - 1/log10(n). The variance is a mean of the squared deviations
  Y, so it is unreliable when the k-hat of Y (gradbench.core.tail_index) exceeds
  LIMIT(n) = min(1 - 1/log10 n, 1/2); the mean, whose draws have tail index k(Y)/2, when
  k-hat / 2 does. (Measured: Vehtari et al.'s own cap of 0.7 left the score function's d/dmu
  variance interval at 0.90 coverage among unflagged runs at n = 2000.)
- Skewness, for the mean: Cochran's rule as refined by Sugden, Smith & Jones (2000, JRSS B 62,
  787-793): the 95% interval of a mean needs n > 28 + 25 g1^2, g1 the skewness.
- Rare states. Where the support is enumerable, the effective probability p_eff of the states
  that carry the variance is known exactly (gradbench.core.rare_states): if fewer than RARE_COUNT
  such draws are expected among the n estimates, they may be missing from the sample, and with
  them most of the variance (issue 12: a state of probability 1e-4 carried 99% of a variance;
  absent, the variance read 230x too small and the bias z = 15). Both mean and variance are then
  unreliable. RARE_COUNT = 10: a single such state is then missed with probability e^-10, and
  n >= 10 (kurtosis - 1) bounds the variance's relative SE, sqrt((kurtosis - 1) / n), by 0.32.
  An estimator with a learned surrogate (RELAX) is not bounded by the reference estimate: any
  state may carry its variance, so the least likely value of each coordinate's component of q
  must be seen often enough for the mean's skewness rule below (see _surrogate_flags).
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
from dataclasses import dataclass, replace

import numpy as np

from gradbench.core.tail_index import reliable_tail_index, tail_size

MIN_SAMPLES = 50  # below: too few estimates for a tail diagnostic (M < 10 tail points)
RARE_COUNT = 10.0  # expected draws of the states that matter
MAX_EXTRAPOLATION = 1e12
FINITE_VARIANCE = 0.5  # the largest tail index with a finite variance


def limit(n: int) -> float:
    """LIMIT(n): the largest k-hat at which a mean of n draws has a trustworthy interval."""
    return min(reliable_tail_index(n), FINITE_VARIANCE)


def skewness_needs(skewness: float | np.ndarray) -> float | np.ndarray:
    """Estimates a mean's 95% interval needs at this skewness (Sugden et al. 2000)."""
    return 28.0 + 25.0 * skewness * skewness


@dataclass(frozen=True)
class RareStates:
    """Per coordinate: the effective probability p_eff = 1 / (kurtosis - 1) of the states that
    carry the reference estimate's variance, and that exact kurtosis (NaN: not known).

    `least_likely`: per coordinate, the probability of the least likely value of the
    coordinate's own component of q (NaN: not known). `surrogate` marks a judgement for an
    estimator with a learned surrogate (see `judge`), for which that state may be the one that
    matters whatever the reference estimate says."""

    probability: np.ndarray
    kurtosis: np.ndarray
    least_likely: np.ndarray | None = None
    surrogate: bool = False

    def at(self, index: slice | np.ndarray) -> RareStates:
        """These states at some coordinates."""
        least = None if self.least_likely is None else self.least_likely[index]
        return replace(self, probability=self.probability[index],
                       kurtosis=self.kurtosis[index], least_likely=least)

    def for_surrogate(self) -> RareStates:
        """The states as judged for an estimator with a learned surrogate."""
        return replace(self, surrogate=True)


def bernoulli_skewness(p: np.ndarray) -> np.ndarray:
    """|g1| of an estimate that is large on an event of probability p and flat elsewhere (a
    Bernoulli(p) draw, up to scale): the skewness a rare state brings when it carries the
    variance."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(1.0 - 2.0 * p) / np.sqrt(p * (1.0 - p))


def tail_fraction(n: float) -> float:
    return min(0.2, 3.0 / math.sqrt(n))


def samples_for_tail(n: int, k_hat: float) -> float:
    """About how many estimates make k-hat meet LIMIT, under the stretched-exponential model of
    the module docstring; inf beyond MAX_EXTRAPOLATION.

    k(n') = A / log(1 / p(n')) with A = k log(1 / p(n)); from n' = 100 on LIMIT is 1/2 and (from
    n' = 225) p(n') = 3 / sqrt(n'), so k(n') = 1/2 at n' = 9 exp(2 A / 0.5), rounded up to two
    significant digits; the condition is checked directly where that approximation is off."""
    strength = k_hat * math.log(1.0 / tail_fraction(n))
    exponent = 2.0 * strength / FINITE_VARIANCE
    if exponent > math.log(MAX_EXTRAPOLATION / 9.0):
        return math.inf
    candidate = max(float(n), 9.0 * math.exp(exponent))
    while strength / math.log(1.0 / tail_fraction(candidate)) > limit(int(candidate)):
        candidate *= 1.01
    return float(_round_up(candidate))


def _round_up(value: float) -> float:
    """Two significant digits, rounded up."""
    scale = 10.0 ** (math.floor(math.log10(value)) - 1)
    return math.ceil(value / scale) * scale


def judge(n: np.ndarray, k_hat: np.ndarray, variance: np.ndarray, two_point: np.ndarray,
          rare: RareStates | None, proxy: np.ndarray | None = None,
          skewness: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per row: reliable, mean_reliable, reliability_reason ('' when reliable) and
    samples_needed (NaN when reliable). `proxy` marks rows whose k-hat is not their own (the
    largest of the parameter's tracked coordinates and its tensor norms)."""
    n = np.asarray(n, dtype=np.int64)
    rows = len(n)
    if rare is not None and len(rare.probability) != rows:
        raise ValueError(f"rare states for {len(rare.probability)} rows, judging {rows}")
    random = np.asarray(variance, dtype=np.float64) > 0  # constant (or no data): nothing to judge
    p = np.full(rows, np.nan) if rare is None else np.asarray(rare.probability, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        is_rare = random & (n * np.nan_to_num(p, nan=np.inf) < RARE_COUNT)
    few = random & ~is_rare & ~two_point & (n < MIN_SAMPLES)
    bound = np.array([limit(int(count)) for count in n]) if rows else np.zeros(0)
    k = np.asarray(k_hat, dtype=np.float64)
    g = np.zeros(rows) if skewness is None else np.nan_to_num(np.asarray(skewness, np.float64))
    with np.errstate(invalid="ignore"):
        heavy = random & ~is_rare & ~two_point & ~few & (k > bound)
        heavy_mean = heavy & (k / 2.0 > bound)
    skewed = random & ~is_rare & ~two_point & ~few & (n < skewness_needs(g))
    unseen_mean, unseen = _surrogate_flags(n, rare, random & ~is_rare & ~two_point & ~few)
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
    for i in np.flatnonzero(heavy | skewed):
        needed[i], reasons[i] = _tail_reason(
            int(n[i]), float(k[i]), float(bound[i]), float(g[i]), bool(heavy[i]),
            bool(heavy_mean[i]), bool(skewed[i]), proxy is not None and bool(proxy[i]))
    for i in np.flatnonzero(unseen_mean):
        wanted, reason = _surrogate_reason(int(n[i]), float(rare.least_likely[i]), unseen[i])
        # Another rule's reason ends in its own "about N needed"; samples_needed is the larger.
        reasons[i] = (f"{reason} (about {wanted:,.0f} needed for it); {reasons[i]}"
                      if reasons[i] else f"{reason}; about {wanted:,.0f} needed")
        needed[i] = np.nanmax([needed[i], wanted])
    return {"reliable": ~(is_rare | few | heavy | unseen),
            "mean_reliable": ~(is_rare | heavy_mean | skewed | unseen_mean),
            "reliability_reason": reasons, "samples_needed": needed}


def _surrogate_flags(n: np.ndarray, rare: RareStates | None, candidate: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose mean, and whose variance, an estimator with a learned surrogate (RELAX's
    network) cannot be trusted with at this n. The reference estimate bounds how much each state
    can matter only for estimators whose terms are bounded where the cost is; a surrogate fitted
    to draws that seldom held a state can be far off there, and then that state carries the
    variance (measured: RELAX on categorical at scale 3, the class of probability 0.0012 expected
    12 times in 10,000 estimates; two clean A/A pairs in 370 failed the bias test at z 4.7 and
    5.0, with 0.32x and 0.85x the baseline's variance). So every state may matter: the least
    likely value of each coordinate's component of q, probability p, must be drawn often
    enough for the mean's interval at the skewness such a state brings (Sugden's rule with the
    Bernoulli(p) skewness), and RARE_COUNT times for the variance."""
    none = np.zeros(len(n), dtype=bool)
    if rare is None or not rare.surrogate or rare.least_likely is None:
        return none, none
    p = np.asarray(rare.least_likely, dtype=np.float64)
    known = candidate & np.isfinite(p) & (p > 0)
    with np.errstate(invalid="ignore"):
        mean = known & (n < skewness_needs(bernoulli_skewness(p)))
        variance = known & (n * p < RARE_COUNT)
    return mean, variance


def _surrogate_reason(n: int, p: float, variance_too: bool) -> tuple[float, str]:
    """Estimates needed and the reason, for a learned surrogate's unseen states."""
    g = float(bernoulli_skewness(np.array(p)))
    needed = _round_up(max(skewness_needs(g), RARE_COUNT / p))
    return needed, (f"learned surrogate: the least likely state (probability {p:.2g}, expected "
                    f"{n * p:.2g} times in {n} estimates) may carry the variance, whose "
                    f"skewness {g:.2g} needs n > 28 + 25 g1^2 = {skewness_needs(g):,.0f} for "
                    f"the mean{'; the variance too' if variance_too else ''}")


def _tail_reason(n: int, k: float, bound: float, g: float, heavy: bool, heavy_mean: bool,
                 skewed: bool, proxy: bool) -> tuple[float, str]:
    """Estimates needed and the reason, for a heavy tail and/or a skewed mean."""
    parts, wanted = [], []
    if heavy:
        wanted.append(samples_for_tail(n, k))
        source = ("the largest of the parameter's tracked coordinates and tensor norms, "
                  if proxy else "")
        parts.append(f"heavy tail: k-hat {k:.2f} > {bound:.2f} for n = {n} ({source}squared "
                     f"deviations, {tail_size(n)} largest)"
                     + ("; the mean's too" if heavy_mean else ""))
    if skewed:
        wanted.append(_round_up(skewness_needs(g)))
        parts.append(f"{'the mean: ' if not heavy else ''}skewness {g:.2g} needs n > 28 + 25 "
                     f"g1^2 = {skewness_needs(g):,.0f}")
    needed = max(wanted)
    if not math.isfinite(needed):
        tail = f"; too heavy to extrapolate (more than {MAX_EXTRAPOLATION:.0e} estimates)"
    elif heavy:
        tail = f"; about {needed:,.0f} needed if the tail is stretched-exponential"
    else:
        tail = f"; about {needed:,.0f} needed"
    return needed, "; ".join(parts) + tail
