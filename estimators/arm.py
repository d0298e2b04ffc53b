"""ARM, augment-REINFORCE-merge (Yin & Zhou 2019), for Bernoulli(logits th), dim coordinates.

With u ~ U(0, 1)^dim, one u shared by two antithetic draws,

    g_i = (f(1[u > sigma(-th)]) - f(1[u < sigma(th)])) (u_i - 1/2)

is unbiased for dE[f(b)]/dth_i. One coordinate, p = sigma(th) < 1/2 (p > 1/2 is symmetric): the
draws differ only when u < p (then (f0 - f1)(u - 1/2)) or u > 1 - p (then (f1 - f0)(u - 1/2)),
so E[g] = (f1 - f0) [int_{1-p}^1 (u - 1/2) du - int_0^p (u - 1/2) du]
        = (f1 - f0) [p(1 - p)/2 + p(1 - p)/2] = (f1 - f0) p (1 - p) = dE[f]/dth.
In dim coordinates the same holds coordinate-wise given the others (Yin & Zhou, Theorem 1).
Two evaluations of f per estimate. Gradients w.r.t. th map to the problem's parameters (th or p)
by the chain rule.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradbench.core.autograd import check_estimates, native_to_params, repeat_params
from gradbench.core.estimator import register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import bernoulli
from gradbench.estimators._relaxations import open_uniform


def antithetic_costs(problem: Problem, u: Tensor, logits: Tensor, params: dict[str, Tensor]
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """b = 1[u < sigma(th)], b~ = 1[u > sigma(-th)] (= 1[1 - u < sigma(th)]), f(b~) - f(b), and
    (f(b) + f(b~)) / 2 with its graph: both are Bernoulli(sigma(th)) draws, so its gradient
    estimates the cost's direct term E[grad_theta f_theta(b)] (0 for f of b alone).

    One batched cost call with 2n rows.
    """
    n = u.shape[0]
    b = (u < torch.sigmoid(logits)).to(u.dtype)
    b_anti = (u > torch.sigmoid(-logits)).to(u.dtype)
    f = problem.cost(torch.cat([b, b_anti]), repeat_params(params, 2))
    diff = (f[n:] - f[:n]).detach()
    return b, b_anti, diff, 0.5 * (f[:n] + f[n:])


@register_estimator("arm", family="arm", unbiased=True, requires=(bernoulli,), evals=2)
def arm(problem: Problem, n: int) -> dict[str, Tensor]:
    """ARM (Yin & Zhou 2019): (f(1[u > sigma(-th)]) - f(1[u < sigma(th)])) (u - 1/2), 2 evals."""
    params = problem.expand_params(n, requires_grad=True)
    q = problem.distribution(**params)
    logits = q.logits.detach()
    u = open_uniform(logits.shape, logits)
    _, _, diff, direct = antithetic_costs(problem, u, logits, params)  # diff = f(b~) - f(b)
    grad = diff.reshape(n, *[1] * (logits.dim() - 1)) * (u - 0.5)
    return check_estimates(problem, n, native_to_params(q, {"logits": grad}, params, direct))
