"""Per-coordinate statistics with honest uncertainty: the plug-in summary of `Moments`, with the
variance's interval and SE, and the SNR's and MSE's SEs, from the grouped jackknife
(gradbench.core.jackknife); an exact binomial interval for two-point estimates; and whether
the numbers can be trusted at this n (gradbench.core.reliability).

Two-point estimates. A score-function estimate of a one-coordinate Bernoulli gradient takes two
values, and then s^2 = n/(n-1) p^ (1-p^) D^2 is a smooth function of the binomial frequency p^
whose first derivative, (1 - 2p) D^2, vanishes at p = 1/2: the delta method (plug-in or
jackknife) collapses and the sampling distribution of s^2 is one-sided (measured: the plug-in
95% interval covered 0.896 of the time at n = 200, theta = 0.5, issue 12). Two-point samples are
recognised from the moments alone, by equality in Pearson's inequality mu4 mu2 >= mu3^2 + mu2^3,
which holds iff the sample takes at most two values; their frequency p^ then follows from the
skewness, g1 = (1 - 2 p^) / sqrt(p^ (1 - p^)). The variance's interval is the image of Wilson's
score interval for p (Wilson 1927; coverage close to nominal, Brown, Cai & DasGupta 2001) under
p -> p (1 - p) D^2, which is exact up to Wilson's own coverage.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from gradbench.core import reliability
from gradbench.core.jackknife import jackknife_se, leave_one_out, log_interval
from gradbench.core.moments import Moments
from gradbench.core.streaming import GroupSums
from gradbench.core.tail_index import tail_index

# Pearson's gap mu4 mu2 - mu3^2 - mu2^3 relative to mu4 mu2 below this: two values. Rounding of
# the fourth-power sums is ~1e-13 relative; a third value seen once in 1e6 leaves a gap ~1e-6.
TWO_POINT_GAP = 1e-9
Z = 1.959963984540054  # the normal's two-sided LEVEL quantile (Wilson's interval)

UNCERTAINTY_KEYS = ("variance_lo", "variance_hi", "variance_df", "kurtosis", "skewness",
                    "tail_index",
                    "reliable", "mean_reliable", "reliability_reason", "samples_needed")


def two_point(moments: Moments) -> dict[str, np.ndarray]:
    """Which coordinates' samples take exactly two values, and for those the Wilson-based
    LEVEL interval of the population variance: `mask`, `lo`, `hi`, `se` (half-width / Z)."""
    count = moments.count.cpu().numpy().astype(np.float64)
    m2, m3, m4 = (getattr(moments, k).cpu().numpy() for k in ("m2", "m3", "m4"))
    with np.errstate(all="ignore"):
        mu2, mu3, mu4 = m2 / count, m3 / count, m4 / count
        gap = mu4 * mu2 - mu3 * mu3 - mu2**3
        mask = (count >= 2) & (mu2 > 0) & (np.abs(gap) <= TWO_POINT_GAP * mu4 * mu2)
        skew = mu3 / mu2**1.5
        upper = np.round(count * 0.5 * (1.0 - skew / np.sqrt(skew * skew + 4.0)))
        p = upper / count
        spread = mu2 / (p * (1.0 - p))  # D^2
        centre = (upper + Z * Z / 2.0) / (count + Z * Z)
        half = Z * np.sqrt(upper * (count - upper) / count + Z * Z / 4.0) / (count + Z * Z)
        p_lo, p_hi = np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)
        h_lo, h_hi = p_lo * (1.0 - p_lo) * spread, p_hi * (1.0 - p_hi) * spread
        lo = np.minimum(h_lo, h_hi)
        hi = np.where((p_lo <= 0.5) & (p_hi >= 0.5), 0.25 * spread, np.maximum(h_lo, h_hi))
    mask &= np.isfinite(lo) & np.isfinite(hi)
    return {"mask": mask, "lo": lo, "hi": hi, "se": (hi - lo) / (2.0 * Z)}


def summarize(
    moments: Moments,
    groups: GroupSums,
    tails: Tensor,
    truth: Tensor | None = None,
    truth_se: Tensor | None = None,
    rare: reliability.RareStates | None = None,
    norm_tail: Tensor | None = None,
) -> dict[str, np.ndarray]:
    """Statistics of the coordinates in `moments`/`groups` (the same columns, [C]); `tails`
    [T, K] holds the largest signed deviations from the groups' shift of the first K <= C of
    them. The others (not tracked, to bound the cost) are judged by the largest k-hat of the
    tracked ones and of `norm_tail` (the parameter's largest ||g - shift||^2), and their own
    tail_index is NaN. Returns numpy arrays [C]: the keys of `Moments.summarize`, with
    variance_se, snr_se and mse_se from the jackknife (module docstring), plus UNCERTAINTY_KEYS."""
    out = moments.summarize(truth, truth_se)
    loo = leave_one_out(groups)
    interval = log_interval(loo.full_variance, loo.variance, loo.present)
    lo, hi = interval["lo"].cpu().numpy(), interval["hi"].cpu().numpy()
    se, df = interval["se"].cpu().numpy(), interval["df"].cpu().numpy()
    pair = two_point(moments)
    mask = pair["mask"]
    out["variance_lo"] = np.where(mask, pair["lo"], lo)
    out["variance_hi"] = np.where(mask, pair["hi"], hi)
    out["variance_se"] = np.where(mask, pair["se"], se)
    out["variance_df"] = np.where(mask, math.inf, df)
    _jackknife_snr_mse(out, loo, truth, truth_se)

    n = out["n"]
    m2, m3 = moments.m2.cpu().numpy(), moments.m3.cpu().numpy()
    with np.errstate(all="ignore"):
        out["kurtosis"] = np.where(n >= 2, n * moments.m4.cpu().numpy() / m2**2, np.nan)
        out["skewness"] = np.where((n >= 2) & (m2 > 0), np.sqrt(n) * m3 / m2**1.5, np.nan)
    out["tail_index"], judged = _tail_indices(tails, groups.shift, out["mean"], norm_tail)
    verdict = reliability.judge(n=n, k_hat=judged, variance=out["variance"], two_point=mask,
                                rare=rare, proxy=np.arange(len(n)) >= tails.shape[1],
                                skewness=out["skewness"])
    out.update(verdict)
    return out


def _tail_indices(tails: Tensor, shift: Tensor, mean: np.ndarray, norm_tail: Tensor | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """k-hat of the tracked coordinates (NaN for the others) and the k-hat each row is judged
    by: its own, or for untracked rows the largest of the tracked ones and the tensor norms."""
    tracked = tails.shape[1] if tails.ndim == 2 else 0
    centre = torch.as_tensor(np.nan_to_num(mean), dtype=torch.float64, device=shift.device) - shift
    k_hat = np.full(len(mean), np.nan)
    if tails.shape[0]:
        squared = (tails.to(torch.float64) - centre[:tracked]) ** 2
        k_hat[:tracked] = tail_index(squared).cpu().numpy()
    judged = k_hat.copy()
    if tracked < len(mean):
        proxy = [k for k in k_hat[:tracked] if np.isfinite(k)]
        if norm_tail is not None and norm_tail.numel():
            proxy.append(float(tail_index(norm_tail.reshape(-1, 1))[0]))
        proxy = [k for k in proxy if np.isfinite(k)]
        judged[tracked:] = max(proxy) if proxy else np.nan
    return k_hat, judged


def _jackknife_snr_mse(out: dict[str, np.ndarray], loo, truth: Tensor | None,
                       truth_se: Tensor | None) -> None:
    """snr_se and mse_se by the jackknife of |mean| / std and (mean - truth)^2 + variance."""
    with np.errstate(all="ignore"):
        std_full, std_rep = torch.sqrt(loo.full_variance), torch.sqrt(loo.variance)
        snr_full = loo.full_mean.abs() / std_full
        snr_rep = loo.mean.abs() / std_rep
        snr_se = jackknife_se(snr_full, snr_rep, loo.present).cpu().numpy()
    std = out["std"]
    out["snr_se"] = np.where(std == 0.0, np.where(out["mean"] == 0.0, np.nan, 0.0), snr_se)
    if truth is None:
        return
    t = truth.to(loo.full_mean.device, torch.float64).reshape(-1)
    mse_full = (loo.full_mean - t) ** 2 + loo.full_variance
    mse_rep = (loo.mean - t) ** 2 + loo.variance
    mse_se = jackknife_se(mse_full, mse_rep, loo.present).cpu().numpy()
    t_se = (np.zeros(len(mse_se)) if truth_se is None
            else truth_se.detach().cpu().reshape(-1).numpy().astype(np.float64))
    # The truth's own SE (a reference truth) enters through 2 bias x truth_se, independent.
    with np.errstate(invalid="ignore", over="ignore"):  # an overflowed bias: NaN, reported
        out["mse_se"] = np.sqrt(mse_se**2 + 4.0 * out["bias"] ** 2 * t_se**2)


def select(moments: Moments, columns: slice | Tensor) -> Moments:
    """The moments of some coordinates."""
    return Moments(**{k: getattr(moments, k)[columns] for k in
                      ("count", "mean", "m2", "m3", "m4", "nonfinite")})


def select_groups(groups: GroupSums, columns: slice | Tensor) -> GroupSums:
    """The group sums of some coordinates."""
    return GroupSums(count=groups.count[:, columns], s1=groups.s1[:, columns],
                     s2=groups.s2[:, columns], shift=groups.shift[columns])
