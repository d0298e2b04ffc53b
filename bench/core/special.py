"""Special functions accurate to float64 where torch's are not: the trigamma function, and a
digamma whose derivative uses it.

Why: torch's float64 trigamma (torch.polygamma(1, x), also the backward of torch.digamma) is a
truncated series with relative errors up to ~5e-10 (measured against mpmath: 3.1e-10 at x = 0.5,
4.6e-10 at 1.5), so a truth obtained by autograd through digamma (the gamma suite's log cost,
d/dconcentration E[log z] = trigamma(concentration)) was exact only to ~9 digits while the suite
claims float64 exactness. torch's digamma itself is accurate (<= 1e-14 relative, same check).

Written here rather than taken from scipy: scipy is a development dependency only, and the two
functions need ~20 lines. The method is the textbook one (Abramowitz & Stegun 6.4.6, 6.4.12):
    trigamma(x) = sum_{j<J} 1/(x + j)^2 + trigamma(x + J)   (from psi1(x) = psi1(x+1) + 1/x^2)
    trigamma(y) ~ 1/y + 1/(2 y^2) + sum_k B_2k / y^(2k+1)      (asymptotic, y >= 20)
With y >= 20 and Bernoulli numbers through B_14, the first omitted term, B_16 / y^17 = 7.1 / 20^17,
is below 1e-21 relative to trigamma(y) ~ 1/y: the error is float64 rounding in the <= 20 + 9 terms.
"""

from __future__ import annotations

import torch
from torch import Tensor

_ASYMPTOTIC_FROM = 20.0
# B_2k for k = 1..7: 1/6, -1/30, 1/42, -1/30, 5/66, -691/2730, 7/6 (coefficients of y^-(2k+1)).
_BERNOULLI = (1.0 / 6.0, -1.0 / 30.0, 1.0 / 42.0, -1.0 / 30.0, 5.0 / 66.0, -691.0 / 2730.0,
              7.0 / 6.0)


def trigamma(x: Tensor) -> Tensor:
    """psi'(x) = d^2/dx^2 log Gamma(x) for x > 0, computed in float64 (NaN for x <= 0), returned
    in x's dtype."""
    y = x.detach().to(torch.float64)
    valid = y > 0
    y = torch.where(valid, y, 1.0)
    shifted = torch.zeros_like(y)
    # At most 20 shifts bring any x > 0 to >= 20; each shift adds 1/x^2 for x below the bound.
    for _ in range(int(_ASYMPTOTIC_FROM)):
        low = y < _ASYMPTOTIC_FROM
        if not bool(low.any()):
            break
        shifted = shifted + torch.where(low, 1.0 / (y * y), 0.0)
        y = torch.where(low, y + 1.0, y)
    inv = 1.0 / y
    inv2 = inv * inv
    # Horner in 1/y^2 for the Bernoulli tail: sum_k B_2k y^-(2k+1) = y^-3 * P(y^-2).
    series = torch.zeros_like(y)
    for coefficient in reversed(_BERNOULLI):
        series = series * inv2 + coefficient
    value = shifted + inv + 0.5 * inv2 + series * inv2 * inv
    return torch.where(valid, value, torch.nan).to(x.dtype)


class _Digamma(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.digamma(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * trigamma(x)


def digamma(x: Tensor) -> Tensor:
    """torch.digamma (accurate), differentiable with the accurate `trigamma` as its derivative
    (first derivatives only: a truth is one autograd call through a closed form)."""
    return _Digamma.apply(x)
