"""bench.statistics: streaming moments against independent numpy/scipy and long-double references,
chunking and merge-order invariance, non-finite handling, edge cases, and calibration of the
reported standard errors against the spread of replicated estimates. Every random draw comes
from a fixed seed; every tolerance is derived in the comment next to it, not tuned."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from scipy import stats
from torch import Tensor

from gradbench.core.moments import SUMMARY_KEYS, Moments

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


# ------------------------------------------------------------------------------- calibration

# name: (draw [n, R] float64 with a generator, mean, variance, mu3, mu4)
DISTRIBUTIONS: dict[
    str, tuple[Callable[[int, int, torch.Generator], Tensor], float, float, float, float]
] = {
    "normal": (
        lambda n, r, g: 1.0 + 2.0 * torch.randn(n, r, generator=g, dtype=torch.float64),
        1.0,
        4.0,
        0.0,
        48.0,
    ),
    "exponential": (
        lambda n, r, g: torch.empty(n, r, dtype=torch.float64).exponential_(1.0, generator=g),
        1.0,
        1.0,
        2.0,
        9.0,
    ),
}


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_standard_errors_match_the_spread_of_replicates(name: str) -> None:
    """R independent datasets of n samples (one Moments call over [n, R]): the standard deviation
    over replicates of mean, variance, snr and mse is what mean_se, variance_se, snr_se and
    mse_se claim it is, (a) evaluated at the population moments and (b) as reported from each
    dataset (root mean square over replicates)."""
    draw, mu, var, mu3, mu4 = DISTRIBUTIONS[name]
    n, r = 100, 4000
    kurt = mu4 / var**2
    truth = mu - 0.3 * math.sqrt(var)  # a non-zero bias, so mse_se's bias terms matter
    x = draw(n, r, torch.Generator().manual_seed(8))
    got = Moments.of(x).summarize(torch.tensor(truth, dtype=torch.float64))
    # The SE formulas fed with the population moments: n samples whose s^2, M3/n, M4/n are
    # exactly var, mu3, mu4.
    f64 = {"dtype": torch.float64}
    population = Moments(
        count=torch.tensor([n]),
        mean=torch.tensor([mu], **f64),
        m2=torch.tensor([(n - 1) * var], **f64),
        m3=torch.tensor([n * mu3], **f64),
        m4=torch.tensor([n * mu4], **f64),
        nonfinite=torch.tensor([0]),
    ).summarize(torch.tensor(truth, dtype=torch.float64))

    for stat in ("mean", "variance", "snr", "mse"):
        values, ses = got[stat], got[f"{stat}_se"]
        spread = values.std(ddof=1)
        # Noise: the sample variance of R replicates has relative SD sqrt((k - 1) / R), k the
        # kurtosis of the replicated statistic (2/R for a normal one, i.e. 1/sqrt(2R) on the SD
        # scale); on log SD that halves. Likewise for the mean of R reported SE^2. The two are
        # correlated, so their SDs add (a bound whatever the correlation). 4 SDs each.
        noise_spread = 0.5 * math.sqrt((stats.kurtosis(values, fisher=False) - 1) / r)
        noise_reported = 0.5 * (ses**2).std(ddof=1) / math.sqrt(r) / (ses**2).mean()
        # (a) mean_se and variance_se are exact at the population moments (Var(mean) = s^2/n
        # and Var(s^2) = (mu4 - (n-3)/(n-1) sigma^4)/n hold exactly for iid data): no bias.
        # snr_se and mse_se are first-order delta-method results; the dropped second-order
        # terms are of relative size Var(s^2)/sigma^4 ~ (kurt - 1)/n.
        delta_bias = 0.0 if stat in ("mean", "variance") else (kurt - 1) / n
        log_ratio = math.log(population[f"{stat}_se"][0] / spread)
        assert abs(log_ratio) <= 4 * noise_spread + delta_bias, (stat, log_ratio)
        # (b) Reported SEs replace sigma^2, mu3, mu4 by sample moments. E[mean_se^2] = sigma^2/n
        # exactly: no bias. For variance_se^2, expanding E[M4/n] and E[s^4] to O(1/n) gives
        # the relative bias -(5 kurt - 7)/((kurt - 1) n), half that on the log SE (-2% normal,
        # -2.4% exponential at n = 100); we allow twice the half. snr_se and mse_se add the
        # plug-in of mu3 and of the kurtosis, whose O(1/n) bias grows with the standardised
        # higher moments; we allow 2 (kurt - 1)/n, twice the relative variance of s^2 (4%
        # normal, 16% exponential at n = 100). The largest case is snr_se on exponential data,
        # about -12% at n = 100: the sample kurtosis is biased low, and the Lo/Mertens bracket
        # 1 - snr skew + snr^2 (kurt - 1)/4 = 1 - 2 + 2 cancels. A formula error is far
        # larger: dropping or flipping the covariance term there changes snr_se by sqrt(3) or
        # sqrt(5); a missing 1/4, by sqrt(7).
        plugin_bias = {
            "mean": 0.0,
            "variance": (5 * kurt - 7) / ((kurt - 1) * n),
        }.get(stat, 2 * (kurt - 1) / n)
        log_ratio = 0.5 * math.log((ses**2).mean()) - math.log(spread)
        assert abs(log_ratio) <= 4 * (noise_spread + noise_reported) + plugin_bias, (
            stat,
            log_ratio,
        )


def test_bias_against_a_known_truth() -> None:
    n, mu, sigma = 20000, 3.0, 2.0
    x = mu + sigma * torch.randn(
        n, 1, generator=torch.Generator().manual_seed(9), dtype=torch.float64
    )
    m = Moments.of(x)
    exact = m.summarize(torch.tensor([mu]))
    # The sample mean is N(mu, sigma^2/n): within 4 SEs of the truth.
    assert abs(exact["bias"][0]) <= 4 * exact["bias_se"][0]
    # bias_se estimates sigma/sqrt(n) through s, whose relative SD is 1/sqrt(2(n-1)).
    assert exact["bias_se"][0] == pytest.approx(
        sigma / math.sqrt(n), rel=4 / math.sqrt(2 * (n - 1))
    )
    assert exact["bias_se"][0] == exact["mean_se"][0]
    # A truth that is off by 0.1 (50 SEs): the bias finds it, to within 4 SEs.
    off = m.summarize(torch.tensor([mu - 0.1]))
    assert abs(off["bias"][0] - 0.1) <= 4 * off["bias_se"][0]
    # A reference truth with its own SE adds in quadrature.
    ref = m.summarize(torch.tensor([mu]), torch.tensor([0.01], dtype=torch.float64))
    assert ref["bias_se"][0] == pytest.approx(math.hypot(exact["mean_se"][0], 0.01), rel=4 * EPS)


# ---------------------------------------------------------------------------------- misc


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\[n, C\]"):
        Moments.of(torch.zeros(5))
    with pytest.raises(ValueError, match="merge"):
        Moments.zeros(2).merge(Moments.zeros(3))
    with pytest.raises(ValueError, match="at least one"):
        Moments.merge_all([])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(10)
    x = varied_columns(5000, rng)
    x[[1, 2], 1] = np.nan
    cpu = Moments.of(torch.from_numpy(x))
    gpu = Moments.of(torch.from_numpy(x).cuda()).merge(Moments.zeros(4, "cuda"))
    assert gpu.mean.device.type == "cuda"
    for field in ("count", "nonfinite"):
        assert torch.equal(getattr(gpu, field).cpu(), getattr(cpu, field))
    # Different summation orders: both within the one-pass error scale of the long-double
    # reference, so within 2 * 32 * rounding_scale of each other (k <= 4: times 4).
    scale = 256 * rounding_scale(x[np.isfinite(x).all(1)])
    sd = np.nanstd(x, axis=0)
    assert_within(gpu.mean.cpu().numpy(), cpu.mean.numpy(), scale * sd, "mean")
    for k in (2, 3, 4):
        assert_within(
            getattr(gpu, f"m{k}").cpu().numpy(),
            getattr(cpu, f"m{k}").numpy(),
            scale * 5000 * sd**k,
            f"M{k}",
        )
    np.testing.assert_allclose(gpu.summarize()["variance"], cpu.summarize()["variance"], rtol=1e-12)
