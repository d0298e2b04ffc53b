"""When an estimator may skip autograd: q is a Normal or a Bernoulli built directly from the
problem's own parameter tensors (no transform between, e.g. no exp of a log-scale) and the cost
does not depend on the parameters. Then the estimate in q's native parameters is already the
estimate in the problem's, and closed forms (the score of the family, an antithetic difference)
replace a graph and a backward pass over n parameter copies.

Decided once per problem (weak keys: a cell's Problem is built per cell): building q per chunk
would cost its argument validation, a host round-trip on a GPU.
"""

from __future__ import annotations

import weakref

from torch.distributions import Bernoulli, Normal

from gradbench.core.problem import Problem

_NORMAL: weakref.WeakKeyDictionary[Problem, tuple[str, str] | None] = weakref.WeakKeyDictionary()
_BERNOULLI: weakref.WeakKeyDictionary[Problem, str | None] = weakref.WeakKeyDictionary()


def _by_id(problem: Problem) -> dict[int, str]:
    return {id(value): name for name, value in problem.params.items()}


def own_normal(problem: Problem) -> tuple[str, str] | None:
    """(loc name, scale name) when q is exactly Normal(loc, scale) of the problem's two
    parameters as they are and f does not depend on them; else None."""
    if problem not in _NORMAL:
        names = None
        q = problem.q()
        if type(q) is Normal and len(problem.params) == 2 \
                and not problem.cost_depends_on_params():
            by_id = _by_id(problem)
            loc, scale = by_id.get(id(q.loc)), by_id.get(id(q.scale))
            if loc is not None and scale is not None and loc != scale:
                names = (loc, scale)
        _NORMAL[problem] = names
    return _NORMAL[problem]


def own_bernoulli_logits(problem: Problem) -> str | None:
    """The parameter's name when q is exactly Bernoulli(logits=that parameter), the problem's
    only one, and f does not depend on it; else None."""
    if problem not in _BERNOULLI:
        name = None
        q = problem.q()
        if type(q) is Bernoulli and len(problem.params) == 1 \
                and not problem.cost_depends_on_params():
            name = _by_id(problem).get(id(q.logits))
        _BERNOULLI[problem] = name
    return _BERNOULLI[problem]
