"""Gauss-Hermite quadrature for Gaussian problems with separable costs: the truth route for
suites whose E[f] has no closed form (truth_method="quadrature").

For z_i ~ N(mu_i, sigma_i^2) and f(z) = sum_i f_i(z_i),

    E[f] = sum_i E[f_i(z_i)] ~= sum_i sum_j (w_j / sqrt(pi)) f_i(mu_i + sqrt(2) sigma_i x_j)

with (x_j, w_j) the Gauss-Hermite rule for weight exp(-x^2). The sum is an ordinary function of
(mu, sigma), so autograd through it gives the gradient: the rule differentiated, which is the
same as the rule applied to d/dtheta of the integrand.

The rule is exact for polynomials f_i of degree <= 2 nodes - 1 and converges fast for smooth
f_i that vary on scales >= sigma. It is poor when f_i is sharply peaked relative to sigma (node
spacing near the centre is about pi / sqrt(2 nodes) in units of sqrt(2) sigma) or not smooth:
a suite using this route should check that doubling `nodes` leaves its truth unchanged.
numpy's hermgauss overflows beyond about 370 nodes; asking for more raises ValueError.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Normal

from gradbench.core.capabilities import SeparableCost
from gradbench.core.problem import Problem


@functools.lru_cache(maxsize=32)
def _rule(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and probability weights (w / sqrt(pi), summing to 1) of the n-node rule."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow is reported below instead
        x, w = np.polynomial.hermite.hermgauss(nodes)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(w))):
        raise ValueError(f"numpy's hermgauss overflows at {nodes} nodes; use at most about 370")
    x.flags.writeable = False  # cached: nobody may change them
    w = w / math.sqrt(math.pi)
    w.flags.writeable = False
    return x, w


def _expectation_and_leaves(problem: Problem, nodes: int) -> tuple[Tensor, dict[str, Tensor]]:
    """E[f] in float64 on the problem's device, as a function of fresh float64 parameter leaves."""
    if nodes < 1:
        raise ValueError(f"Gauss-Hermite needs nodes >= 1, not {nodes}")
    separable = problem.offers(SeparableCost)
    if separable is None:
        raise ValueError(
            "Gauss-Hermite quadrature needs a separable cost: this problem offers no "
            "SeparableCost (per-coordinate f_i), so E[f] would be a dim-dimensional integral"
        )
    device = problem.device
    # Fresh float64 leaves: the truth should not inherit float32 rounding from the problem.
    leaves = {
        name: value.detach().to(dtype=torch.float64).requires_grad_(True)
        for name, value in problem.params.items()
    }
    q = problem.distribution(**leaves)
    if not isinstance(q, Normal):
        raise ValueError(
            f"Gauss-Hermite quadrature needs a Normal distribution, not {type(q).__name__}"
        )
    # Read loc/scale off the distribution rather than assuming params named mu/sigma, so suites
    # that parameterise differently (e.g. log-sigma) get their gradient through the chain rule.
    loc, scale = q.loc, q.scale
    x, w = _rule(nodes)
    x_t = torch.tensor(x, dtype=torch.float64, device=device)
    w_t = torch.tensor(w, dtype=torch.float64, device=device)
    shape = (nodes,) + (1,) * loc.dim()
    z = loc.unsqueeze(0) + math.sqrt(2.0) * scale.unsqueeze(0) * x_t.reshape(shape)
    terms = separable.terms(z, leaves)
    if terms.shape != z.shape:
        raise ValueError(
            f"SeparableCost.terms returned shape {tuple(terms.shape)} for samples "
            f"{tuple(z.shape)}; "
            "it must return one term per coordinate"
        )
    expectation = (w_t.reshape(shape) * terms).sum()
    return expectation, leaves


def gauss_hermite_expectation(problem: Problem, nodes: int = 64) -> Tensor:
    """E[f] under the problem's Normal q by Gauss-Hermite quadrature (a float64 scalar)."""
    expectation, _ = _expectation_and_leaves(problem, nodes)
    return expectation.detach()


def gauss_hermite_gradient(problem: Problem, nodes: int = 64) -> dict[str, Tensor]:
    """d E[f] / d params by autograd through the Gauss-Hermite rule, in the problem's
    dtype/device (computed in float64). Raises ValueError unless q is Normal and the cost has
    a SeparableCost."""
    expectation, leaves = _expectation_and_leaves(problem, nodes)
    names = list(leaves)
    grads = torch.autograd.grad(expectation, [leaves[n] for n in names], allow_unused=True)
    return {
        name: (torch.zeros_like(leaves[name]) if g is None else g).to(dtype=problem.dtype)
        for name, g in zip(names, grads, strict=True)
    }
