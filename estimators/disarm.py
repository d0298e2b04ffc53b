"""DisARM (Dong, Mnih & Tucker 2020): ARM Rao-Blackwellised over u given the antithetic pair.

b = 1[u < sigma(th)], b~ = 1[1 - u < sigma(th)], both Bernoulli(sigma(th)), and

    g_i = 1/2 (f(b) - f(b~)) (-1)^{b~_i} 1[b_i != b~_i] sigma(|th_i|)

(the paper's eq. for the multivariate case). Derivation, one coordinate, p = sigma(th) <= 1/2:
the pair differs iff u < p (b = 1, b~ = 0: g = (f1 - f0) sigma(|th|)/2) or u > 1 - p (b = 0,
b~ = 1: g = -(f0 - f1) sigma(|th|)/2), each with probability p, so E[g] = p (f1 - f0) (1 - p)
since sigma(|th|) = 1 - p; p > 1/2 is the mirror image. It equals E[g_ARM | b, b~]: never more
variance than ARM. Two evaluations of f per estimate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradbench.core.autograd import check_estimates
from gradbench.core.estimator import register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import bernoulli
from gradbench.estimators.arm import antithetic_draws


@register_estimator("disarm", family="arm", unbiased=True, requires=(bernoulli,), evals=2)
def disarm(problem: Problem, n: int) -> dict[str, Tensor]:
    """DisARM (Dong et al. 2020): 1/2 (f(b) - f(b~)) (-1)^b~ 1[b != b~] sigma(|th|), 2 evals."""
    logits, u, b, b_anti, diff, _, to_params = antithetic_draws(problem, n)  # f(b~) - f(b)
    weight = (1 - 2 * b_anti) * (b != b_anti).to(u.dtype) * torch.sigmoid(logits.abs())
    grad = -0.5 * diff.reshape(n, *[1] * (logits.dim() - 1)) * weight
    return check_estimates(problem, n, to_params(grad))
