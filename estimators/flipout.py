"""Flipout (Wen, Vicol, Ba, Tran & Grosse 2018): one shared weight perturbation per estimate,
decorrelated across the minibatch rows by random signs.

Per estimate, dW = S_w * eps (eps ~ N(0, I), shared by every row) and, for row n, random sign
vectors r_n in {-1, 1}^out and s_n in {-1, 1}^in: W_n = M_w + dW * (r_n s_n^T). The bias is the
layer's extra input column of ones, with its own sign t_n: b_n = M_b + (S_b * eps_b) * r_n t_n.
eps * (r_n s_n^T) is again N(0, I) (a sign flip of a symmetric variable), so each row sees
W_n ~ q, and its term's gradient through W_n is a pathwise gradient: the sum over rows is
unbiased for a cost that is a sum of per-row terms (the GaussianLinearLayer contract). The
signs make rows' perturbations nearly uncorrelated, so the variance falls with the batch.

In matrix form, A = X M_w^T + M_b + [((X * s) dW^T) + t dB^T] * r, and with dA = d head / dA,
dP = dA * r:

    d/dM_w = dA^T X,  d/dM_b = sum_n dA_n,
    d/dS_w = (dP^T (X * s)) * eps,  d/dS_b = (sum_n t_n dP_n) * eps_b.

Per chunk: one GEMM and two bmm ([n, B, in] x [n, in, out] and back).
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


def random_signs(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Independent fair signs in {-1, 1}, in `like`'s dtype and device: random_(2) draws 0 or 1
    uniformly (3x faster than bernoulli_(0.5) on the CPU, where signs are most of Flipout's
    work on a narrow layer with a long minibatch)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device).random_(2).mul_(2).sub_(1)


@register_estimator(
    "flipout",
    family="pathwise",
    unbiased=True,
    requires=(Requirement.offers(GaussianLinearLayer),),
    evals=1,
    memory=working_memory(lambda width, out: 2 * width + 3 * out),
)
def flipout(problem: Problem, n: int) -> dict[str, Tensor]:
    """Flipout: one weight perturbation per estimate, sign-flipped per row: W_n = M + dW * r s^T."""
    layer = layer_of(problem)
    inputs = layer.inputs
    batch, width = inputs.shape
    eps_w, eps_b = layer.noise(n)
    in_signs = random_signs((n, batch, width), inputs)
    out_signs = random_signs((n, batch, layer.out_features), inputs)
    signed_inputs = in_signs.mul_(inputs)  # X * s, [n, B, in]
    perturbation = torch.bmm(signed_inputs, (eps_w * layer.w_std).transpose(1, 2))
    bias_signs = None
    if eps_b is not None:
        bias_signs = random_signs((n, batch, 1), inputs)
        perturbation += bias_signs * (eps_b * layer.b_std).unsqueeze(1)
    pre = layer.mean_pre_activations() + perturbation.mul_(out_signs)
    d_pre, direct = head_gradient(problem, layer, pre)
    g_w_mean = layer.weight_gradient(d_pre)
    d_perturbation = out_signs.mul_(d_pre)  # dP = dA * r
    g_w_std = layer.weight_gradient(d_perturbation, signed_inputs).mul_(eps_w)
    g_b_mean = g_b_std = None
    if eps_b is not None:
        g_b_mean = d_pre.sum(1)
        g_b_std = (d_perturbation * bias_signs).sum(1).mul_(eps_b)
    return check_estimates(problem, n, to_params(problem, layer, g_w_mean, g_w_std, g_b_mean,
                                                 g_b_std, direct))
