"""bench.statistics: calibration of the reported standard errors against the spread of replicated
estimates, bias against a known truth, invalid inputs, and CUDA against CPU. Every random draw
comes from a fixed seed; every tolerance is derived in the comment next to it, not tuned."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from moments_reference import EPS, assert_within, rounding_scale, varied_columns
from scipy import stats
from torch import Tensor

from gradbench.core.moments import Moments

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
