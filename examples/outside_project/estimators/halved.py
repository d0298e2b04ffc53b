"""An outside estimator, written against gradbench's public API only."""

from gradbench.estimators import (
    Hyperparam,
    check_estimates,
    has_log_prob,
    log_prob_sum,
    per_sample_grad,
    register_estimator,
)


@register_estimator("score-function-halved", family="score-function", unbiased=True,
                    requires=(has_log_prob,), evals=1,
                    hyperparams=(Hyperparam("weight", float, 1.0, "multiplies the score term"),))
def score_function_halved(problem, n, weight=1.0):
    """REINFORCE with the score term scaled by `weight` (unbiased only at weight = 1)."""
    params = problem.expand_params(n, requires_grad=True)  # one parameter copy per sample
    q = problem.distribution(**params)
    z = q.sample()
    f = problem.cost(z, params)  # a graph through params only if f depends on them directly
    surrogate = weight * f.detach() * log_prob_sum(q, z) + f
    return check_estimates(problem, n, per_sample_grad(surrogate, params))  # one backward pass
