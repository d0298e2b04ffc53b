"""Helpers for writing estimators: per-sample gradients from one backward pass, summed
log-probabilities, per-sample parameters for several draws per estimate, the vector-Jacobian map
from a distribution's native parameters to the problem's, and output checks.

The per-sample trick: `problem.expand_params(n, requires_grad=True)` gives one independent leaf
row per sample, so grad(sum_i s_i, leaves) has in row i the gradient of s_i alone (s_i touches
only row i). One backward pass yields n per-sample gradients, with no loop over samples.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torch.distributions import Distribution

from gradbench.core.problem import Problem


def per_sample_grad(surrogate: Tensor, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Row i of each result = d surrogate_i / d params[name][i], for per-sample leaves [n, ...].

    Parameters the surrogate does not depend on get zeros (not None), as does everything when
    the surrogate carries no graph at all (e.g. a cost of non-reparameterized samples).
    """
    n = next(iter(params.values())).shape[0]
    if surrogate.shape != (n,):
        raise ValueError(f"surrogate must have shape ({n},), not {tuple(surrogate.shape)}")
    names = list(params)
    leaves = [params[name] for name in names]
    if not surrogate.requires_grad:
        # Autograd refuses a graph-less output; the honest answer is d(constant)/d(theta) = 0.
        return {name: torch.zeros_like(leaf) for name, leaf in zip(names, leaves, strict=True)}
    grads = torch.autograd.grad(surrogate.sum(), leaves, allow_unused=True)
    return {
        name: torch.zeros_like(leaf) if grad is None else grad
        for name, grad, leaf in zip(names, grads, leaves, strict=True)
    }


def repeat_params(params: Mapping[str, Tensor], copies: int) -> dict[str, Tensor]:
    """Per-sample parameters [n, ...] repeated for `copies` draws per estimate: [copies * n, ...],
    draw-major (row k * n + i goes with estimate i), still differentiable in the leaves, so a
    cost of z.flatten(0, 1) for z [copies, n, ...] can take them."""
    return {name: value.expand(copies, *value.shape).flatten(0, 1)
            for name, value in params.items()}


def detached(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The parameters cut from the graph: for control variates, which must not add a direct
    term of their own."""
    return {name: value.detach() for name, value in params.items()}


def log_prob_sum(q: Distribution, z: Tensor, keep: int = 1) -> Tensor:
    """log q(z) summed over everything but the first `keep` dims (sample dims, then the per-sample
    batch dim): a draw's coordinates are independent components of one joint sample."""
    log_prob = q.log_prob(z)
    return log_prob.reshape(*log_prob.shape[:keep], -1).sum(-1)


def native_to_params(
    q: Distribution, native: Mapping[str, Tensor], params: Mapping[str, Tensor],
    direct: Tensor | None = None,
) -> dict[str, Tensor]:
    """Map per-sample gradients w.r.t. q's native parameters (attribute name -> [n, *batch]) to
    the problem's per-sample leaves by a vector-Jacobian product (the chain rule).

    E[f] depends on theta through q's native parameters, so the sampling part of the gradient is
    sum_a (dE/da) (da/dtheta); backprop of sum_a <a, g_a.detach()> computes exactly that, per
    sample, whatever the problem's parameterization (e.g. log-sigma). `direct` ([n], optional):
    a per-sample surrogate whose gradient is the cost's direct term, added in the same pass.
    """
    n = next(iter(params.values())).shape[0]
    surrogate = sum(
        (getattr(q, attr) * grad.detach()).reshape(n, -1).sum(-1) for attr, grad in native.items()
    )
    assert isinstance(surrogate, Tensor)
    if direct is not None:
        surrogate = surrogate + direct
    return per_sample_grad(surrogate, params)


def check_estimates(problem: Problem, n: int, estimates: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Fail loudly on a malformed result: exactly the problem's parameters, each [n, *shape],
    with the problem's dtype and device."""
    if set(estimates) != set(problem.params):
        raise ValueError(f"estimates for {sorted(estimates)}, expected {sorted(problem.params)}")
    out: dict[str, Tensor] = {}
    for name, value in problem.params.items():
        est = estimates[name]
        expected = (n, *value.shape)
        if tuple(est.shape) != expected:
            raise ValueError(f"estimates[{name!r}] has shape {tuple(est.shape)}, not {expected}")
        if est.dtype != problem.dtype or est.device != problem.device:
            raise ValueError(
                f"estimates[{name!r}] is {est.dtype} on {est.device}, "
                f"not {problem.dtype} on {problem.device}"
            )
        out[name] = est.detach()
    return out
