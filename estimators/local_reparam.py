"""Local reparameterization (Kingma, Salimans & Welling 2015): sample each minibatch row's
pre-activations from their Gaussian instead of one weight matrix for the whole minibatch.

Under q (mean-field over W and b) the pre-activations of row n are independent Gaussians,
A_no ~ N(m_no, v_no) with m = X M_w^T + M_b and v = X^2 (S_w^2)^T + S_b^2, so
A_no = m_no + sqrt(v_no) zeta_no with zeta ~ N(0, 1) independent per row and output. When the
cost is a sum over rows of per-row terms (the GaussianLinearLayer contract), E[f] depends on q
only through these per-row marginals, so differentiating through this draw is unbiased; and
rows no longer share one weight draw, so the variance falls like 1 / B instead of staying put.

Gradients (dA = d head / dA, row i of the estimates from its own zeta_i), with
dA_no/dM_w[o, j] = x_nj, dA_no/dv_no = zeta_no / (2 sqrt(v_no)) and
dv_no/dS_w[o, j] = 2 x_nj^2 S_w[o, j]:

    d/dM_w = dA^T X,   d/dM_b = sum_n dA_n,
    d/dS_w = ((dA zeta / (2 sqrt v))^T X^2) * 2 S_w,   d/dS_b = sum_n (dA zeta / sqrt v)_n * S_b.

Two GEMMs per chunk of estimates ([n out, B] x [B, in]); m and v are computed once per chunk.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradbench.core.autograd import check_estimates
from gradbench.core.capabilities import GaussianLinearLayer
from gradbench.core.estimator import register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import Requirement
from gradbench.estimators._linear_layer import (
    head_gradient,
    layer_of,
    to_params,
    working_memory,
)


@register_estimator(
    "local-reparam",
    family="pathwise",
    unbiased=True,
    requires=(Requirement.offers(GaussianLinearLayer),),
    evals=1,
    memory=working_memory(lambda width, out: 4 * out),
)
def local_reparam(problem: Problem, n: int) -> dict[str, Tensor]:
    """Local reparameterization: per-row pre-activations A_n ~ N(x_n M^T + b, x_n^2 S^2 + s_b^2)."""
    layer = layer_of(problem)
    inputs = layer.inputs
    variance = inputs.square() @ layer.w_std.square().T  # [B, out]
    if layer.b_std is not None:
        variance = variance + layer.b_std.square()
    std = variance.sqrt()
    zeta = torch.empty((n, *std.shape), dtype=std.dtype, device=std.device).normal_()
    pre = layer.mean_pre_activations() + std * zeta
    d_pre, direct = head_gradient(problem, layer, pre)
    g_w_mean = layer.weight_gradient(d_pre)
    # d head / d std = dA zeta; d std / d v = 1 / (2 std): the gradient in v, in place in zeta.
    d_var = zeta.mul_(d_pre).div_(2 * std)
    g_w_std = layer.weight_gradient(d_var, inputs.square()).mul_(2 * layer.w_std)
    g_b_mean = g_b_std = None
    if layer.b_std is not None:
        g_b_mean = d_pre.sum(1)
        g_b_std = d_var.sum(1).mul_(2 * layer.b_std)
    return check_estimates(problem, n, to_params(problem, layer, g_w_mean, g_w_std, g_b_mean,
                                                 g_b_std, direct))
