"""Exact expectations over small discrete supports: sum_z q(z) f(z), differentiable in the
parameters, so the exact gradient is one autograd call. Used by suites (ground truth) and by the
`exact` estimator alike."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradbench.core.problem import Problem

# 2^16 joint states: enough for 16 Bernoulli coordinates; beyond that enumeration explodes.
MAX_STATES = 1 << 16


def support_size(problem: Problem) -> int | None:
    """Number of joint states of q, or None when q has no finite enumerable support."""
    q = problem.q()
    if not q.has_enumerate_support:
        return None
    per_coordinate = q.enumerate_support(expand=False).shape[0]
    return per_coordinate ** math.prod(q.batch_shape)


def enumeration_refusal(problem: Problem, limit: int = MAX_STATES) -> str | None:
    """Why exact enumeration is not possible for this problem, or None when it is."""
    size = support_size(problem)
    if size is None:
        return f"{type(problem.q()).__name__} has no finite support to enumerate"
    if size > limit:
        exponent = math.log2(size)
        return (f"enumeration would visit 2^{exponent:.0f} joint states (limit 2^"
                f"{int(math.log2(limit))}); use fewer coordinates or an unbiased estimator")
    return None


def joint_support(problem: Problem) -> Tensor:
    """Every joint state of q: [S, *sample_shape]. Coordinates (q's batch dims) vary jointly."""
    q = problem.q()
    values = q.enumerate_support(expand=False)  # [K, 1, ..., 1, *event]
    per_coordinate = values.shape[0]
    event = q.event_shape
    values = values.reshape(per_coordinate, *event)
    coords = math.prod(q.batch_shape)
    index = torch.arange(per_coordinate, device=values.device)
    grid = (torch.cartesian_prod(*[index] * coords) if coords > 1 else index[:, None])
    states = values[grid]  # [S, coords, *event]
    return states.reshape(grid.shape[0], *q.batch_shape, *event)


def exact_expectation(problem: Problem, params: dict[str, Tensor] | None = None) -> Tensor:
    """E_q[f] by enumeration, differentiable in `params` (default: the problem's own)."""
    reason = enumeration_refusal(problem)
    if reason is not None:
        raise ValueError(reason)
    states = joint_support(problem)
    params = params if params is not None else problem.params
    q = problem.distribution(**params)
    log_q = q.log_prob(states).reshape(states.shape[0], -1).sum(-1)
    # The cost sees the same parameters, so a direct dependence on them is differentiated too.
    return (log_q.exp() * problem.cost(states, params)).sum()


def exact_gradient(problem: Problem) -> dict[str, Tensor]:
    """The exact gradient of E_q[f] with respect to every parameter, by enumeration (float64)."""
    leaves = {k: v.detach().to(torch.float64).requires_grad_(True)
              for k, v in problem.params.items()}
    value = exact_expectation(problem, leaves)
    grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
    return {name: (torch.zeros_like(leaf) if g is None else g).to(problem.params[name].dtype)
            for (name, leaf), g in zip(leaves.items(), grads, strict=True)}
