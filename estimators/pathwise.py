"""Pathwise (reparameterization) gradient: differentiate f through z = g(theta, eps)."""

from __future__ import annotations

import torch
from torch import Tensor

from gradbench.core.autograd import check_estimates, per_sample_grad
from gradbench.core.capabilities import CostGradient, GaussianLinearLayer
from gradbench.core.estimator import register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import differentiable_cost, reparameterizable
from gradbench.estimators._fused import own_normal
from gradbench.estimators._linear_layer import (
    Layer,
    concatenated,
    estimate_blocks,
    head_gradient,
    layer_of,
    to_params,
    working_memory,
)


@register_estimator(
    "pathwise",
    family="pathwise",
    unbiased=True,
    requires=(reparameterizable, differentiable_cost),
    evals=1,
    # Only a Gaussian linear layer's shared-sample path has per-row temporaries (A, dA, X W^T);
    # elsewhere this is 1, the default of a one-evaluation estimator.
    memory=working_memory(lambda width, out: 3 * out),
)
def pathwise(problem: Problem, n: int) -> dict[str, Tensor]:
    """Reparameterization gradient: grad_theta f(z(theta, eps)) with z = q.rsample()."""
    if problem.offers(GaussianLinearLayer) is not None:
        return check_estimates(problem, n, shared_weight_sample(problem, n))
    names = _normal_loc_scale(problem)
    if names is not None:
        return check_estimates(problem, n, _fused_normal(problem, n, *names))
    params = problem.expand_params(n, requires_grad=True)
    # Per-sample parameters: sample i depends only on row i, so one backward pass gives
    # row i = grad_theta f(z_i), an unbiased estimate when f is differentiable a.e.
    # A cost that depends on theta directly contributes its direct term through `params` too.
    z = problem.distribution(**params).rsample()
    return check_estimates(problem, n, per_sample_grad(problem.cost(z, params), params))


def shared_weight_sample(problem: Problem, n: int) -> dict[str, Tensor]:
    """The same estimator on a Gaussian linear layer, by batched matmuls instead of autograd
    through n cloned weight matrices: one weight sample W_i = M_w + S_w * eps_i (and bias) per
    estimate, shared by every row of the minibatch, as the tutorials' layer draws it.

    With A_i = X W_i^T + b_i and dA_i = d head / dA_i: df/dW_i = dA_i^T X, df/db_i = sum_n dA_in,
    so the gradient in the means is (dA_i^T X, sum_n dA_in) and in the standard deviations the
    same times eps_i (dW/dS_w = eps); the chain rule maps both to the parameters. eps is drawn
    as Normal.rsample draws it for q over z = (W.flatten(), b), so with the same generator
    state a suite laid out that way gets the autograd path's draws.
    """
    layer = layer_of(problem)
    eps_w, eps_b = layer.noise(n)  # all at once: the autograd path's draws
    # Blocks of estimates whose [k, out, in] temporaries stay in cache (for a 784 x 256 layer,
    # one estimate at a time; for a small layer, the whole chunk).
    parts = [_shared_block(problem, layer, eps_w[rows], None if eps_b is None else eps_b[rows])
             for rows in estimate_blocks(n, eps_w[0].numel())]
    return concatenated(parts)


def _shared_block(problem: Problem, layer: Layer, eps_w: Tensor, eps_b: Tensor | None
                  ) -> dict[str, Tensor]:
    n, out, width = eps_w.shape
    weight = eps_w * layer.w_std
    weight += layer.w_mean  # [n, out, in]
    # All n weight matrices in one GEMM: [n out, in] x [in, B] -> [n, out, B].
    pre = (weight.view(-1, width) @ layer.inputs.T).view(n, out, -1)
    del weight
    pre = pre.transpose(1, 2)
    if eps_b is not None:
        pre = pre + (layer.b_mean + layer.b_std * eps_b).unsqueeze(1)
    d_pre, direct = head_gradient(problem, layer, pre)
    g_w = layer.weight_gradient(d_pre)
    g_b = d_pre.sum(1) if eps_b is not None else None
    # d/dS_w = g_w * eps (eps's block is not needed after this; a copy, not in place, since
    # the block is a view of the chunk's draws).
    g_w_std = eps_w * g_w
    g_b_std = eps_b * g_b if eps_b is not None else None
    return to_params(problem, layer, g_w, g_w_std, g_b, g_b_std, direct)


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


def _normal_loc_scale(problem: Problem) -> tuple[str, str] | None:
    """Names of q's loc and scale when q is exactly a Normal of the problem's own two parameters,
    f does not depend on them (_fused.own_normal) and the problem offers CostGradient; else
    None."""
    return own_normal(problem) if problem.offers(CostGradient) is not None else None
