"""Data sets of the model-shaped suites: scikit-learn's diabetes and breast-cancer sets (they ship
inside the installed package: nothing is downloaded), a synthetic regression set for scale, and
the reproducible choice of minibatch rows.

Everything is built once per process in float64 on the CPU (a few milliseconds; cached) and
copied to the problem's device and dtype by the suites.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

F64 = torch.float64
DIABETES_ROWS = 442
DIABETES_FEATURES = 10
BREAST_CANCER_ROWS = 569
BREAST_CANCER_WEIGHTS = 31  # 30 standardised features and a bias column
SYNTHETIC_ROWS = 1024
# Fixed seeds: the data and the minibatch rows are part of a suite's definition (its version),
# never of a run's seed.
_ROWS_SEED = 20_150_601
_SYNTHETIC_SEED = 784_256


def standardise(values: Tensor) -> Tensor:
    """Columns shifted to mean 0 and scaled to (population) standard deviation 1."""
    return (values - values.mean(0)) / values.std(0, correction=0)


@functools.cache
def diabetes() -> tuple[Tensor, Tensor]:
    """(X [442, 10], y [442, 1]): the raw diabetes features and target, each standardised."""
    from sklearn.datasets import load_diabetes  # imported here: ~1 s, only when needed

    features, target = load_diabetes(return_X_y=True, scaled=False)
    x = torch.as_tensor(features, dtype=F64)
    y = torch.as_tensor(target, dtype=F64).reshape(-1, 1)
    return standardise(x), standardise(y)


@functools.cache
def breast_cancer() -> tuple[Tensor, Tensor]:
    """(X [569, 31], y [569]): standardised features plus a column of ones (the bias weight), and
    labels in {-1, +1} (+1 = benign, scikit-learn's target 1)."""
    from sklearn.datasets import load_breast_cancer

    features, target = load_breast_cancer(return_X_y=True)
    x = standardise(torch.as_tensor(features, dtype=F64))
    x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=F64)], dim=1)
    y = 2.0 * torch.as_tensor(target, dtype=F64) - 1.0
    return x, y


@functools.cache
def synthetic(in_features: int, out_features: int) -> tuple[Tensor, Tensor]:
    """(X [1024, in], y [1024, out]): X ~ N(0, I), y = X W*^T + b* + N(0, I) for a fixed W* with
    entries N(0, 1 / in) and b* ~ N(0, I), so every target has variance about 3."""
    generator = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    x = torch.randn(SYNTHETIC_ROWS, in_features, generator=generator, dtype=F64)
    weight = torch.randn(out_features, in_features, generator=generator, dtype=F64)
    weight /= in_features**0.5
    bias = torch.randn(out_features, generator=generator, dtype=F64)
    noise = torch.randn(SYNTHETIC_ROWS, out_features, generator=generator, dtype=F64)
    return x, x @ weight.T + bias + noise


def minibatch_rows(total: int, batch: int) -> Tensor:
    """The rows of a minibatch of `batch` of `total`: the first `batch` of one fixed permutation,
    so minibatches are nested (the batch-32 rows contain the batch-1 row) and the full batch is
    every row."""
    if not 1 <= batch <= total:
        raise ValueError(f"batch must be between 1 and {total}, not {batch}")
    generator = torch.Generator().manual_seed(_ROWS_SEED)
    return torch.randperm(total, generator=generator)[:batch]
