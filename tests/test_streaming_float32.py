"""StreamingMoments on float32 chunks (CPU): each chunk's sums in float32, promoted before they
are accumulated (gradbench.core.streaming). Their error is bounded by float32 summation, far
below the float32 estimates' own rounding; chunks whose float32 sums would overflow, underflow
or meet a NaN are taken in float64, and then agree with the extended-precision reference as
closely as float64 chunks do."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_fast_paths import EPS, check_against_reference, long_double

from gradbench.core.streaming import StreamingMoments

U32 = 2.0**-24  # float32's unit roundoff


def stream(x32: np.ndarray, size: int, samples: int | None = None) -> StreamingMoments:
    acc = StreamingMoments(x32.shape[1], samples=samples)
    for start in range(0, x32.shape[0], size):
        acc.add(torch.from_numpy(x32[start:start + size]))
    return acc


def float32_fast_chunks(monkeypatch) -> list[bool]:
    """Record, per column block of each chunk, whether its float32 sums were kept."""
    kept: list[bool] = []
    original = StreamingMoments._accumulate32

    def spy(self, *args):
        kept.append(original(self, *args))
        return kept[-1]
    monkeypatch.setattr(StreamingMoments, "_accumulate32", spy)
    return kept


def check_float32_bound(m, x: np.ndarray, size: int) -> None:
    """Per column: S_k of a chunk of m rows summed in float32 errs by at most about
    (k + log2 m) u sum |d|^k (k roundings of the powers, a cascade sum's log2 m levels), u =
    2^-24; the mean by that over n, plus the float64 rounding of shift + delta. Twice that is
    the tolerance (the binomial shift corrections add terms of the same size)."""
    count, mean, m2, m3, m4 = long_double(x)
    levels = 4 + math.log2(size)
    absolute = {k: (np.abs(x - mean) ** k).sum(0) for k in (1, 2, 3, 4)}
    np.testing.assert_array_equal(m.count.numpy(), count)
    assert np.all(np.abs(m.mean.numpy() - mean)
                  <= 4 * EPS * np.abs(mean) + 2 * levels * U32 * absolute[1] / count)
    for k, ref in ((2, m2), (3, m3), (4, m4)):
        err = np.abs(getattr(m, f"m{k}").numpy() - ref)
        assert np.all(err <= 2 * levels * U32 * absolute[k]), (k, err, absolute[k])


def test_float32_chunks_are_summed_in_float32_within_its_bound(monkeypatch) -> None:
    rng = np.random.default_rng(9)
    n = 40_000
    x32 = np.stack([3.0 + rng.standard_normal(n), 1e4 + rng.standard_normal(n),
                    rng.exponential(2.0, n), -7.0 + 1e-3 * rng.standard_normal(n),
                    rng.standard_t(3, n), np.full(n, 0.1)], axis=1).astype(np.float32)
    kept = float32_fast_chunks(monkeypatch)
    m = stream(x32, 4096, samples=n).moments()
    assert kept and all(kept)  # every chunk after the first (which sets the shifts)
    check_float32_bound(m, x32.astype(np.float64), 4096)
    assert m.m2[5] == 0.0 and m.mean[5] == np.float32(0.1)  # a constant column, exactly
    # The same values in float64 chunks: the float64 path, to float64 precision.
    m64 = stream(x32.astype(np.float64), 4096).moments()
    check_against_reference(m64, x32.astype(np.float64), math.ceil(n / 4096))
    for name in ("m2", "m4"):
        relative = (getattr(m, name) - getattr(m64, name)).abs() / getattr(m64, name)
        assert float(relative[:5].max()) < 1e-5


@pytest.mark.parametrize("column", ["overflow", "underflow", "nan"])
def test_float32_chunks_that_would_overflow_underflow_or_hold_nan_take_float64(
        monkeypatch, column: str) -> None:
    rng = np.random.default_rng(3)
    n = 20_000
    values = {"overflow": 1e12 * rng.standard_normal(n),  # d^4 ~ 1e48 > float32's 3e38
              "underflow": 2.0**-30 * rng.standard_normal(n),  # d^4 ~ 2^-120: S4 < 2^-100
              "nan": rng.standard_normal(n)}[column]
    x32 = values[:, None].astype(np.float32)
    if column == "nan":
        x32[15_000, 0] = np.nan
    kept = float32_fast_chunks(monkeypatch)
    m = stream(x32, 2048).moments()
    x = x32.astype(np.float64)
    if column == "nan":
        assert kept.count(False) == 1 and m.nonfinite.tolist() == [1]
        finite = np.where(np.isnan(x), np.nan, x)
        check_float32_bound(m, finite[~np.isnan(finite[:, 0])], 2048)
    else:
        assert kept and not any(kept)
        check_against_reference(m, x, math.ceil(n / 2048))


def test_float32_sums_of_many_columns_are_checked_on_the_tensor_path(monkeypatch) -> None:
    # 100 columns: 400 sums per slice, over the host-side check's 256; one column overflows
    # from chunk 5 on, and those chunks fall back to float64 as a whole.
    rng = np.random.default_rng(4)
    x32 = rng.standard_normal((8192, 100)).astype(np.float32)
    x32[4096:, 7] *= np.float32(1e12)
    kept = float32_fast_chunks(monkeypatch)
    m = stream(x32, 1024).moments()
    assert kept[:3] == [True] * 3 and kept[3:] == [False] * 4
    x = x32.astype(np.float64)
    check_float32_bound(m, x, 1024)


def test_tail_filter_in_float32_keeps_everything_above_the_floor_and_no_ties() -> None:
    # The filter compares float32 |d| with the float64 floor rounded down: a value above the
    # float64 floor always passes, one equal to a float32-exact floor (two-point ties) does not.
    from gradbench.core.tail_buffer import TailBuffer
    buffer = TailBuffer(None, 2, (), "cpu")
    exact, inexact = 0.25, 0.1  # 0.1 is not a float32 value
    buffer.floor = (torch.tensor([exact, inexact], dtype=torch.float64), None)
    floor32 = buffer._floor_in(torch.float32)
    assert floor32[0].item() == exact
    assert floor32[1].item() < inexact and floor32[1].to(torch.float64) < inexact
    # float32(0.1) = 0.10000000149 is above the float64 floor 0.1: it must pass, although it
    # equals float32(floor) (rounding to nearest would have filtered it out).
    d = torch.tensor([[0.25, 0.25, -0.25], [0.0, 0.1, 0.0]], dtype=torch.float32)
    from gradbench.core.tail_buffer import _above
    assert _above(d.abs(), floor32).tolist() == [False, True, False]
