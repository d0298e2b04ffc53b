"""The uncertainty engine against direct computations: per-group sums and the largest deviations
(StreamingMoments) against numpy on the stored samples, whatever the chunking; the grouped
jackknife of log s^2 against deleting each group's rows by hand; two-point detection and its
Wilson interval; Student's t against scipy. Fixed seeds; tolerances derived in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from gradbench.core import uncertainty
from gradbench.core.jackknife import leave_one_out, log_interval, t_quantile
from gradbench.core.moments import Moments
from gradbench.core.streaming import StreamingMoments, group_count
from gradbench.core.student_t import t_isf, t_sf_array
from gradbench.results import decisions

# Sums of ~1e4 float64 terms agree to ~1e-12 relative whatever the order of summation.
REL = 1e-10


def samples(n: int, seed: int = 0) -> np.ndarray:
    """Four columns: normal, skewed (exponential), heavy (t with 5 dof), offset."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.standard_normal(n), rng.exponential(2.0, n),
                     rng.standard_t(5, n), 1e3 + rng.standard_normal(n)], axis=1)


def stream(x: np.ndarray, chunk: int, **options) -> StreamingMoments:
    stats_ = StreamingMoments(x.shape[1], samples=x.shape[0], **options)
    tensor = torch.from_numpy(x)
    for start in range(0, x.shape[0], chunk):
        stats_.add(tensor[start:start + chunk])
    return stats_


def group_of(n: int, groups: int) -> np.ndarray:
    return np.arange(n) * groups // n


@pytest.mark.parametrize("chunk", [1, 7, 100, 5000])
def test_group_sums_match_numpy_whatever_the_chunking(chunk):
    x = samples(1234)
    acc = stream(x, chunk)
    sums = acc.groups()
    groups = group_count(1234, 4)
    assert groups == 64 and sums.count.shape == (64, 4)
    label = group_of(1234, groups)
    d = x - sums.shift.numpy()
    for g in range(groups):
        rows = d[label == g]
        assert int(sums.count[g, 0]) == len(rows)
        np.testing.assert_allclose(sums.s1[g].numpy(), rows.sum(0), rtol=REL, atol=1e-9)
        np.testing.assert_allclose(sums.s2[g].numpy(), (rows**2).sum(0), rtol=REL)
    # The groups add up to the totals of the moments.
    moments = acc.moments()
    assert torch.equal(sums.count.sum(0), moments.count)
    np.testing.assert_allclose(sums.s2.sum(0).numpy() - sums.s1.sum(0).numpy() ** 2 / 1234,
                               moments.m2.numpy(), rtol=REL)


def test_group_count_is_bounded_by_memory_and_samples():
    assert group_count(10, 3) == 10
    assert group_count(10**6, 100) == 64
    assert group_count(10**6, 4 * 10**5) == 20  # 128 MiB / (16 B x 4e5 coordinates)
    assert group_count(10**6, 10**8) == 8


def test_jackknife_of_log_variance_matches_deleting_groups_by_hand():
    x = samples(640)
    sums = stream(x, 100).groups()
    loo = leave_one_out(sums)
    groups = sums.count.shape[0]
    label = group_of(640, groups)
    full = x.var(0, ddof=1)
    deleted = np.stack([x[label != g].var(0, ddof=1) for g in range(groups)])
    np.testing.assert_allclose(loo.variance.numpy(), deleted, rtol=1e-9)
    np.testing.assert_allclose(loo.full_variance.numpy(), full, rtol=1e-9)
    # Pseudo-values of log s^2 and the t interval, by hand.
    pseudo = groups * np.log(full) - (groups - 1) * np.log(deleted)
    centre, se = pseudo.mean(0), pseudo.std(0, ddof=1) / math.sqrt(groups)
    t = stats.t.ppf(0.975, groups - 1)
    got = log_interval(loo.full_variance, loo.variance, loo.present)
    np.testing.assert_allclose(got["lo"].numpy(), np.exp(centre - t * se), rtol=1e-9)
    np.testing.assert_allclose(got["hi"].numpy(), np.exp(centre + t * se), rtol=1e-9)
    np.testing.assert_allclose(got["se"].numpy(), full * se, rtol=1e-9)
    assert (got["df"].numpy() == groups - 1).all()


def test_log_interval_edge_cases():
    # A constant column: [0, 0]; a column whose spread sits in one group: no upper bound.
    x = np.zeros((64, 2))
    x[5, 1] = 1.0
    sums = stream(x, 64).groups()
    loo = leave_one_out(sums)
    got = log_interval(loo.full_variance, loo.variance, loo.present)
    assert got["lo"].tolist() == [0.0, 0.0] and got["hi"][0] == 0.0
    assert math.isinf(got["hi"][1]) and math.isinf(got["se"][1])


def test_summary_reports_the_jackknife_and_reliability_columns():
    x = samples(4000, seed=3)
    acc = stream(x, 1000, tail_size=190 + 1)
    out = uncertainty.summarize(acc.moments(), acc.groups(), acc.tails().deviations)
    for key in uncertainty.UNCERTAINTY_KEYS:
        assert len(out[key]) == 4, key
    assert (out["variance_lo"] < out["variance"]).all()
    assert (out["variance"] < out["variance_hi"]).all()
    # Normal and offset columns: light tails, reliable; kurtosis near 3 (SE ~ sqrt(24/n) = 0.08).
    assert out["reliable"][[0, 3]].all()
    assert abs(out["kurtosis"][0] - 3.0) < 0.4
    assert (out["reliability_reason"][out["reliable"]] == "").all()


# ---------------------------------------------------------------- two-point estimates


def test_two_point_samples_get_the_wilson_interval():
    rng = np.random.default_rng(5)
    n, p, low, high = 200, 0.62, -0.126, 0.114
    upper = rng.random(n) < p
    x = np.where(upper, high, low)[:, None]
    moments = Moments.of(torch.from_numpy(x))
    got = uncertainty.two_point(moments)
    assert got["mask"].tolist() == [True]
    k = int(upper.sum())
    # Wilson's score interval for p, mapped through p (1 - p) D^2, by hand.
    z = 1.959963984540054
    centre = (k + z * z / 2) / (n + z * z)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    spread = (high - low) ** 2
    ends = [(centre - half) * (1 - centre + half) * spread,
            (centre + half) * (1 - centre - half) * spread]
    expected_hi = spread / 4 if centre - half <= 0.5 <= centre + half else max(ends)
    assert got["lo"][0] == pytest.approx(min(ends), rel=1e-9)
    assert got["hi"][0] == pytest.approx(expected_hi, rel=1e-9)
    # A third value, seen once, is no longer two-point.
    x[0, 0] = 0.3
    assert uncertainty.two_point(Moments.of(torch.from_numpy(x)))["mask"].tolist() == [False]


# ---------------------------------------------------------------- the largest deviations


@pytest.mark.parametrize("chunk", [3, 64, 3000, 10_000])
def test_tails_keep_the_largest_deviations_whatever_the_chunking(chunk):
    x = samples(3000, seed=7)
    acc = stream(x, chunk, tail_size=51, blocks=[(0, 2), (2, 4)])
    tails = acc.tails()
    shift = acc.groups().shift.numpy()
    d = x - shift
    for column in range(4):
        expected = np.sort(np.abs(d[:, column]))[-51:]
        got = np.sort(np.abs(tails.deviations[:, column].numpy()))
        np.testing.assert_array_equal(got, expected)
    for block, (a, b) in enumerate([(0, 2), (2, 4)]):
        expected = np.sort((d[:, a:b] ** 2).sum(1))[-51:]
        np.testing.assert_allclose(np.sort(tails.block_norms(block).numpy()), expected,
                                   rtol=1e-12)


def test_tails_of_selected_columns_and_one_coordinate_blocks():
    x = samples(500, seed=8)
    acc = stream(x, 128, tail_coords=torch.tensor([1, 3]), tail_size=11,
                 blocks=[(0, 1), (1, 4)])
    tails = acc.tails()
    assert tails.deviations.shape == (11, 2)
    assert tails.block_norms(0).numel() == 0 and tails.block_norms(1).numel() == 11


# ---------------------------------------------------------------- Student's t


def test_student_t_tail_and_quantile_match_scipy():
    t = np.array([-3.0, 0.0, 0.5, 2.0, 5.0, 8.0, 20.0, np.inf])
    for df in (1.0, 2.5, 31.0, 63.0, 126.3, 1000.0):
        np.testing.assert_allclose(t_sf_array(t, df), stats.t.sf(t, df), rtol=1e-10,
                                   atol=1e-300)
        for p in (0.025, 1e-8, 0.5):
            assert t_isf(p, df) == pytest.approx(stats.t.isf(p, df), rel=1e-9, abs=1e-12)
    assert t_quantile(63.0) == pytest.approx(stats.t.ppf(0.975, 63), rel=1e-12)
    assert np.isnan(t_sf_array(np.array([np.nan]), 3.0)[0])
    assert t_sf_array(np.array([1.0]), np.inf)[0] == pytest.approx(stats.norm.sf(1.0))


def test_welch_degrees_of_freedom_by_hand():
    # Equal relative SEs and 63 dof each: (2a)^2 / (2 a^2 / 63) = 126.
    assert decisions.welch_df(0.1, 63.0, 0.1, 63.0) == pytest.approx(126.0)
    # One side with infinite dof (two-point): the other side's dof, scaled by the share.
    assert decisions.welch_df(0.1, 63.0, 0.1, np.inf) == pytest.approx(4 * 63.0)
    assert decisions.welch_df(0.0, 63.0, 0.0, 63.0) == np.inf
