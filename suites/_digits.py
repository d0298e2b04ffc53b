"""scikit-learn's digits (1,797 images of 8 x 8 pixels, 0..16; ships inside the package, never
downloaded), shared by the VAE suites: pixels scaled to [0, 1] or binarised, and one fixed split
into a training part and a held-out part.

The split is a permutation drawn from a generator of its own (seed derived from a fixed name),
so it is the same in every process and on every machine. Minibatches are prefixes of the
training part's order: a batch of 16 is the first 16 training rows, and a larger batch contains
every smaller one (the `batch` settings of a suite are nested, not independent draws).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from gradbench.core.seeding import derive_seed

PIXELS = 64
HELDOUT = 297  # 1,797 = 1,500 training rows + 297 held out


@functools.lru_cache(maxsize=1)
def _images() -> Tensor:
    """The 1,797 images as float64 [1797, 64], values 0..16 (a fresh import is ~0.1 s)."""
    from sklearn.datasets import load_digits  # deferred: scikit-learn is slow to import

    return torch.from_numpy(load_digits().data).to(torch.float64)


@functools.lru_cache(maxsize=1)
def split() -> tuple[Tensor, Tensor]:
    """(training row indices [1500], held-out row indices [297]) into the 1,797 images."""
    gen = torch.Generator().manual_seed(derive_seed("gradbench digits split"))
    order = torch.randperm(_images().shape[0], generator=gen)
    return order[HELDOUT:].clone(), order[:HELDOUT].clone()


def scaled() -> Tensor:
    """Pixels scaled to [0, 1] (value / 16), float64 [1797, 64]."""
    return _images() / 16.0


def binarised() -> Tensor:
    """Pixels binarised at 8 of 16 (1 where value >= 8), float64 [1797, 64]."""
    return (_images() >= 8).to(torch.float64)


def training_rows(data: Tensor) -> Tensor:
    """The training part of `data` ([1797, ...]) in the split's order."""
    return data[split()[0]]


def heldout_rows(data: Tensor) -> Tensor:
    """The held-out part of `data` ([1797, ...])."""
    return data[split()[1]]


def minibatch(data: Tensor, batch: int) -> Tensor:
    """The suites' minibatch of `batch` rows: the first rows of the training part."""
    train = training_rows(data)
    if not 1 <= batch <= train.shape[0]:
        raise ValueError(f"batch must be between 1 and {train.shape[0]}, not {batch}")
    return train[:batch]
