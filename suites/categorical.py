"""Categorical suite: one-hot z_i ~ OneHotCategorical(logits_i) in `dim` independent coordinates,
each over `categories` classes; the gradient is taken with respect to the logits [dim, C].

Cost: f(z) = sum_i (z_i . v - t)^2 with v = linspace(0, 1, C), i.e. a class value v_c per class.
On one-hot z it is sum_i g(c_i), g(c) = (v_c - t)^2; on the simplex (the Gumbel-softmax / Concrete
relaxation) z_i . v is a convex combination of class values, and f is quadratic, not linear, in
z: so straight-through and Gumbel-softmax estimates are biased (they would be unbiased for an f
linear in z, whose relaxed and discrete expectations agree).

Closed form (derived by hand, checked against sympy and enumeration in
tests/test_suites_discrete.py). With p_i = softmax(logits_i) and g_c = (v_c - t)^2,

    E[f]                 = sum_i sum_c p_ic g_c
    d E[f] / d logit_ik  = p_ik (g_k - sum_c p_ic g_c)     (d p_c / d l_k = p_c (1[c=k] - p_k))
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import OneHotCategorical

from gradbench.core.capabilities import DifferentiableCost, RelaxedCost, SeparableCost
from gradbench.core.params import at_least, finite
from gradbench.core.problem import Problem
from gradbench.core.suite import Setting, register_suite


def class_values(categories: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float64) -> Tensor:
    """v = linspace(0, 1, C): the value z . v that the cost compares with t."""
    return torch.linspace(0, 1, categories, device=device, dtype=dtype)


def base_logits(scale: float, categories: int, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float64) -> Tensor:
    """scale * linspace(-1, 1, C): class probabilities rise with the class value, more steeply
    for a larger scale (scale = 0 is uniform)."""
    return scale * torch.linspace(-1, 1, categories, device=device, dtype=dtype)


def categorical_gradient(logits: Tensor, t: float) -> Tensor:
    """d/dlogits sum_i E[(z_i . v - t)^2] = p (g - <p, g>) row by row, for logits [..., C]."""
    p = torch.softmax(logits, dim=-1)
    g = (class_values(logits.shape[-1], logits.device, logits.dtype) - t) ** 2
    return p * (g - (p * g).sum(-1, keepdim=True))


def _one_hot(logits: Tensor) -> OneHotCategorical:
    return OneHotCategorical(logits=logits)


# Default grid (8 cells). C = 3 and 10 classes; dim = 1 and 4 coordinates (4 x 10 classes is
# 10^4 joint states, still enumerable, as the tests do). scale = 1 keeps every class reasonably
# likely (p = 0.09 .. 0.67 at C = 3, 0.03 .. 0.22 at C = 10); scale = 3 makes the low classes
# rare (p_0 = 0.0024 at C = 3, 0.0012 at C = 10): their logit gradients are tiny (down to 1e-5)
# while score-function terms for them are large when seen, which is seldom. t = 0.45 sits between
# class values, so g_c = (v_c - t)^2 differs across classes and no gradient entry is exactly 0.
# 10,000 estimates per cell: relative SE of the variance ~sqrt(2 / n) = 1.4%; at most 4e5
# coordinate estimates per cell.
@register_suite(
    "categorical",
    offers=(SeparableCost, DifferentiableCost, RelaxedCost),
    settings=(
        Setting("categories", int, (3, 10), "classes per coordinate (C)", at_least(2)),
        Setting("dim", int, (1, 4), "number of independent one-hot coordinates", at_least(1)),
        Setting("scale", float, (1.0, 3.0), "logits = scale * linspace(-1, 1, C)", finite),
        Setting("t", float, (0.45,), "target, f = sum_i (z_i . v - t)^2, v = linspace(0, 1, C)",
                finite),
    ),
    samples=10_000,
)
def categorical(
    categories: int, dim: int, scale: float, t: float, *, device: torch.device,
    dtype: torch.dtype,
) -> Problem:
    """f(z) = sum_i (z_i . v - t)^2, z_i ~ OneHotCategorical(logits): non-linear on the simplex."""
    values = class_values(categories, device, dtype)

    def terms(z: Tensor, params: object = None) -> Tensor:
        # z [n, dim, C] one-hot or on the simplex -> [n, dim]; .to lets other dtypes through.
        return (z @ values.to(dtype=z.dtype, device=z.device) - t) ** 2

    def cost(z: Tensor, params: object = None) -> Tensor:
        return terms(z).sum(dim=-1)

    logits = base_logits(scale, categories, device, dtype).expand(dim, categories).contiguous()
    # Truth in float64 whatever the estimators' dtype, then converted.
    grad = categorical_gradient(base_logits(scale, categories).expand(dim, categories), t)
    return Problem(
        params={"logits": logits},
        distribution=_one_hot,
        cost=cost,
        capabilities=(SeparableCost(terms), DifferentiableCost(), RelaxedCost()),
        exact_gradient={"logits": grad.to(device=device, dtype=dtype).contiguous()},
        truth_method="analytic",
        settings={"categories": categories, "dim": dim, "scale": scale, "t": t},
    )
