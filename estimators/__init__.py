"""Gradient estimators. Adding one: a new module in this package with a `@register_estimator`
function. Every module here is imported on first use of the registry."""

import importlib
import pkgutil

from estimators.registry import (
    Estimator,
    Hyperparam,
    Requirement,
    all_estimators,
    get_estimator,
    register_estimator,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Estimator",
    "Hyperparam",
    "Requirement",
    "all_estimators",
    "get_estimator",
    "register_estimator",
]
