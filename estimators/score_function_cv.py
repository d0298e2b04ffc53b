"""Score-function gradient with the score itself as control variate, coefficient fitted once."""

from __future__ import annotations

import torch
from torch import Tensor

from gradbench.core.autograd import check_estimates, log_prob_sum, per_sample_grad
from gradbench.core.estimator import Hyperparam, register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import has_log_prob

# Pilot draws per pass: bounds the memory of the per-sample score rows.
_PILOT_CHUNK = 65536


def _check_pilot(value: int) -> str | None:
    return None if value >= 2 else f"pilot must be at least 2, not {value}"


def _scored_samples(problem: Problem, n: int, direct: bool = False
                    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor] | None]:
    """n draws z ~ q: f(z) [n], the per-sample scores grad log q(z), each [n, *shape], and (with
    `direct`, for a cost that depends on theta) the per-sample direct terms grad_theta f(z)."""
    params = problem.expand_params(n, requires_grad=True)
    q = problem.distribution(**params)
    z = q.sample()
    f = problem.cost(z, params)
    scores = per_sample_grad(log_prob_sum(q, z), params)
    return f.detach(), scores, per_sample_grad(f, params) if direct else None


def warmup(problem: Problem, pilot: int = 1000, **_: object) -> dict[str, Tensor]:
    """Fit c per parameter coordinate on `pilot` draws independent of the measurement.

    For g = (f - c) s with E[s] = 0: E[g] = E[f s] for every c, and
    Var(g) = E[f^2 s^2] - 2 c E[f s^2] + c^2 E[s^2] - E[f s]^2, minimised at
    c* = E[f s^2] / E[s^2] (= Cov(f s, s) / Var(s), as E[s] = 0 exactly; we use the exact zero
    mean rather than the pilot's, which only adds noise to the fit).
    """
    if (reason := _check_pilot(pilot)) is not None:
        raise ValueError(reason)
    num = {name: torch.zeros_like(value) for name, value in problem.params.items()}
    den = {name: torch.zeros_like(value) for name, value in problem.params.items()}
    for start in range(0, pilot, _PILOT_CHUNK):  # chunks of samples, not a per-sample loop
        f, scores, _ = _scored_samples(problem, min(_PILOT_CHUNK, pilot - start))
        for name, s in scores.items():
            s2 = s.square()
            num[name] += (f.reshape(-1, *[1] * (s.dim() - 1)) * s2).sum(0)
            den[name] += s2.sum(0)
    # A coordinate whose score is identically zero gets c = 0 (its estimate is zero anyway).
    tiny = torch.finfo(problem.dtype).tiny
    return {name: torch.where(den[name] > 0, num[name] / den[name].clamp_min(tiny), 0.0)
            for name in num}


@register_estimator(
    "score-function-cv",
    family="score-function",
    unbiased=True,
    requires=(has_log_prob,),
    hyperparams=(
        Hyperparam("pilot", int, 1000, "independent warm-up draws that fit the control-variate "
                   "coefficient", _check_pilot),
    ),
    evals=1,
    warmup=warmup,
    warmup_evals=lambda problem, pilot=1000, **_: float(pilot),
)
def score_function_cv(
    problem: Problem, n: int, pilot: int = 1000, state: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Score function with the score as control variate: (f(z) - c) grad log q(z), c pre-fitted."""
    if state is None:
        # Fitting here would hide `pilot` evaluations from the cost accounting.
        raise ValueError("score-function-cv needs state=warmup(problem, pilot=...) first")
    f, scores, direct = _scored_samples(problem, n, problem.cost_depends_on_params())
    # c is fixed before these draws, so E[(f - c) s] = E[f s] - c E[s] = E[f s]: unbiased, and
    # the n rows stay i.i.d. given c. A cost's direct term is added as it is.
    estimates = {
        name: (f.reshape(-1, *[1] * (s.dim() - 1)) - state[name]) * s
        + (direct[name] if direct is not None else 0.0)
        for name, s in scores.items()
    }
    return check_estimates(problem, n, estimates)
