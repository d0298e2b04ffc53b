"""Exact expectations over small discrete supports: sum_z q(z) f(z), differentiable in the
parameters, so the exact gradient is one autograd call. Used by suites (ground truth) and by the
`exact` estimator alike.

A problem that offers BlockSeparableCost (q and f split into independent blocks, one per data
point of a minibatch) is enumerated one block's states at a time: E_q[f] = sum_n E_{q_n}[f_n],
so 2^K states serve B data points with K binary latents each, where the joint has 2^(B K). Every
block sees the same list of states (z[s, n] = state s for all n), so one batched cost call per
chunk of states evaluates all blocks at once; the limit MAX_STATES then applies per block."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from gradbench.core.capabilities import BlockSeparableCost
from gradbench.core.problem import Problem

# 2^16 joint states: enough for 16 Bernoulli coordinates; beyond that enumeration explodes.
MAX_STATES = 1 << 16
# Elements (states x blocks x coordinates) of one chunk of a block enumeration: bounds the
# memory of the cost's intermediates (e.g. a decoder's [states, blocks, pixels]) to tens of MB.
_BLOCK_CHUNK_ELEMENTS = 1 << 18


def blocks(problem: Problem) -> int:
    """Independent blocks enumeration treats one at a time: the size of q's first batch
    dimension when the problem offers BlockSeparableCost, else 1 (the whole joint)."""
    if problem.offers(BlockSeparableCost) is None:
        return 1
    shape = problem.q().batch_shape
    return shape[0] if len(shape) >= 1 else 1


def support_size(problem: Problem) -> int | None:
    """Number of joint states of q (of one block, for a BlockSeparableCost), or None when q has
    no finite enumerable support."""
    q = problem.q()
    if not q.has_enumerate_support:
        return None
    per_coordinate = q.enumerate_support(expand=False).shape[0]
    return per_coordinate ** (math.prod(q.batch_shape) // blocks(problem))


def enumeration_refusal(problem: Problem, limit: int = MAX_STATES) -> str | None:
    """Why exact enumeration is not possible for this problem, or None when it is."""
    size = support_size(problem)
    if size is None:
        return f"{type(problem.q()).__name__} has no finite support to enumerate"
    if size > limit:
        exponent = math.log2(size)
        what = "states per block" if blocks(problem) > 1 else "joint states"
        return (f"enumeration would visit 2^{exponent:.0f} {what} (limit 2^"
                f"{int(math.log2(limit))}); use fewer coordinates or an unbiased estimator")
    return None


def joint_support(problem: Problem) -> Tensor:
    """Every joint state of q: [S, *sample_shape]. Coordinates (q's batch dims) vary jointly."""
    return _states(problem, problem.q().batch_shape)


def block_support(problem: Problem) -> Tensor:
    """Every state of one block: [S, *batch_shape[1:], *event] (the joint without blocks)."""
    shape = problem.q().batch_shape
    return _states(problem, shape[1:] if blocks(problem) > 1 else shape)


def _states(problem: Problem, shape: torch.Size) -> Tensor:
    """Every joint state of q's coordinates over batch shape `shape`: [S, *shape, *event]."""
    q = problem.q()
    values = q.enumerate_support(expand=False)  # [K, 1, ..., 1, *event]
    per_coordinate = values.shape[0]
    event = q.event_shape
    values = values.reshape(per_coordinate, *event)
    coords = math.prod(shape)
    index = torch.arange(per_coordinate, device=values.device)
    grid = (torch.cartesian_prod(*[index] * coords) if coords > 1 else index[:, None])
    states = values[grid]  # [S, coords, *event]
    return states.reshape(grid.shape[0], *shape, *event)


def exact_expectation(problem: Problem, params: dict[str, Tensor] | None = None) -> Tensor:
    """E_q[f] by enumeration, differentiable in `params` (default: the problem's own)."""
    reason = enumeration_refusal(problem)
    if reason is not None:
        raise ValueError(reason)
    params = params if params is not None else problem.params
    if blocks(problem) > 1:
        return sum(_block_chunks(problem, params), torch.zeros((), dtype=problem.dtype,
                                                                device=problem.device))
    states = joint_support(problem)
    q = problem.distribution(**params)
    log_q = q.log_prob(states).reshape(states.shape[0], -1).sum(-1)
    # The cost sees the same parameters, so a direct dependence on them is differentiated too.
    return (log_q.exp() * problem.cost(states, params)).sum()


def exact_gradient(problem: Problem) -> dict[str, Tensor]:
    """The exact gradient of E_q[f] with respect to every parameter, by enumeration (float64)."""
    leaves = {k: v.detach().to(torch.float64).requires_grad_(True)
              for k, v in problem.params.items()}
    if blocks(problem) > 1:
        reason = enumeration_refusal(problem)
        if reason is not None:
            raise ValueError(reason)
        # One backward pass per chunk of states: the graph of a whole block enumeration (every
        # state for every data point) would not fit in memory.
        totals = [torch.zeros_like(leaf) for leaf in leaves.values()]
        for value in _block_chunks(problem, leaves):
            grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
            for total, g in zip(totals, grads, strict=True):
                if g is not None:
                    total += g
        return {name: total.to(problem.params[name].dtype)
                for name, total in zip(leaves, totals, strict=True)}
    value = exact_expectation(problem, leaves)
    grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
    return {name: (torch.zeros_like(leaf) if g is None else g).to(problem.params[name].dtype)
            for (name, leaf), g in zip(leaves.items(), grads, strict=True)}


def _block_chunks(problem: Problem, params: dict[str, Tensor]) -> Iterator[Tensor]:
    """sum_n sum_{s in chunk} q_n(s) f_n(s) for successive chunks of one block's states: their
    sum is E_q[f] (BlockSeparableCost), each differentiable in `params`."""
    split = problem.offers(BlockSeparableCost)
    assert split is not None
    states = block_support(problem).to(next(iter(params.values())).dtype)
    count = blocks(problem)
    per_state = count * max(1, states[0].numel())
    chunk = max(1, _BLOCK_CHUNK_ELEMENTS // per_state)
    for start in range(0, states.shape[0], chunk):
        part = states[start:start + chunk]
        z = part.unsqueeze(1).expand(part.shape[0], count, *part.shape[1:])  # [s, blocks, ...]
        # q is rebuilt per chunk: a caller may run a backward pass per chunk, which frees the
        # graph from the parameters to q's own tensors.
        q = problem.distribution(**params)
        log_q = q.log_prob(z).reshape(part.shape[0], count, -1).sum(-1)
        yield (log_q.exp() * split.terms(z, params)).sum()
