"""The exact gradient by enumeration of q's joint support: a zero-variance reference.

Sums q(z) f(z) over every joint state (bench.enumeration) and differentiates the sum; the same
exact gradient is returned for each of the n estimates. It is computed once per problem (cached,
so the runner's chunks do not repeat it; its time per estimate is therefore not the
enumeration's), but each estimate stands for an exact evaluation, so its honest cost is one
evaluation of f per joint state: evals = support size (2^dim for Bernoulli, C^dim for
categorical). For a block-separable cost (a minibatch's data points, bench.enumeration) the
support size is one block's, and one batched evaluation of a state covers every block: still one
evaluation of f per state.
"""

from __future__ import annotations

import weakref

from torch import Tensor

from gradbench.core.autograd import check_estimates
from gradbench.core.enumeration import exact_gradient, support_size
from gradbench.core.estimator import register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import enumerable_support


def _evals(problem: Problem, **_: object) -> float:
    """one per joint state of the support (of one block, for a block-separable cost)"""
    size = support_size(problem)
    assert size is not None, "exact applies only to enumerable supports"
    return float(size)


# Problem -> its exact gradient, computed on the first call: the runner calls once per chunk of
# estimates, and a large enumeration (2^16 states for each of a minibatch's data points) would
# otherwise be repeated per chunk. Weak keys: a cell's Problem is built per cell.
_GRADIENTS: weakref.WeakKeyDictionary[Problem, dict[str, Tensor]] = weakref.WeakKeyDictionary()


@register_estimator(
    "exact",
    family="exact",
    unbiased=True,
    requires=(enumerable_support,),
    evals=_evals,
    # Enumerates once per call whatever n is, so chunks need not shrink with the state count.
    memory=1,
)
def exact(problem: Problem, n: int) -> dict[str, Tensor]:
    """Exact gradient by enumerating every joint state of q (zero variance), repeated n times."""
    grads = _GRADIENTS.get(problem)
    if grads is None:
        grads = _GRADIENTS[problem] = exact_gradient(problem)
    return check_estimates(problem, n, {name: g.expand(n, *g.shape).contiguous()
                                        for name, g in grads.items()})
