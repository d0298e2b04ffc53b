"""The total variance of a vector-valued estimate, tr Cov(g) = E|g - E g|^2, and its standard
error, from n independent draws: what `bench train` records along a trajectory (per parameter
tensor and over all of them), where per-coordinate rows would be too many.

Estimator: T = 1/(n-1) sum_i q_i with q_i = |g_i - g_bar|^2, the sum over coordinates of the
unbiased s^2 (a U-statistic with kernel |x - y|^2 / 2).

Standard error: the delete-one jackknife, in closed form. Leaving out draw i gives
T_(i) = ((n-1) T - n/(n-1) q_i) / (n-2) (the per-coordinate identity for s^2, summed), so

    Var_J = (n-1)/n sum_i (T_(i) - mean T_(.))^2 = n / ((n-1) (n-2)^2) sum_i (q_i - q_bar)^2,

O(n C) time. Why not the plug-in of the exact iid formula Var T = (E|A|^4 - tau^2) / n +
2 tr(S^2) / (n (n-1)) (A = g - E g, tau = tr S), which gradbench.core.moments uses for one
coordinate: E|A|^4 and tau^2 are each ~tau^2 while their difference is ~2 tr(S^2), about
tau^2 / d for d comparable coordinates, so the plug-in's O(1/n) relative bias in each becomes an
O(d/n) error in the difference. Measured (Gaussian, 1,000-4,000 replications): d = 200, n = 100
gives a mean plug-in variance of -0.09 against a true 8.2, the jackknife 8.0; d = 6, n = 12:
plug-in 1.06, jackknife 2.10, true 1.86. The jackknife of a U-statistic is conservative on
average (Efron & Stein 1981) and centres each q_i on q_bar, so the large tau cancels exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

TOTAL = ""  # the key of the variance over all parameter tensors together


@dataclass(frozen=True)
class TraceVariance:
    """tr Cov of one estimate, its standard error, and the draws it used (finite rows) and
    left out (rows with a NaN or Inf)."""

    value: float
    se: float
    n: int
    nonfinite: int


def trace_variance(draws: Tensor) -> TraceVariance:
    """tr Cov and its SE from draws [n, C] (rows with a non-finite entry are left out)."""
    if draws.ndim != 2:
        raise ValueError(f"trace_variance expects draws of shape [n, C], not {tuple(draws.shape)}")
    x = draws.detach().to(torch.float64)
    finite = torch.isfinite(x).all(dim=1)
    x = x[finite]
    n = int(x.shape[0])
    left_out = int(draws.shape[0]) - n
    if n < 2:
        return TraceVariance(math.nan, math.nan, n, left_out)
    if bool((x == x[0]).all()):  # identical draws (an exact estimator): zero, not rounding
        return TraceVariance(0.0, 0.0, n, left_out)
    squared = (x - x.mean(dim=0)).square().sum(dim=1)  # q_i = |g_i - g_bar|^2
    tau = float(squared.sum()) / (n - 1)
    if n < 3:  # the jackknife needs two draws left after leaving one out
        return TraceVariance(tau, math.nan, n, left_out)
    spread = float((squared - squared.mean()).square().sum())
    return TraceVariance(tau, math.sqrt(n * spread / ((n - 1) * (n - 2) ** 2)), n, left_out)


def trace_variances(estimates: Mapping[str, Tensor]) -> dict[str, TraceVariance]:
    """Per parameter tensor (estimates: name -> [n, *shape]) and over all of them (key TOTAL):
    the total variance of one estimate with its SE."""
    flat = {name: value.reshape(value.shape[0], -1) for name, value in estimates.items()}
    if TOTAL in flat:
        raise ValueError("a parameter may not be named '' (the key of the total)")
    out = {name: trace_variance(value) for name, value in flat.items()}
    out[TOTAL] = trace_variance(torch.cat(list(flat.values()), dim=1))
    return out
