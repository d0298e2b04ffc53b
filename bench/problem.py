"""Problem: what an estimator sees. A distribution family built from named parameter tensors,
a batched cost f(z), and the exact gradient of E[f(z)] where one is known.

Suites build Problems; estimators consume them. Neither knows the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.distributions import Distribution

TRUTH_METHODS = ("analytic", "enumeration", "quadrature", "reference", "none")


@dataclass(frozen=True, eq=False)
class Problem:
    """d/dtheta E_{z ~ q_theta}[f(z)] for named parameters theta.

    params: named parameter tensors (e.g. {"mu": [dim], "sigma": [dim]}). Estimators
        differentiate with respect to exactly these.
    distribution: builds q from parameter tensors given as keyword arguments with the same names.
        Parameters may carry extra leading batch dimensions (one copy per sample), and the
        distribution's batch shape follows them.
    cost: batched f. Takes samples shaped [n, *sample_shape] (sample_shape = the shape of one
        draw of q(**params)) and returns [n].
    cost_terms: for separable costs f(z) = sum_i f_i(z_i): returns the per-coordinate terms
        [n, dim] for z [n, dim]. None when f does not split over coordinates.
    differentiable_cost: whether df/dz exists and autograd computes it (pathwise needs it).
    cost_accepts_relaxed: for discrete q, whether f is also defined (and differentiable) on the
        continuous relaxation of the support: [0, 1] for Bernoulli, the simplex for one-hot
        categoricals. Straight-through, Gumbel-softmax, REBAR and RELAX need it.
    exact_gradient: the true gradient per parameter (same shapes as params), or None.
    truth_method: how exact_gradient was obtained; one of TRUTH_METHODS.
    truth_se: for truth_method == "reference", the standard error of each coordinate.
    cost_grad: optional closed form of df/dz: takes z [n, *sample_shape] and returns
        [n, *sample_shape], row i = the gradient of f(z_i) with respect to z_i, i.e. what
        autograd gives for grad(cost(z).sum(), z). Lets pathwise skip the autograd graph (same
        draws, same estimates up to rounding); None: pathwise differentiates `cost`.
    settings: the suite settings this problem was built from (for error messages).
    """

    params: Mapping[str, Tensor]
    distribution: Callable[..., Distribution]
    cost: Callable[[Tensor], Tensor]
    exact_gradient: Mapping[str, Tensor] | None = None
    truth_method: str = "none"
    truth_se: Mapping[str, Tensor] | None = None
    cost_terms: Callable[[Tensor], Tensor] | None = None
    differentiable_cost: bool = True
    cost_accepts_relaxed: bool = False
    settings: Mapping[str, object] = field(default_factory=dict)
    cost_grad: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        if self.truth_method not in TRUTH_METHODS:
            raise ValueError(f"truth_method must be one of {TRUTH_METHODS}, "
                             f"not {self.truth_method!r}")
        if (self.exact_gradient is None) != (self.truth_method == "none"):
            raise ValueError("exact_gradient is given exactly when truth_method is not 'none'")
        if self.exact_gradient is not None:
            for name, value in self.params.items():
                if self.exact_gradient[name].shape != value.shape:
                    raise ValueError(f"exact gradient for {name!r} has the wrong shape")

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype

    def q(self) -> Distribution:
        """The distribution at the problem's parameters (no per-sample batch dimension)."""
        return self.distribution(**self.params)

    def expand_params(self, n: int, requires_grad: bool = False) -> dict[str, Tensor]:
        """One independent copy of every parameter per sample: [n, *shape] leaves.

        Differentiating sum_i surrogate_i with respect to these leaves gives, in row i, the
        gradient of surrogate_i alone: per-sample gradients from one backward pass.
        """
        return {
            name: value.detach().expand(n, *value.shape).clone().requires_grad_(requires_grad)
            for name, value in self.params.items()
        }
