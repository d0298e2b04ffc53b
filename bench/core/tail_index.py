"""Pareto tail index k-hat of a sample's largest values: the reliability diagnostic for the
variance (Vehtari, Simpson, Gelman, Yao & Gabry, "Pareto smoothed importance sampling", JMLR 2024,
sec. 3 and their diagnostic for general Monte Carlo estimates).

Why: the plug-in SE of a variance comes from the fourth moment, and it is small exactly when the
sample has not yet seen the tail that carries the variance. The shape of the largest squared
deviations tells how heavy that tail is even when its extreme has not been drawn: fit a
generalized Pareto distribution (GPD) to the M largest values above the (M+1)-th, and read its
shape k. A mean of draws with tail index k has finite variance iff k < 1/2; pre-asymptotically,
Vehtari et al. show that a Monte Carlo mean of n draws is reliable when k-hat < 1 - 1/log10(n)
(at most 0.7), and that about 10^(1/(1 - k)) draws are needed otherwise. A variance is a mean
of squared deviations, so its k-hat is that of the squared deviations.

The fit is Zhang & Stephens' (2009, Technometrics 51, 316-325) empirical-Bayes estimate, as in
PSIS: a grid of m = 30 + sqrt(M) values theta_j of the GPD's theta = -k/sigma, their profile
log-likelihoods l(theta) = M (log(theta / k') + k' - 1) with k' = -mean log(1 - theta x), weights
proportional to exp(l), the posterior mean theta-hat and k-hat = mean log(1 - theta-hat x) in the
usual sign (k > 0: heavy tail); then PSIS's weak prior, (M k-hat + 10 * 0.5) / (M + 10).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MAX_TAIL = 1000  # largest M kept per coordinate: bounds memory and the fit's cost
MIN_TAIL = 10  # below this many tail points there is no diagnostic (n < 50)
PRIOR_WEIGHT, PRIOR_K = 10.0, 0.5
DISTINCT = 1e-9  # values closer than this (relative to the largest) count as one
_VECTOR_ELEMENTS = 1 << 22  # grid x M x K below this: one [grid, M, K] pass (32 MiB)


def tail_size(n: int) -> int:
    """M = min(0.2 n, 3 sqrt(n)) largest values enter the fit (PSIS's choice), at most MAX_TAIL."""
    return int(min(0.2 * n, 3.0 * math.sqrt(n), MAX_TAIL))


def reliable_tail_index(n: int) -> float:
    """The largest k-hat at which a mean of n draws is reliable: min(1 - 1/log10(n), 0.7)."""
    return min(1.0 - 1.0 / math.log10(n), 0.7) if n > 10 else -math.inf


def needed_for(k: float) -> float:
    """About how many draws a mean with tail index k needs, 10^(1/(1-k)) (Vehtari et al.);
    infinite for k >= 1 (no finite mean)."""
    return math.inf if k >= 1.0 else 10.0 ** (1.0 / (1.0 - k))


def gpd_shape(exceedances: Tensor) -> Tensor:
    """k-hat per column of `exceedances` [M, K]: values above a threshold, minus it (>= 0), in any
    order. NaN for columns with fewer than MIN_TAIL points or no positive exceedance."""
    x, _ = torch.sort(exceedances.to(torch.float64), dim=0)
    rows, cols = x.shape
    if rows < MIN_TAIL:
        return torch.full((cols,), math.nan, dtype=torch.float64, device=x.device)
    largest = x[-1]
    usable = largest > 0
    safe_max = torch.where(usable, largest, 1.0)
    # Zhang & Stephens' grid needs the first quartile x* > 0; ties at 0 (a discrete tail) fall
    # back to the smallest positive exceedance.
    quartile = x[int(rows / 4 + 0.5) - 1]
    smallest = torch.where(x > 0, x, math.inf).amin(0)
    quartile = torch.where(quartile > 0, quartile, torch.where(usable, smallest, 1.0))
    grid = 30 + int(math.sqrt(rows))
    j = torch.arange(1, grid + 1, dtype=torch.float64, device=x.device)
    theta = (1.0 / safe_max)[None, :] + (1.0 - torch.sqrt(grid / (j - 0.5)))[:, None] / (
        3.0 * quartile[None, :])  # [grid, K], every theta < 1 / max: log1p(-theta x) finite
    if grid * rows * cols <= _VECTOR_ELEMENTS:  # all at once: no per-grid-point overhead
        k = torch.log1p(-theta[:, None, :] * x[None, :, :]).mean(1)
        loglik = rows * (torch.log(-theta / k) - k - 1.0)
    else:
        loglik = torch.empty_like(theta)
        for index in range(grid):  # a loop over the grid keeps memory at [M, K]
            t = theta[index]
            k = torch.log1p(-t[None, :] * x).mean(0)
            loglik[index] = rows * (torch.log(-t / k) - k - 1.0)
    weights = torch.softmax(torch.nan_to_num(loglik, nan=-math.inf), dim=0)
    theta_hat = (weights * theta).sum(0)
    k_hat = torch.log1p(-theta_hat[None, :] * x).mean(0)
    k_hat = (rows * k_hat + PRIOR_WEIGHT * PRIOR_K) / (rows + PRIOR_WEIGHT)
    return torch.where(usable, k_hat, math.nan)


def tail_index(largest: Tensor) -> Tensor:
    """k-hat per column from the M + 1 largest values per column [M + 1, K] (any order): the
    smallest of them is the threshold. NaN for a discrete tail, where fewer than half of the
    M values are distinct: a GPD fit to a few repeated values (the states of a discrete
    estimate) measures nothing; gradbench.core.rare_states covers enumerable supports."""
    if largest.shape[0] < MIN_TAIL + 1:
        return torch.full((largest.shape[1],), math.nan, dtype=torch.float64,
                          device=largest.device)
    values, _ = torch.sort(largest.to(torch.float64), dim=0)
    scale = values[-1:].abs().clamp(min=1e-300)
    steps = (values[1:] - values[:-1]) > DISTINCT * scale
    distinct = steps.sum(0) + 1
    k_hat = gpd_shape(values[1:] - values[:1])
    return torch.where(2 * distinct >= values.shape[0], k_hat, math.nan)
