"""Enumeration per block (BlockSeparableCost): E_q[f] = sum_n E_{q_n}[f_n] visits one block's
states instead of the joint's, and must give the joint enumeration's answer exactly.

The toy problem: b ~ Bernoulli(logits) with batch shape [3 blocks, 2 coordinates] and
f(b) = sum_n f_n(b_n), f_n(b_n) = (w_n . b_n - t_n)^2 + theta_n0 b_n1 (coupled within a block,
and depending on the parameters directly). The joint has 2^6 = 64 states, a block 2^2 = 4.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import Tensor
from torch.distributions import Bernoulli

from gradbench.core import enumeration
from gradbench.core.capabilities import BlockSeparableCost, RelaxedCost
from gradbench.core.problem import Problem
from gradbench.estimators import get_estimator

F64 = torch.float64
W = torch.tensor([[1.0, -2.0], [0.5, 1.5], [-1.0, 0.3]], dtype=F64)
T = torch.tensor([0.3, -0.2, 1.1], dtype=F64)


def terms(b: Tensor, params) -> Tensor:
    logits = params["logits"]
    return (b * W).sum(-1).sub(T).square() + logits[..., 0] * b[..., 1]


def toy(blocked: bool = True) -> Problem:
    logits = torch.tensor([[0.4, -1.0], [2.0, 0.1], [-0.7, 0.9]], dtype=F64)
    caps = (RelaxedCost(), BlockSeparableCost(terms)) if blocked else (RelaxedCost(),)
    return Problem(params={"logits": logits},
                   distribution=lambda logits: Bernoulli(logits=logits),
                   cost=lambda b, params: terms(b, params).sum(-1), capabilities=caps)


def brute_force_expectation(logits: Tensor) -> Tensor:
    """sum over the 64 joint states, written out with itertools-free bit arithmetic."""
    total = torch.zeros((), dtype=F64)
    p = torch.sigmoid(logits)
    for code in range(64):
        b = torch.tensor([(code >> i) & 1 for i in range(6)], dtype=F64).reshape(3, 2)
        prob = torch.prod(torch.where(b > 0, p, 1 - p))
        total = total + prob * terms(b, {"logits": logits}).sum()
    return total


def test_blocks_and_support_size() -> None:
    assert enumeration.blocks(toy()) == 3
    assert enumeration.support_size(toy()) == 4
    assert enumeration.blocks(toy(blocked=False)) == 1
    assert enumeration.support_size(toy(blocked=False)) == 64
    assert enumeration.block_support(toy()).shape == (4, 2)


def test_block_enumeration_equals_the_joint_and_brute_force() -> None:
    blocked, joint = toy(), toy(blocked=False)
    value = enumeration.exact_expectation(blocked)
    assert value.item() == pytest.approx(enumeration.exact_expectation(joint).item(), rel=1e-13)
    logits = blocked.params["logits"].clone().requires_grad_(True)
    brute = brute_force_expectation(logits)
    assert value.item() == pytest.approx(brute.item(), rel=1e-13)
    (expected,) = torch.autograd.grad(brute, logits)
    for problem in (blocked, joint):
        got = enumeration.exact_gradient(problem)["logits"]
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_chunked_block_gradient_matches_one_chunk(monkeypatch) -> None:
    whole = enumeration.exact_gradient(toy())["logits"]
    monkeypatch.setattr(enumeration, "_BLOCK_CHUNK_ELEMENTS", 1)  # one state per chunk
    torch.testing.assert_close(enumeration.exact_gradient(toy())["logits"], whole,
                               rtol=1e-13, atol=1e-15)


def test_the_limit_applies_per_block() -> None:
    wide = dataclasses.replace(toy(), params={"logits": torch.zeros(2, 17, dtype=F64)})
    reason = enumeration.enumeration_refusal(wide)
    assert reason is not None and "2^17 states per block" in reason
    joint = dataclasses.replace(toy(blocked=False), params={"logits": torch.zeros(3, 6)})
    reason = enumeration.enumeration_refusal(joint)
    assert reason is not None and "2^18 joint states" in reason


def test_exact_estimator_uses_blocks_and_counts_block_states() -> None:
    exact = get_estimator("exact")
    problem = toy()
    assert exact.applicability(problem) is None
    assert exact.evals_per_estimate(problem, {}) == 4
    out = exact.fn(problem, 5)["logits"]
    expected = enumeration.exact_gradient(toy(blocked=False))["logits"]
    torch.testing.assert_close(out, expected.expand(5, 3, 2), rtol=1e-12, atol=1e-14)
    assert math.isfinite(float(out.sum()))
