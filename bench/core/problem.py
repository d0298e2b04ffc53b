"""Problem: what an estimator sees. A distribution built from named parameter tensors, a batched
cost f_theta(z) that may itself depend on the parameters, the data it was built on, the structure
it offers (capabilities), and the exact gradient of E_q[f] where one is known.

Suites build Problems; estimators consume them. Neither knows the other.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import Tensor
from torch.distributions import Distribution

from gradbench.core.capabilities import Capability

TRUTH_METHODS = ("analytic", "enumeration", "quadrature", "reference", "none")
Params = Mapping[str, Tensor]
Cost = Callable[[Tensor, Params], Tensor]
C = TypeVar("C", bound=Capability)


@dataclass(frozen=True, eq=False)
class Problem:
    """d/dtheta E_{z ~ q_theta}[f_theta(z)] for named parameters theta.

    params: named parameter tensors (e.g. {"mu": [dim], "sigma": [dim]}). Estimators
        differentiate with respect to exactly these.
    distribution: builds q from parameter tensors given as keyword arguments with the same names.
        Parameters may carry one extra leading batch dimension (one copy per sample), and the
        distribution's batch shape follows it.
    cost: f(z, params) -> [m]. z is [m, *sample_shape] (sample_shape = the shape of one draw of
        q(**params)); params are either the problem's own tensors or per-sample copies
        [m, *shape] (row i goes with z[i]). A cost that depends on params (a KL or log q term
        inside an ELBO) is allowed: every estimator adds the direct term E_q[grad_theta f].
    data: the data the problem was built on (name -> tensor: a minibatch, a design matrix), so
        users and tests can recompute the truth independently. Empty for toy problems.
    capabilities: the structure this problem offers (gradbench.core.capabilities): a separable
        cost, a closed-form df/dz, a linear Gaussian layer, ... Estimators that need one say so.
    exact_gradient: the true gradient per parameter (same shapes as params), or None.
    truth_method: how exact_gradient was obtained; one of TRUTH_METHODS.
    truth_se: for truth_method == "reference", the standard error of each coordinate.
    settings: the suite settings this problem was built from (for messages).
    """

    params: Params
    distribution: Callable[..., Distribution]
    cost: Cost
    exact_gradient: Params | None = None
    truth_method: str = "none"
    truth_se: Params | None = None
    settings: Mapping[str, object] = field(default_factory=dict)
    data: Mapping[str, Tensor] = field(default_factory=dict)
    capabilities: tuple[Capability, ...] = ()

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
        kinds = [type(c) for c in self.capabilities]
        if len(set(kinds)) != len(kinds):
            raise ValueError("a problem offers each capability at most once")

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype

    @property
    def numel(self) -> int:
        """Total number of parameter coordinates (the width of one gradient estimate)."""
        return sum(int(value.numel()) for value in self.params.values())

    def offers(self, kind: type[C]) -> C | None:
        """The capability of this type the problem offers, or None."""
        return next((c for c in self.capabilities if isinstance(c, kind)), None)

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

    def cost_depends_on_params(self) -> bool:
        """Whether f_theta(z) depends on theta directly (not only through z ~ q_theta).

        Decided once per problem by evaluating f on one detached draw with parameters that
        require grad: a cost that never touches them builds no graph. Estimators use it to skip
        the direct term's backward pass where there is none; computing the term is never wrong.
        """
        known = _DEPENDS.get(self)
        if known is None:
            leaves = {k: v.detach().requires_grad_(True) for k, v in self.params.items()}
            # A forked generator: the probe's draw must not shift the draws of the estimator
            # that asks (estimators ask from inside their seeded chunks).
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                draw = self.distribution(**leaves).sample((1,))
                known = bool(self.cost(draw, leaves).requires_grad)
            _DEPENDS[self] = known
        return known


# Problem -> whether its cost depends on its parameters; weak keys: problems are built per cell.
_DEPENDS: weakref.WeakKeyDictionary[Problem, bool] = weakref.WeakKeyDictionary()
