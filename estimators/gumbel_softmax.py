"""Gumbel-softmax / Concrete gradient (Jang et al. 2016; Maddison et al. 2016).

Replace b by its relaxation y = sigma((th + L)/tau) (Bernoulli, L logistic) or
softmax((th + G)/tau) (categorical, G Gumbel), drawn with torch's RelaxedBernoulli /
RelaxedOneHotCategorical rsample, and differentiate f(y) pathwise. Unbiased for
d/dth E[f(y_tau)], the relaxed objective, hence biased for the discrete one; the bias shrinks as
tau -> 0 while the variance grows like 1/tau (dy/dth = y(1 - y)/tau concentrates near z = 0).

Default tau = 0.5: the floor of Jang et al.'s annealing schedule (1 -> 0.5) and REBAR's starting
temperature; Maddison et al. recommend tau <= 1/(C - 1) (1 for binary). Sweep it with --set tau=...
"""

from __future__ import annotations

from torch import Tensor

from gradbench.core.autograd import check_estimates, per_sample_grad
from gradbench.core.estimator import register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import discrete, relaxed_cost
from gradbench.estimators._relaxations import (
    check_tau,
    relaxed_distribution,
    require,
    tau_hyperparam,
)


@register_estimator(
    "gumbel-softmax",
    family="relaxation",
    unbiased=False,
    requires=(discrete, relaxed_cost),
    hyperparams=(tau_hyperparam(0.5, "temperature of the Concrete relaxation (> 0): lower is "
                                "less biased and noisier"),),
    evals=1,
)
def gumbel_softmax(problem: Problem, n: int, tau: float = 0.5) -> dict[str, Tensor]:
    """Gumbel-softmax / Concrete (Jang; Maddison et al. 2016): pathwise gradient of f(relaxed)."""
    require(check_tau(tau))
    params = problem.expand_params(n, requires_grad=True)
    y = relaxed_distribution(problem.distribution(**params), tau).rsample()
    return check_estimates(problem, n, per_sample_grad(problem.cost(y, params), params))
