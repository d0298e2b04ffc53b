"""Problem suites, one family per module. Adding one: a new module with a `@register_suite`
builder (here, or in any package registered as a plugin). What a suite needs is re-exported
here."""

import importlib
import pkgutil

from gradbench.core.capabilities import (
    BlockSeparableCost,
    CostGradient,
    DifferentiableCost,
    GaussianLinearLayer,
    NegativeELBO,
    RelaxedCost,
    SeparableCost,
)
from gradbench.core.params import at_least, between, finite, one_of, positive
from gradbench.core.problem import Problem
from gradbench.core.suite import Setting, Suite, all_suites, get_suite, register_suite
from gradbench.core.training import Evaluation, Trainer

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "BlockSeparableCost",
    "CostGradient",
    "DifferentiableCost",
    "Evaluation",
    "GaussianLinearLayer",
    "NegativeELBO",
    "Problem",
    "RelaxedCost",
    "SeparableCost",
    "Setting",
    "Suite",
    "Trainer",
    "all_suites",
    "at_least",
    "between",
    "finite",
    "get_suite",
    "one_of",
    "positive",
    "register_suite",
]
