"""Gradient estimators, one module each. Adding one: a new module with a `@register_estimator`
function (here, or in any package registered as a plugin). The helpers an estimator needs are
re-exported here, so a plugin imports only this public module."""

import importlib
import pkgutil

from gradbench.core.autograd import (
    check_estimates,
    detached,
    log_prob_sum,
    native_to_params,
    per_sample_grad,
    repeat_params,
)
from gradbench.core.estimator import (
    Estimator,
    Hyperparam,
    all_estimators,
    get_estimator,
    register_estimator,
)
from gradbench.core.problem import Problem
from gradbench.core.requirements import (
    Requirement,
    bernoulli,
    differentiable_cost,
    discrete,
    enumerable_support,
    gaussian,
    has_log_prob,
    negative_elbo,
    relaxed_cost,
    reparameterizable,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Estimator",
    "Hyperparam",
    "Problem",
    "Requirement",
    "all_estimators",
    "bernoulli",
    "check_estimates",
    "detached",
    "differentiable_cost",
    "discrete",
    "enumerable_support",
    "gaussian",
    "get_estimator",
    "has_log_prob",
    "log_prob_sum",
    "native_to_params",
    "negative_elbo",
    "per_sample_grad",
    "register_estimator",
    "relaxed_cost",
    "reparameterizable",
    "repeat_params",
]
