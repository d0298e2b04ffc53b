"""Pathwise (reparameterization) gradient: differentiate f through z = g(theta, eps)."""

from __future__ import annotations

import weakref

import torch
from torch import Tensor
from torch.distributions import Normal

from gradbench.core.autograd import check_estimates, per_sample_grad
from gradbench.core.capabilities import CostGradient
from gradbench.core.estimator import register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import differentiable_cost, reparameterizable


@register_estimator(
    "pathwise",
    family="pathwise",
    unbiased=True,
    requires=(reparameterizable, differentiable_cost),
    evals=1,
)
def pathwise(problem: Problem, n: int) -> dict[str, Tensor]:
    """Reparameterization gradient: grad_theta f(z(theta, eps)) with z = q.rsample()."""
    names = _normal_loc_scale(problem)
    if names is not None:
        return check_estimates(problem, n, _fused_normal(problem, n, *names))
    params = problem.expand_params(n, requires_grad=True)
    # Per-sample parameters: sample i depends only on row i, so one backward pass gives
    # row i = grad_theta f(z_i), an unbiased estimate when f is differentiable a.e.
    # A cost that depends on theta directly contributes its direct term through `params` too.
    z = problem.distribution(**params).rsample()
    return check_estimates(problem, n, per_sample_grad(problem.cost(z, params), params))


def _fused_normal(problem: Problem, n: int, loc_name: str, scale_name: str) -> dict[str, Tensor]:
    """The same estimates without autograd, for q = Normal(loc, scale) with loc and scale the
    problem's own parameter tensors and a closed-form df/dz (the CostGradient capability).

    z = loc + eps * scale, so d f(z)/d loc = g and d f(z)/d scale = g * eps with g = df/dz at z.
    eps is drawn exactly as Normal.rsample draws it for the per-sample batch [n, *shape] (an
    empty tensor filled by normal_), so with the same generator state the draws, z and the
    estimates equal the autograd path's (up to the rounding of g's formula): the same
    distribution, at the cost of a few elementwise passes instead of a graph and a backward.
    """
    loc, scale = problem.params[loc_name], problem.params[scale_name]
    eps = torch.empty((n, *loc.shape), dtype=loc.dtype, device=loc.device).normal_()
    z = eps * scale
    z += loc  # in place: the same rounding as loc + eps * scale, one temporary fewer
    closed_form = problem.offers(CostGradient)
    assert closed_form is not None
    g = closed_form.grad(z, problem.params)
    return {loc_name: g, scale_name: g * eps}


# Problem -> (loc name, scale name) or None; weak keys: a cell's Problem is built per cell.
_FUSABLE: weakref.WeakKeyDictionary[Problem, tuple[str, str] | None] = (
    weakref.WeakKeyDictionary()
)


def _normal_loc_scale(problem: Problem) -> tuple[str, str] | None:
    """Names of the two parameters that are q's loc and scale when q is exactly a Normal built
    from them as they are (the same tensor objects: no transform between, e.g. no exp of a
    log-scale) and the problem offers CostGradient; else None. Decided once per problem: building
    q per chunk would cost its argument validation (a host round-trip on a GPU)."""
    if problem.offers(CostGradient) is None or problem.cost_depends_on_params():
        return None
    if problem in _FUSABLE:
        return _FUSABLE[problem]
    names = None
    q = problem.q()
    if type(q) is Normal and len(problem.params) == 2:
        by_id = {id(value): name for name, value in problem.params.items()}
        loc, scale = by_id.get(id(q.loc)), by_id.get(id(q.scale))
        if loc is not None and scale is not None and loc != scale:
            names = (loc, scale)
    _FUSABLE[problem] = names
    return names
