"""bench.statistics: streaming moments against independent numpy/scipy and long-double references
(moments_reference), chunking and merge-order invariance, non-finite handling and edge cases.
The calibration of the reported standard errors is in test_statistics_calibration. Every random
draw comes from a fixed seed; every tolerance is derived in the comment next to it, not tuned."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from moments_reference import (
    EPS,
    assert_matches_reference,
    assert_within,
    long_double_moments,
    reference_summary,
    rounding_scale,
    varied_columns,
)

from gradbench.core.moments import SUMMARY_KEYS, Moments


@pytest.fixture
def warnings_are_errors() -> Iterator[None]:
    # NaN summaries must come from explicit rules, never from numpy/torch complaining.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ------------------------------------------------------------------------- one chunk vs numpy


def test_summary_has_exactly_the_documented_keys_and_dtypes() -> None:
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    for truth in (None, torch.zeros(3)):
        got = Moments.of(x).summarize(truth)
        assert tuple(got) == SUMMARY_KEYS
        for key, value in got.items():
            assert isinstance(value, np.ndarray) and value.shape == (3,)
            assert value.dtype == (np.int64 if key in ("n", "nonfinite") else np.float64), key
    assert all(
        np.isnan(got_v).all()
        for k, got_v in Moments.of(x).summarize().items()
        if k in ("bias", "bias_se", "mse", "mse_se")
    )


def test_one_chunk_matches_numpy_with_large_offsets() -> None:
    rng = np.random.default_rng(1)
    x = varied_columns(2000, rng)
    truth = np.array([1e8, 2.0, -7.0, 0.3])
    truth_se = np.array([0.0, 0.01, 0.0, 0.02])
    m = Moments.of(torch.from_numpy(x))
    assert m.mean.dtype == m.m2.dtype == m.m4.dtype == torch.float64
    assert m.count.dtype == m.nonfinite.dtype == torch.int64
    got = m.summarize(torch.from_numpy(truth), torch.from_numpy(truth_se))
    assert_matches_reference(got, reference_summary(x, truth, truth_se), x)
    np.testing.assert_array_equal(got["nonfinite"], 0)


def test_float32_input_is_accumulated_in_float64() -> None:
    # float32 data around 1e4 (quantised to 2^-10 by float32 itself). Accumulated in float32,
    # even a two-pass variance is off by ~1e-6 relative (far outside these tolerances) and M3 by
    # tens of percent. The reference sees the same float32 values, converted exactly to float64.
    g = torch.Generator().manual_seed(2)
    x32 = torch.stack(
        [1e4 + torch.randn(5000, generator=g), 5.0 + 3.0 * torch.randn(5000, generator=g)], dim=1
    ).float()
    x = x32.double().numpy()
    got = Moments.of(x32).summarize(torch.tensor([1e4, 5.0]))
    assert_matches_reference(got, reference_summary(x, np.array([1e4, 5.0])), x)


# -------------------------------------------------------------------- chunking and merge order


def left_fold(parts: list[Moments]) -> Moments:
    acc = Moments.zeros(parts[0].coords)
    for part in parts:
        acc = acc.merge(part)
    return acc


def right_fold(parts: list[Moments]) -> Moments:
    acc = parts[-1]
    for part in reversed(parts[:-1]):
        acc = part.merge(acc)
    return acc


def shuffled_tree(parts: list[Moments]) -> Moments:
    order = np.random.default_rng(3).permutation(len(parts))
    return Moments.merge_all(parts[i] for i in order)


MERGE_ORDERS: dict[str, Callable[[list[Moments]], Moments]] = {
    "left_fold": left_fold,
    "right_fold": right_fold,
    "tree": Moments.merge_all,
    "shuffled_tree": shuffled_tree,
}


def test_chunking_and_merge_order_do_not_change_the_moments() -> None:
    rng = np.random.default_rng(4)
    n = 3000
    x = np.concatenate([varied_columns(n, rng), np.full((n, 1), 0.1)], axis=1)
    varied = slice(0, 4)
    ref = long_double_moments(x[:, varied])
    sd = x[:, varied].std(0)
    scale = rounding_scale(x[:, varied])

    many = np.sort(rng.choice(np.arange(1, n), size=999, replace=False))
    chunkings = {
        "one": [],
        "seven_uneven": [1, 2, 50, 51, 1000, 2999],  # sizes 1, 1, 48, 1, 949, 1999, 1
        "about_1000": [0, *many.tolist()],  # an empty chunk first, then 1000 random sizes
    }
    sizes = np.diff([0, *many.tolist(), n])
    assert (sizes == 1).sum() >= 10  # the random chunking does contain size-1 chunks
    whole = torch.from_numpy(x)

    for chunking, cuts in chunkings.items():
        bounds = [0, *cuts, n]
        parts = [Moments.of(whole[a:b]) for a, b in itertools.pairwise(bounds)]
        for order, merge in MERGE_ORDERS.items():
            m = merge(parts)
            what = f"{chunking}/{order}"
            np.testing.assert_array_equal(m.count.numpy(), n, err_msg=what)
            np.testing.assert_array_equal(m.nonfinite.numpy(), 0, err_msg=what)
            # Every merge rounds the merged mean once (error <= rounding_scale * std) and the
            # moments are re-centred on it, shifting M_k by <= k * rounding_scale in units of
            # n * std^k (see rounding_scale); independent roundings over `merges` merges add
            # like a random walk. Bound: 8 (k <= 4, times 2 for a bound rather than an RMS)
            # * sqrt(merges + 1) * rounding_scale: ~1e-13 relative for plain columns, ~1e-10
            # for -7 + 1e-3 N(0,1), ~5e-6 std (5e-14 of the mean) for 1e8 + N(0,1).
            tol = 8 * math.sqrt(len(parts)) * scale
            assert_within(m.mean.numpy()[varied], ref[0], tol * sd, f"{what} mean")
            for k in (2, 3, 4):
                assert_within(
                    getattr(m, f"m{k}").numpy()[varied], ref[k - 1], tol * n * sd**k, f"{what} M{k}"
                )
            # The constant column stays exact whatever the chunking: mean 0.1, moments 0.
            assert m.mean[4].item() == 0.1
            assert m.m2[4].item() == m.m3[4].item() == m.m4[4].item() == 0.0


# ---------------------------------------------------------------------------------- non-finite


def test_nonfinite_entries_are_excluded_and_counted(warnings_are_errors: None) -> None:
    rng = np.random.default_rng(5)
    n = 400
    x = np.stack(
        [
            rng.normal(1.0, 2.0, n),
            rng.exponential(1.0, n),
            rng.normal(0, 1, n),
            rng.normal(0, 1, n),
        ],
        axis=1,
    )
    x[[3, 70, 399], 0] = np.nan
    x[[0, 5], 1] = np.inf
    x[[9], 1] = -np.inf
    x[[200], 1] = np.nan
    x[:, 3] = np.where(
        np.arange(n) % 3 == 0, np.nan, np.where(np.arange(n) % 3 == 1, np.inf, -np.inf)
    )
    expect_bad = np.array([3, 4, 0, n])
    truth = np.array([1.0, 1.0, 0.0, 0.0])
    whole = torch.from_numpy(x)
    one = Moments.of(whole)
    chunked = Moments.merge_all(Moments.of(whole[a : a + 37]) for a in range(0, n, 37))
    for m in (one, chunked):
        got = m.summarize(torch.from_numpy(truth))
        np.testing.assert_array_equal(got["nonfinite"], expect_bad)
        np.testing.assert_array_equal(got["n"], n - expect_bad)
        for c in range(3):
            finite = x[np.isfinite(x[:, c]), c : c + 1]
            ref = reference_summary(finite, truth[c : c + 1])
            # chunked: 11 merges, covered by the factors in assert_matches_reference for
            # these unit-scale columns (rounding_scale ~ 2 eps).
            assert_matches_reference({k: v[c : c + 1] for k, v in got.items()}, ref, finite)
        # All samples non-finite: no statistics, no crash.
        for key in SUMMARY_KEYS:
            if key not in ("n", "nonfinite"):
                assert np.isnan(got[key][3]), key


# --------------------------------------------------------------------------- empty and count 0


def assert_identical(a: Moments, b: Moments) -> None:
    for field in ("count", "mean", "m2", "m3", "m4", "nonfinite"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_zeros_is_the_identity_of_merge() -> None:
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    x[:, 1] += 1e6
    m = Moments.of(x)
    assert_identical(Moments.zeros(3).merge(m), m)
    assert_identical(m.merge(Moments.zeros(3)), m)
    assert_identical(Moments.of(x[:0]), Moments.zeros(3))
    assert_identical(Moments.merge_all([Moments.zeros(3)] * 4), Moments.zeros(3))


def test_merge_with_coordinates_empty_on_one_side() -> None:
    g = torch.Generator().manual_seed(7)
    a = torch.randn(30, 3, generator=g, dtype=torch.float64) + 5.0
    b = torch.randn(20, 3, generator=g, dtype=torch.float64) * 3.0
    a[:, 0] = math.nan  # side a has nothing in coordinate 0
    b[:, 2] = math.inf  # side b has nothing in coordinate 2
    ma, mb = Moments.of(a), Moments.of(b)
    merged = ma.merge(mb)
    # Where one side is empty, the other side comes through bit for bit.
    for field in ("count", "mean", "m2", "m3", "m4"):
        assert getattr(merged, field)[0] == getattr(mb, field)[0], field
        assert getattr(merged, field)[2] == getattr(ma, field)[2], field
    np.testing.assert_array_equal(merged.nonfinite.numpy(), [30, 0, 20])
    # Coordinate 1 has both sides: same as one pass over the concatenation (unit-scale data
    # with offset 5: rounding_scale ~ 3 eps; a handful of operations -> 64 eps of each scale).
    both = Moments.of(torch.cat([a, b]))
    x1 = torch.cat([a, b])[:, 1].numpy()
    sd = x1.std()
    tol = 64 * EPS * (1 + abs(x1.mean()) / sd)
    assert abs(merged.mean[1].item() - both.mean[1].item()) <= tol * sd
    for k in (2, 3, 4):
        got, want = getattr(merged, f"m{k}")[1].item(), getattr(both, f"m{k}")[1].item()
        assert abs(got - want) <= tol * len(x1) * sd**k


def test_small_counts_give_nan_not_errors(warnings_are_errors: None) -> None:
    x = torch.tensor([[2.0, math.nan, 1.0], [math.nan, math.nan, 3.0]], dtype=torch.float64)
    got = Moments.of(x).summarize(torch.tensor([1.0, 1.0, 1.0]))
    np.testing.assert_array_equal(got["n"], [1, 0, 2])
    # n = 1: a mean and a bias, but nothing that needs a variance.
    assert got["mean"][0] == 2.0 and got["bias"][0] == 1.0
    for key in (
        "mean_se",
        "variance",
        "variance_se",
        "std",
        "bias_se",
        "snr",
        "snr_se",
        "mse",
        "mse_se",
    ):
        assert np.isnan(got[key][0]), key
    # n = 0: nothing at all.
    assert all(np.isnan(got[key][1]) for key in SUMMARY_KEYS if key not in ("n", "nonfinite"))
    # n = 2 works: {1, 3} has variance 2, M4/n = 1, (mu4 - (-1/1) s^4)/2 = (1 + 4)/2.
    assert got["variance"][2] == 2.0
    assert got["variance_se"][2] == pytest.approx(math.sqrt(2.5), rel=4 * EPS)


def test_constant_coordinates() -> None:
    x = torch.tensor([[0.1, 0.0, 3.0]] * 1000, dtype=torch.float64)
    got = Moments.of(x).summarize(torch.tensor([0.0, 0.0, 3.0]))
    np.testing.assert_array_equal(got["mean"], [0.1, 0.0, 3.0])
    for key in ("variance", "variance_se", "std", "mean_se", "bias_se"):
        np.testing.assert_array_equal(got[key], 0.0, err_msg=key)
    np.testing.assert_array_equal(got["snr"][[0, 2]], np.inf)
    np.testing.assert_array_equal(got["snr_se"][[0, 2]], 0.0)
    assert np.isnan(got["snr"][1]) and np.isnan(got["snr_se"][1])  # 0 / 0
    np.testing.assert_array_equal(got["mse"], [0.1**2, 0.0, 0.0])
    np.testing.assert_array_equal(got["mse_se"], 0.0)
    # A truth with its own SE: that SE is all the uncertainty left.
    withse = Moments.of(x).summarize(torch.tensor([0.0, 0.0, 3.0]), torch.tensor([0.5, 0.5, 0.5]))
    np.testing.assert_array_equal(withse["bias_se"], 0.5)
    np.testing.assert_allclose(withse["mse_se"], [2 * 0.1 * 0.5, 0.0, 0.0], rtol=4 * EPS)
    # For many (value, n) the rounded sum / n misses the constant; the mean is still exact and
    # the moments exactly 0, in one chunk and merged from chunks.
    for value in (0.1, 1 / 3, 0.7, 1e8 + 0.1, 123.456, -9.87654321):
        for n in (3, 7, 1000, 4097):
            col = torch.full((n, 1), value, dtype=torch.float64)
            for m in (Moments.of(col), Moments.merge_all(Moments.of(c) for c in col.split(10))):
                assert m.mean.item() == value, (value, n)
                assert m.m2.item() == m.m3.item() == m.m4.item() == 0.0, (value, n)
