"""Streaming per-coordinate moments and the summaries (with standard errors) built on them.

Why: a benchmark cell draws its gradient estimates in chunks, to bound memory on any device, and
reports mean, variance, bias, SNR and MSE per gradient coordinate, each with a standard error.
`Moments` holds count, mean and the central moment sums M2, M3, M4 of one chunk; chunks merge with
the pairwise formulas of Chan, Golub & LeVeque (1979) and Pebay (2008), so memory is constant in
the number of samples and the result does not depend on the chunking or the merge order beyond
floating-point rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

SUMMARY_KEYS = (
    "n",
    "nonfinite",
    "mean",
    "mean_se",
    "variance",
    "variance_se",
    "std",
    "bias",
    "bias_se",
    "snr",
    "snr_se",
    "mse",
    "mse_se",
)

_F64 = torch.float64


@dataclass(frozen=True)
class Moments:
    """Count, mean and central moment sums (M2, M3, M4) per coordinate, float64, on any device.

    count: int64 [C], finite samples seen per coordinate.
    mean: float64 [C], their mean (0 where count is 0: a placeholder that merges ignore).
    m2, m3, m4: float64 [C], sums of (x - mean)^k over the finite samples.
    nonfinite: int64 [C], NaN/Inf samples seen; they are excluded from everything else, so a
        diverging estimator shows up as a count instead of poisoning the mean.
    """

    count: Tensor
    mean: Tensor
    m2: Tensor
    m3: Tensor
    m4: Tensor
    nonfinite: Tensor

    def __post_init__(self) -> None:
        shape = self.count.shape
        if len(shape) != 1:
            raise ValueError(f"Moments fields must be 1-D [C], got count of shape {tuple(shape)}")
        for name in ("mean", "m2", "m3", "m4", "nonfinite"):
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"Moments.{name} has shape {tuple(getattr(self, name).shape)}, "
                    f"expected {tuple(shape)}"
                )

    @property
    def coords(self) -> int:
        """Number of coordinates C."""
        return self.count.shape[0]

    @staticmethod
    def zeros(coords: int, device: torch.device | str = "cpu") -> Moments:
        """The moments of no samples: the identity of `merge`."""
        f = torch.zeros(coords, dtype=_F64, device=device)
        i = torch.zeros(coords, dtype=torch.int64, device=device)
        return Moments(
            count=i, mean=f, m2=f.clone(), m3=f.clone(), m4=f.clone(), nonfinite=i.clone()
        )

    @staticmethod
    def of(x: Tensor) -> Moments:
        """Moments of a chunk x [n, C] (any float dtype, any device), in float64 on x's device.

        Two passes over the chunk: the mean first, then power sums of the deviations from it, so a
        large common offset (1e8 + noise) does not cancel catastrophically as raw power sums would.
        The second pass also yields the first pass's rounding error, delta = mean(x - mean), and
        the sums are shifted by it exactly (binomial expansion), the "corrected two-pass" scheme.
        NaN/Inf entries are excluded per coordinate and counted in `nonfinite`.
        """
        if x.ndim != 2:
            raise ValueError(f"Moments.of expects x of shape [n, C], got {tuple(x.shape)}")
        rows, coords = x.shape
        if rows == 0:
            return Moments.zeros(coords, device=x.device)
        x = x.detach().to(_F64)
        # On the CPU, an all-finite chunk (the usual case) skips the masks: about half the passes.
        # A NaN or Inf anywhere makes the sum non-finite, so one cheap reduction decides. On a GPU
        # the check would cost a host round-trip per chunk, so the masked path runs there.
        unmasked = x.device.type == "cpu" and math.isfinite(float(x.sum()))
        finite = None if unmasked else torch.isfinite(x)
        count = torch.full((coords,), rows, device=x.device) if unmasked else finite.sum(0)
        has = count > 0
        cnt = count.clamp(min=1).to(_F64)  # clamp: count-0 columns divide by 1 and stay 0
        # The mean lies in [min, max]; clamping there makes a constant column's mean the constant
        # exactly (a rounded sum / n need not be), hence exactly zero variance for it.
        if unmasked:
            mean = x.sum(0) / cnt
            # amin + amax, not aminmax: torch's aminmax over dim 0 ran 100-700x slower here.
            lo, hi = x.amin(0), x.amax(0)
        else:
            mean = torch.where(finite, x, 0.0).sum(0) / cnt
            lo = torch.where(finite, x, math.inf).amin(0)
            hi = torch.where(finite, x, -math.inf).amax(0)
        mean = torch.where(has, torch.minimum(torch.maximum(mean, lo), hi), 0.0)

        d = x - mean if unmasked else torch.where(finite, x - mean, 0.0)
        s1 = d.sum(0)
        d2 = d * d
        s2 = d2.sum(0)
        s3 = (d2 * d).sum(0)
        s4 = (d2 * d2).sum(0)
        delta = s1 / cnt
        # Sums of (d - delta)^k from sums of d^k, using s1 = n * delta.
        m2 = (s2 - s1 * delta).clamp(min=0.0)
        m3 = s3 - 3.0 * delta * s2 + 2.0 * cnt * delta**3
        m4 = (s4 - 4.0 * delta * s3 + 6.0 * delta**2 * s2 - 3.0 * cnt * delta**4).clamp(min=0.0)
        mean = torch.where(has, torch.minimum(torch.maximum(mean + delta, lo), hi), 0.0)
        return Moments(count=count, mean=mean, m2=m2, m3=m3, m4=m4, nonfinite=rows - count)

    def merge(self, other: Moments) -> Moments:
        """The moments of the union of both sample sets (Chan et al. 1979; Pebay 2008).

        With n = na + nb, delta = mean_b - mean_a, wa = na / n, wb = nb / n:
          mean = mean_a + delta * wb
          M2 = M2a + M2b + delta^2 * na * wb
          M3 = M3a + M3b + delta^3 * na * wb * (wa - wb) + 3 delta (wa M2b - wb M2a)
          M4 = M4a + M4b + delta^4 * na * wb * (wa^2 - wa wb + wb^2)
               + 6 delta^2 (wa^2 M2b + wb^2 M2a) + 4 delta (wa M3b - wb M3a)
        Either side may have count 0 in any coordinate; the other side is then returned as is.
        """
        if self.count.shape != other.count.shape:
            raise ValueError(f"cannot merge Moments over {self.coords} and {other.coords} coords")
        na, nb = self.count, other.count
        count = na + nb
        fa, fb = na.to(_F64), nb.to(_F64)
        fn = count.clamp(min=1).to(_F64)
        wa, wb = fa / fn, fb / fn
        both = (na > 0) & (nb > 0)
        # delta is 0 unless both sides have samples, so an empty side's placeholder mean never
        # enters; the where() below keeps the other side's mean bit for bit.
        delta = torch.where(both, other.mean - self.mean, 0.0)
        mean = torch.where(
            na == 0, other.mean, torch.where(nb == 0, self.mean, self.mean + delta * wb)
        )
        d2 = delta * delta
        m2 = self.m2 + other.m2 + d2 * fa * wb
        m3 = (
            self.m3
            + other.m3
            + d2 * delta * fa * wb * (wa - wb)
            + 3.0 * delta * (wa * other.m2 - wb * self.m2)
        )
        m4 = (
            self.m4
            + other.m4
            + d2 * d2 * fa * wb * (wa * wa - wa * wb + wb * wb)
            + 6.0 * d2 * (wa * wa * other.m2 + wb * wb * self.m2)
            + 4.0 * delta * (wa * other.m3 - wb * self.m3)
        )
        return Moments(
            count=count,
            mean=mean,
            m2=m2,
            m3=m3,
            m4=m4.clamp(min=0.0),
            nonfinite=self.nonfinite + other.nonfinite,
        )

    @staticmethod
    def merge_all(parts: Iterable[Moments]) -> Moments:
        """Merge any number of parts as a balanced binary tree, streaming.

        A stack of partial results, one per tree level (like a binary counter), keeps memory at
        O(log N) parts and rounding error growing like log N rather than N as a left fold would.
        """
        stack: list[tuple[int, Moments]] = []
        for part in parts:
            level, acc = 0, part
            while stack and stack[-1][0] == level:
                acc = stack.pop()[1].merge(acc)
                level += 1
            stack.append((level, acc))
        if not stack:
            raise ValueError("Moments.merge_all needs at least one part (the coordinate count)")
        acc = stack.pop()[1]
        while stack:
            acc = stack.pop()[1].merge(acc)
        return acc

    def summarize(
        self,
        truth: Tensor | np.ndarray | float | None = None,
        truth_se: Tensor | np.ndarray | float | None = None,
    ) -> dict[str, np.ndarray]:
        """Per-coordinate statistics of ONE estimate (one sample), with standard errors.

        Returns numpy arrays [C]: float64, except `n` and `nonfinite` (int64). Keys:
          n, nonfinite: finite and non-finite sample counts.
          mean, mean_se = sqrt(variance / n).
          variance = M2 / (n - 1) (unbiased s^2); std = sqrt(variance).
          variance_se = sqrt((mu4 - (n-3)/(n-1) s^4) / n), mu4 = M4 / n, radicand clamped at 0.
            Plug-in of the standard exact iid result Var(s^2) = (mu4 - (n-3)/(n-1) sigma^4) / n
            (e.g. Cramer 1946, Mathematical Methods of Statistics, ch. 27).
          bias = mean - truth; bias_se = sqrt(mean_se^2 + truth_se^2), truth_se being the
            standard error of a reference truth (independent of the samples), 0 if not given.
          snr = |mean| / std: NaN when mean == std == 0; inf (snr_se 0) when std == 0 < |mean|.
          mse = bias^2 + variance, mean squared error of one estimate against the truth.
          bias, bias_se, mse, mse_se are NaN when truth is None.
        Coordinates with n < 2 give NaN for every variance-type quantity (mean is NaN at n = 0).
        snr_se and mse_se: first-order delta method (_SecondOrder, _snr, _bias_and_mse).
        """
        cpu = {
            k: getattr(self, k).detach().cpu().numpy()
            for k in ("count", "mean", "m2", "m3", "m4", "nonfinite")
        }
        count = cpu["count"].astype(np.int64)
        coords = count.shape[0]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            stats = _SecondOrder.of(cpu)
            snr, snr_se = _snr(stats)
            bias, bias_se, mse, mse_se = _bias_and_mse(stats, truth, truth_se, coords)
        out = {
            "n": count,
            "nonfinite": cpu["nonfinite"].astype(np.int64),
            "mean": stats.mean,
            "mean_se": np.sqrt(stats.var_mean),
            "variance": stats.var,
            "variance_se": np.sqrt(stats.var_var),
            "std": stats.std,
            "bias": bias,
            "bias_se": bias_se,
            "snr": snr,
            "snr_se": snr_se,
            "mse": mse,
            "mse_se": mse_se,
        }
        return {
            k: np.asarray(out[k], dtype=np.int64 if k in ("n", "nonfinite") else np.float64)
            for k in SUMMARY_KEYS
        }


@dataclass(frozen=True)
class _SecondOrder:
    """Per-coordinate float64 [C] quantities the summary's standard errors are built from.

    snr_se and mse_se are first-order delta-method SEs of functions of (mean, s^2), using the
    iid results Var(mean) = s^2/n, Cov(mean, s^2) = mu3/n (mu3 = M3 / n) and, for Var(s^2),
    the variance_se^2 of Moments.summarize rather than the asymptotic (mu4 - s^4)/n: they differ
    by 2 s^4 / (n (n-1)), O(1/n) relative like the delta method's own error, but the finite-n
    form is exact for iid data, stays >= 0 for any sample (M4/n >= ((n-1)/n)^2 s^4) where
    mu4 - s^4 can go negative at small n, and makes mse_se == variance_se at zero bias.
    Radicands are clamped at 0; the delta method has O(1/n) relative bias.
    """

    mean: np.ndarray  # NaN at n = 0
    var: np.ndarray  # s^2 = M2 / (n - 1), NaN at n < 2
    std: np.ndarray
    var_mean: np.ndarray  # Var(mean) = s^2 / n
    var_var: np.ndarray  # Var(s^2) = (mu4 - (n-3)/(n-1) s^4) / n, clamped at 0
    cov: np.ndarray  # Cov(mean, s^2) = mu3 / n

    @classmethod
    def of(cls, cpu: dict[str, np.ndarray]) -> _SecondOrder:
        """From the moments as numpy arrays; call under np.errstate (n = 0 or 1 divide)."""
        count = cpu["count"].astype(np.int64)
        nf = count.astype(np.float64)
        ok = count >= 2
        mean = np.where(count > 0, cpu["mean"], np.nan)
        var = np.where(ok, cpu["m2"] / (nf - 1.0), np.nan)
        var_mean = var / nf
        mu3 = np.where(ok, cpu["m3"] / nf, np.nan)
        mu4 = np.where(ok, cpu["m4"] / nf, np.nan)
        var_var = np.maximum((mu4 - (nf - 3.0) / (nf - 1.0) * var * var) / nf, 0.0)
        return cls(mean, var, np.sqrt(var), var_mean, var_var, mu3 / nf)


def _snr(stats: _SecondOrder) -> tuple[np.ndarray, np.ndarray]:
    """snr = |mean| / std and its SE; gradient (sign(mean)/s, -|mean|/(2 s^3)), i.e. the
    Sharpe-ratio formula Var(snr) ~ 1/n - mean mu3/(n s^4) + mean^2 Var(s^2)/(4 s^6)
    (Lo 2002; Mertens 2002). Call under np.errstate."""
    mean, var, std = stats.mean, stats.var, stats.std
    # numpy's |m|/0 = inf and 0/0 = NaN are exactly the conventions wanted for std == 0.
    snr = np.abs(mean) / std
    g_m = np.sign(mean) / std
    g_v = -np.abs(mean) / (2.0 * var * std)
    snr_var = (g_m * g_m * stats.var_mean + g_v * g_v * stats.var_var
               + 2.0 * g_m * g_v * stats.cov)
    snr_se = np.sqrt(np.maximum(snr_var, 0.0))
    snr_se = np.where(std == 0.0, np.where(mean == 0.0, np.nan, 0.0), snr_se)
    return snr, snr_se


def _bias_and_mse(
    stats: _SecondOrder,
    truth: Tensor | np.ndarray | float | None,
    truth_se: Tensor | np.ndarray | float | None,
    coords: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bias, bias_se, mse, mse_se), all NaN without a truth. mse's SE: gradient (2 bias, 1)
    w.r.t. (mean, s^2), plus 4 bias^2 truth_se^2 for the truth:
    Var(mse) ~ 4 bias^2 (s^2/n + truth_se^2) + Var(s^2) + 4 bias mu3/n."""
    if truth is None:
        nan = np.full(coords, np.nan)
        return nan, nan, nan, nan
    t = _as_coords(truth, coords)
    t_se = np.zeros(coords) if truth_se is None else _as_coords(truth_se, coords)
    bias = stats.mean - t
    bias_var = stats.var_mean + t_se * t_se
    mse = bias * bias + stats.var
    mse_var = 4.0 * bias * bias * bias_var + stats.var_var + 4.0 * bias * stats.cov
    return bias, np.sqrt(bias_var), mse, np.sqrt(np.maximum(mse_var, 0.0))


def _as_coords(value: Tensor | np.ndarray | float, coords: int) -> np.ndarray:
    """A truth (or its SE) as float64 numpy [C], broadcasting scalars."""
    if isinstance(value, Tensor):
        value = value.detach().to("cpu", _F64).numpy()
    arr = np.asarray(value, dtype=np.float64)
    return np.broadcast_to(arr.reshape(-1) if arr.ndim else arr, (coords,)).copy()
