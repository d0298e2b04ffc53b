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

from typing import Any

import torch
from torch import Tensor

from gradbench.core.autograd import check_estimates, native_to_params, repeat_params
from gradbench.core.estimator import register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import bernoulli
from gradbench.estimators._fused import own_bernoulli_logits
from gradbench.estimators._relaxations import open_uniform


def antithetic_costs(problem: Problem, u: Tensor, logits: Tensor,
                     params: dict[str, Tensor] | None = None
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """b = 1[u < sigma(th)], b~ = 1[u > sigma(-th)] (= 1[1 - u < sigma(th)]), f(b~) - f(b), and
    (f(b) + f(b~)) / 2 with its graph in the per-sample `params`: both are Bernoulli(sigma(th))
    draws, so its gradient estimates the cost's direct term E[grad_theta f_theta(b)] (0 for f of
    b alone). Without `params` (a cost independent of them) f sees the problem's own and the
    direct term is None.

    One batched cost call with 2n rows.
    """
    n = u.shape[0]
    b = (u < torch.sigmoid(logits)).to(u.dtype)
    b_anti = (u > torch.sigmoid(-logits)).to(u.dtype)
    states = torch.cat([b, b_anti])
    if params is None:
        with torch.no_grad():
            f = problem.cost(states, problem.params)
        return b, b_anti, f[n:] - f[:n], None
    f = problem.cost(states, repeat_params(params, 2))
    diff = (f[n:] - f[:n]).detach()
    return b, b_anti, diff, 0.5 * (f[:n] + f[n:])


def antithetic_draws(problem: Problem, n: int
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None, Any]:
    """The shared start of ARM and DisARM: (logits [n, ...], u, b, b~, f(b~) - f(b), the direct
    term) and a function mapping logits-gradients to the problem's parameters. Where q is
    Bernoulli(logits) of the problem's own parameter and f does not depend on it, no parameter
    copies and no chain rule (the same draws either way)."""
    name = own_bernoulli_logits(problem)
    if name is not None:
        own = problem.params[name]
        logits = own.expand(n, *own.shape)
        u = open_uniform(logits.shape, logits)
        b, b_anti, diff, direct = antithetic_costs(problem, u, logits)
        return logits, u, b, b_anti, diff, direct, lambda grad: {name: grad}
    params = problem.expand_params(n, requires_grad=True)
    q = problem.distribution(**params)
    logits = q.logits.detach()
    u = open_uniform(logits.shape, logits)
    b, b_anti, diff, direct = antithetic_costs(problem, u, logits, params)
    return logits, u, b, b_anti, diff, direct, (
        lambda grad: native_to_params(q, {"logits": grad}, params, direct))


@register_estimator("arm", family="arm", unbiased=True, requires=(bernoulli,), evals=2)
def arm(problem: Problem, n: int) -> dict[str, Tensor]:
    """ARM (Yin & Zhou 2019): (f(1[u > sigma(-th)]) - f(1[u < sigma(th)])) (u - 1/2), 2 evals."""
    logits, u, _, _, diff, _, to_params = antithetic_draws(problem, n)  # diff = f(b~) - f(b)
    grad = diff.reshape(n, *[1] * (logits.dim() - 1)) * (u - 0.5)
    return check_estimates(problem, n, to_params(grad))
