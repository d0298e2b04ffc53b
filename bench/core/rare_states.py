"""How rare the states are that carry a gradient's variance, per coordinate, for problems whose
distribution has an enumerable support: the known probabilities behind the rare-state
reliability rule (gradbench.core.reliability).

Every unbiased estimator targets
    d/dtheta_j E[f] = E[t_j(z)],  t_j(z) = (f(z) - E f) d/dtheta_j log q(z)   (+ a direct term),
the likelihood-ratio identity with the constant baseline E f (invariant to adding a constant to
f). t_j is the reference estimate: it needs no model of an estimator, only q and f, and the
states it cannot do without are the states any estimator must see. Over an enumerable support its
exact variance and kurtosis are sums over the states. A sample variance from n draws has relative
variance (kurtosis - 1) / n, and a state of probability p that carries nearly all of the variance
makes the kurtosis ~ 1/p: so p_eff = 1 / (kurtosis - 1) is the effective probability of the
states that matter (the least likely state that matters, when one state dominates; an aggregate
when many rare states share the variance), and n p_eff is how many times the sample is expected
to see them. Unlike a sample kurtosis, this one is exact: it does not shrink when the sample has
missed the rare states, which is the failure it guards against (issue 12: categorical at scale 3,
a state of probability 1e-4 carried 99% of score-function-cv's variance).

Computed over the joint support when it has at most MAX_STATES states (the enumeration truths'
limit), otherwise per coordinate of q's batch from its marginal states with f = 1 (the score's
own kurtosis), which ignores the cost and the interactions between coordinates. That needs a
parameter laid out along q's batch (logits, probabilities); a parameter that reaches q through a
map (an encoder's weights, each feeding many latents) gets no rare-state verdict, and its rows
rest on the other reliability rules.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from gradbench.core.autograd import log_prob_sum, per_sample_grad
from gradbench.core.enumeration import MAX_STATES, blocks, joint_support, support_size
from gradbench.core.problem import Problem
from gradbench.core.reliability import RareStates

_F64 = torch.float64


def rare_states(problem: Problem) -> dict[str, RareStates] | None:
    """Per parameter, per coordinate (flattened): the reference estimate's exact kurtosis and
    p_eff; None when q's support is not enumerable."""
    size = support_size(problem)
    if size is None:
        return None
    # support_size counts one block's states where the cost splits into blocks (a VAE's data
    # points); the joint over all blocks is then far too large to enumerate.
    joint = size <= MAX_STATES and blocks(problem) == 1
    with torch.enable_grad():
        states = _joint(problem) if joint else _marginal(problem)
    least = _least_likely(problem)
    return {name: RareStates(probability=s.probability, kurtosis=s.kurtosis,
                             least_likely=least.get(name, np.full(len(s.probability), np.nan)))
            for name, s in states.items()}


def _least_likely(problem: Problem) -> dict[str, np.ndarray]:
    """Per parameter laid out along q's batch, per coordinate: the probability of the least
    likely value of that coordinate's component of q (the rule for learned surrogates in
    gradbench.core.reliability). Parameters reaching q through a map get none."""
    q = problem.q()
    if not getattr(q, "has_enumerate_support", False):
        return {}
    with torch.no_grad():
        values = q.enumerate_support(expand=True)  # [K, *batch, *event]
        probs = q.log_prob(values).to(_F64).exp().reshape(values.shape[0], -1)
        least = probs.min(0).values  # [batch coords]
    out = {}
    for name, value in problem.params.items():
        if value.shape[:len(q.batch_shape)] != q.batch_shape:
            continue
        per = value.numel() // max(least.numel(), 1)
        out[name] = least.repeat_interleave(per).cpu().numpy()  # batch-major, as _marginal
    return out


def _kurtosis(weight: Tensor, values: Tensor) -> Tensor:
    """Kurtosis per column of values [S, C] under state weights [S] (or [S, C]); NaN where the
    variance is 0."""
    weight = weight if weight.ndim == 2 else weight[:, None]
    mean = (weight * values).sum(0)
    dev = values - mean
    second = (weight * dev**2).sum(0)
    fourth = (weight * dev**4).sum(0)
    positive = second > 0
    return torch.where(positive, fourth / torch.where(positive, second, 1.0) ** 2, math.nan)


def _states(kurtosis: Tensor) -> RareStates:
    with torch.no_grad():
        excess = kurtosis - 1.0
        p_eff = torch.where(excess > 0, 1.0 / excess.clamp(min=1e-300), math.inf)
        probability = torch.where(torch.isnan(kurtosis), math.nan, p_eff)
    # On the host: the verdicts are numpy (a CUDA cell computes its states on the GPU).
    return RareStates(probability=probability.cpu().numpy(), kurtosis=kurtosis.cpu().numpy())


def _joint(problem: Problem) -> dict[str, RareStates]:
    states = joint_support(problem).to(_F64)
    count = states.shape[0]
    params = {k: v.detach().to(_F64).expand(count, *v.shape).clone().requires_grad_(True)
              for k, v in problem.params.items()}
    log_q = log_prob_sum(problem.distribution(**params), states)
    scores = per_sample_grad(log_q, params)
    weight = log_q.detach().exp()
    native = {k: v.detach().to(problem.dtype) for k, v in params.items()}
    cost = problem.cost(states.to(problem.dtype), native).detach().to(_F64)
    centred = cost - (weight * cost).sum()
    return {name: _states(_kurtosis(weight, centred[:, None] * score.reshape(count, -1)))
            for name, score in scores.items()}


def _marginal(problem: Problem) -> dict[str, RareStates]:
    q = problem.q()
    values = q.enumerate_support(expand=True).to(_F64)  # [K, *batch, *event]
    count = values.shape[0]
    params = {k: v.detach().to(_F64).expand(count, *v.shape).clone().requires_grad_(True)
              for k, v in problem.params.items()}
    log_q = problem.distribution(**params).log_prob(values)  # [K, *batch]
    scores = per_sample_grad(log_q.reshape(count, -1).sum(1), params)
    probs = log_q.detach().exp().reshape(count, -1)  # [K, batch coords]
    batch = probs.shape[1]
    out = {}
    for name, score in scores.items():
        shape = problem.params[name].shape
        if shape[:len(q.batch_shape)] != q.batch_shape:
            continue  # not laid out along q's batch: no per-coordinate states (see above)
        coords = score[0].numel()
        weight = probs.repeat_interleave(coords // batch, dim=1)  # batch-major layout
        out[name] = _states(_kurtosis(weight, score.reshape(count, -1)))
    return out


def at_columns(states: dict[str, RareStates] | None, name: str,
               columns: slice | Tensor) -> RareStates | None:
    """One parameter's rare states at some of its coordinates (None where unknown)."""
    if states is None or name not in states:
        return None
    return states[name].at(columns if isinstance(columns, slice) else columns.cpu().numpy())
