"""Score-function (REINFORCE / likelihood-ratio) gradient without a baseline."""

from __future__ import annotations

import torch
from torch import Tensor

from gradbench.core.autograd import check_estimates, log_prob_sum, per_sample_grad
from gradbench.core.estimator import register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import has_log_prob
from gradbench.estimators._fused import own_bernoulli_logits, own_normal


@register_estimator(
    "score-function",
    family="score-function",
    unbiased=True,
    requires=(has_log_prob,),
    evals=1,
)
def score_function(problem: Problem, n: int) -> dict[str, Tensor]:
    """Score-function estimator f(z) grad log q(z), no baseline."""
    fused = _fused(problem, n)
    if fused is not None:
        return check_estimates(problem, n, fused)
    params = problem.expand_params(n, requires_grad=True)
    q = problem.distribution(**params)
    z = q.sample()  # no gradient path through z: the score carries the sampling part
    f = problem.cost(z, params)  # a graph only through a direct dependence on theta, if any
    # grad_theta E[f_theta] = E[f(z) grad log q(z)] + E[grad_theta f_theta(z)], since
    # grad q = q grad log q; the second term is the cost's direct term (0 for f of z alone).
    surrogate = f.detach() * log_prob_sum(q, z) + f
    return check_estimates(problem, n, per_sample_grad(surrogate, params))


@torch.no_grad()
def _fused(problem: Problem, n: int) -> dict[str, Tensor] | None:
    """The same estimates with the family's score in closed form, where q is a Normal or a
    Bernoulli of the problem's own parameters and f does not depend on them (_fused), else None.

    Normal(mu, sigma), z = mu + sigma eps: d log q / d mu = eps / sigma and
    d log q / d sigma = (eps^2 - 1) / sigma. Bernoulli(logits th): d log q / d th = b - sigma(th).
    The draws are made as q.sample() makes them (normal_ into an empty tensor, then scale and
    shift; torch.bernoulli of the expanded probabilities), so with the same generator state the
    estimates equal the autograd path's up to rounding.
    """
    normal = own_normal(problem)
    if normal is not None:
        loc_name, scale_name = normal
        loc, scale = problem.params[loc_name], problem.params[scale_name]
        eps = torch.empty((n, *loc.shape), dtype=loc.dtype, device=loc.device).normal_()
        z = eps * scale
        z += loc
        f = problem.cost(z, problem.params).reshape(n, *[1] * loc.dim())
        weighted = f / scale
        return {loc_name: weighted * eps, scale_name: weighted * (eps * eps - 1)}
    name = own_bernoulli_logits(problem)
    if name is not None:
        probs = torch.sigmoid(problem.params[name])
        b = torch.bernoulli(probs.expand(n, *probs.shape))
        f = problem.cost(b, problem.params).reshape(n, *[1] * probs.dim())
        return {name: f * (b - probs)}
    return None
