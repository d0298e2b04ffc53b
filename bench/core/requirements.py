"""Requirements: what an estimator needs of a problem. `Requirement(name, check)` for properties
of q (like torch.distributions' `has_rsample`), `Requirement.offers(Capability)` for structure the
problem offers; and the ones the built-in estimators declare."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch.distributions import Bernoulli, Normal, OneHotCategorical

from gradbench.core.capabilities import (
    Capability,
    DifferentiableCost,
    NegativeELBO,
    RelaxedCost,
)
from gradbench.core.enumeration import enumeration_refusal
from gradbench.core.problem import Problem


@dataclass(frozen=True)
class Requirement:
    """A capability an estimator needs: `check` gives None when the problem has it, else why not."""

    name: str
    check: Callable[[Problem], str | None]

    def __call__(self, problem: Problem) -> str | None:
        return self.check(problem)

    @staticmethod
    def offers(kind: type[Capability]) -> Requirement:
        """The requirement that the problem offers capability `kind`."""

        def check(problem: Problem) -> str | None:
            if problem.offers(kind) is None:
                return f"the problem offers no {kind.title} ({kind.summary})"
            return None

        return Requirement(kind.title, check)


def _reparameterizable(problem: Problem) -> str | None:
    q = problem.q()
    if not q.has_rsample:
        return f"{type(q).__name__} has no reparameterized sampler (has_rsample is False)"
    return None


def _gaussian(problem: Problem) -> str | None:
    q = problem.q()
    if not isinstance(q, Normal):
        return f"needs a Gaussian (Normal) distribution, not {type(q).__name__}"
    return None


def _bernoulli(problem: Problem) -> str | None:
    q = problem.q()
    if not isinstance(q, Bernoulli):
        return f"needs a Bernoulli distribution, not {type(q).__name__}"
    return None


def _discrete(problem: Problem) -> str | None:
    q = problem.q()
    if not isinstance(q, Bernoulli | OneHotCategorical):
        return f"needs a Bernoulli or one-hot categorical distribution, not {type(q).__name__}"
    return None


def _has_log_prob(problem: Problem) -> str | None:
    q = problem.q()
    try:
        q.log_prob(q.sample())
    except NotImplementedError:
        return f"{type(q).__name__} has no log_prob"
    return None


reparameterizable = Requirement("reparameterizable", _reparameterizable)
gaussian = Requirement("Gaussian", _gaussian)
bernoulli = Requirement("Bernoulli", _bernoulli)
discrete = Requirement("Bernoulli or categorical", _discrete)
has_log_prob = Requirement("log_prob", _has_log_prob)
enumerable_support = Requirement("enumerable support", enumeration_refusal)
differentiable_cost = Requirement.offers(DifferentiableCost)
relaxed_cost = Requirement.offers(RelaxedCost)
negative_elbo = Requirement.offers(NegativeELBO)
