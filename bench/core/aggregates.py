"""Statistics of a whole parameter tensor (issue 10, point 5): one `tensor` row per parameter,
each aggregate with a standard error from the grouped jackknife (gradbench.core.jackknife).

For estimates g_i in R^d of a parameter with true gradient g*, mean mu = E g and covariance S:
  variance (total)     T = tr S = sum_c Var(g_c); estimate sum_c s_c^2 (unbiased); its interval
                       and SE as the coordinates' (jackknife of log T).
  mean/max coordinate  T / d and max_c s_c^2. The max's jackknife SE ignores that the maximum is
  variance             selected: with many coordinates of similar variance the max of their
                       estimates is biased upwards by a few of their SEs.
  gradient SNR         ||mu||^2 / T. ||g-bar||^2 overestimates ||mu||^2 by T / n, so the estimate
                       is (||g-bar||^2 - T-hat / n) / T-hat (which can be < 0 when mu ~ 0).
  cosine               cos(g-bar, g*): of the mean of the n estimates, so it tends to 1 with n
                       for an unbiased estimator, as fast as its variance allows.
  mse, relative MSE    E||g - g*||^2 = T + ||mu - g*||^2 for one estimate; estimated by
                       T-hat + ||g-bar - g*||^2 - T-hat / n - sum truth_se^2 (E||g-bar - g*||^2 =
                       ||bias||^2 + T / n, plus a reference truth's own variance), over ||g*||^2.
Every aggregate is a smooth function of the group sums, so its leave-one-group-out replicates
come from the same [G, d] leave-one-out means and variances, and the jackknife SE follows
(linear scale; the total variance on the log scale).

The bias test of a large tensor cannot list every coordinate: the tensor row carries the worst
coordinate (largest |bias| / SE, `worst_coord`) in its mean, truth, bias and bias_se, and the
gate tests it against a Bonferroni bound over the tensor's `coords`.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from gradbench.core import reliability
from gradbench.core.jackknife import jackknife_se, leave_one_out, log_interval
from gradbench.core.moments import Moments
from gradbench.core.streaming import GroupSums
from gradbench.core.tail_index import tail_index

TENSOR_KEYS = ("coords", "worst_coord", "mean_coord_variance", "mean_coord_variance_se",
               "max_coord_variance", "max_coord_variance_se", "grad_snr", "grad_snr_se",
               "cosine", "cosine_se", "relative_mse", "relative_mse_se")


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den != 0, num / torch.where(den != 0, den, 1.0), math.nan)


def aggregate(moments: Moments, groups: GroupSums, norm_tail: Tensor,
              truth: Tensor | None, truth_se: Tensor | None,
              rare: reliability.RareStates | None) -> dict[str, object]:
    """The tensor row of one parameter (scalars), from its coordinates' moments and group sums,
    and the largest ||g_i - shift||^2 (norm_tail [T])."""
    loo = leave_one_out(groups)
    present = loo.present.all(1)[:, None]  # [G, 1]: a group counts if it has every coordinate
    n = loo.full_count  # [d]
    coords = int(n.shape[0])
    total = loo.full_variance.sum()[None]
    total_rep = loo.variance.sum(1, keepdim=True)  # [G, 1]
    interval = log_interval(total, total_rep, present)
    plain = moments.summarize(truth, truth_se)

    def se(full: Tensor, rep: Tensor) -> float:
        return float(jackknife_se(full.reshape(1), rep.reshape(-1, 1), present)[0])

    row: dict[str, object] = {
        "coords": coords, "n": int(n.min()), "nonfinite": int(moments.nonfinite.sum()),
        "variance": float(total), "variance_se": float(interval["se"][0]),
        "variance_lo": float(interval["lo"][0]), "variance_hi": float(interval["hi"][0]),
        "variance_df": float(interval["df"][0]), "std": math.sqrt(float(total)),
        "mean_coord_variance": float(total) / coords,
        "mean_coord_variance_se": float(interval["se"][0]) / coords,
        "max_coord_variance": float(loo.full_variance.max()),
        "max_coord_variance_se": se(loo.full_variance.max(), loo.variance.amax(1)),
        "snr": math.nan, "snr_se": math.nan, "kurtosis": math.nan, "skewness": math.nan,
    }
    count = n.mean()
    norm = (loo.full_mean**2).sum()
    norm_rep = (loo.mean**2).sum(1)
    snr = _ratio(norm - total[0] / count, total[0])
    snr_rep = _ratio(norm_rep - total_rep[:, 0] / loo.count.mean(1), total_rep[:, 0])
    row["grad_snr"], row["grad_snr_se"] = float(snr), se(snr, snr_rep)
    row.update(_against_truth(loo, total, total_rep, truth, truth_se, se))
    row.update(_worst_coordinate(plain, truth, truth_se))
    k_hat = (float(tail_index(norm_tail.reshape(-1, 1))[0]) if norm_tail.numel() else math.nan)
    row["tail_index"] = k_hat
    row.update(_verdict(row, k_hat, rare, n))
    return row


def _against_truth(loo, total: Tensor, total_rep: Tensor, truth: Tensor | None,
                   truth_se: Tensor | None, se) -> dict[str, float]:
    nan = {k: math.nan for k in ("cosine", "cosine_se", "relative_mse", "relative_mse_se",
                                 "mse", "mse_se")}
    if truth is None:
        return nan
    t = truth.reshape(-1).to(loo.full_mean.device, torch.float64)
    t_var = (0.0 if truth_se is None else
             float((truth_se.reshape(-1).to(torch.float64) ** 2).sum()))
    t_norm2 = (t * t).sum()
    cosine = _ratio((loo.full_mean * t).sum(), loo.full_mean.norm() * t.norm())
    cosine_rep = _ratio((loo.mean * t).sum(1), loo.mean.norm(dim=1) * t.norm())
    count = loo.full_count.mean()
    mse = total[0] + ((loo.full_mean - t) ** 2).sum() - total[0] / count - t_var
    mse_rep = (total_rep[:, 0] + ((loo.mean - t) ** 2).sum(1)
               - total_rep[:, 0] / loo.count.mean(1) - t_var)
    mse_se = se(mse, mse_rep)
    return {"cosine": float(cosine), "cosine_se": se(cosine, cosine_rep),
            "mse": float(mse), "mse_se": mse_se,
            "relative_mse": float(_ratio(mse, t_norm2)),
            "relative_mse_se": mse_se / float(t_norm2) if float(t_norm2) > 0 else math.nan}


def _worst_coordinate(plain: dict[str, np.ndarray], truth: Tensor | None,
                      truth_se: Tensor | None) -> dict[str, object]:
    """mean, truth, truth_se, bias, bias_se of the coordinate with the largest |bias| / SE."""
    keys = ("mean", "mean_se", "truth", "truth_se", "bias", "bias_se")
    if truth is None:
        return {"worst_coord": -1, **{k: math.nan for k in keys}}
    bias, bias_se = plain["bias"], plain["bias_se"]
    scale = np.nan_to_num(np.maximum(np.abs(plain["mean"]), np.abs(bias)), nan=0.0)
    # A tiny floor so that SE-0 coordinates (deterministic estimators) rank by |bias|.
    with np.errstate(all="ignore"):
        z = np.abs(bias) / np.sqrt(bias_se**2 + (1e-12 * scale) ** 2 + 1e-300)
    worst = int(np.nanargmax(z)) if np.isfinite(z).any() else 0
    t = truth.reshape(-1).cpu().numpy()
    t_se = 0.0 if truth_se is None else float(truth_se.reshape(-1)[worst])
    return {"worst_coord": worst, "mean": float(plain["mean"][worst]),
            "mean_se": float(plain["mean_se"][worst]), "truth": float(t[worst]),
            "truth_se": t_se, "bias": float(bias[worst]), "bias_se": float(bias_se[worst])}


def _verdict(row: dict[str, object], k_hat: float, rare: reliability.RareStates | None,
             n: Tensor) -> dict[str, object]:
    """The tensor's reliability: its norms' tail, and its rarest coordinate's states (for a
    learned surrogate, with the least likely state over all its coordinates)."""
    worst = None
    if rare is not None and np.isfinite(rare.probability).any():
        worst = int(np.nanargmin(rare.probability))
        least = rare.least_likely
        rare = rare.at(slice(worst, worst + 1))
        if least is not None and np.isfinite(least).any():
            rare = replace(rare, least_likely=np.array([np.nanmin(least)]))
    else:  # no coordinate has rare states (p_eff infinite: two equally likely values)
        rare = None
    count = int(n.min()) if worst is None else int(n[worst])
    verdict = reliability.judge(n=np.array([count]), k_hat=np.array([k_hat]),
                                variance=np.array([row["variance"]]),
                                two_point=np.array([False]), rare=rare)
    return {key: value[0].item() if hasattr(value[0], "item") else value[0]
            for key, value in verdict.items()}
