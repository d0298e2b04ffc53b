"""gradbench: a harness that measures Monte Carlo gradient estimators side by side.

The public face (heavier pieces load on first use):

    gradbench.Problem, gradbench.register_estimator, gradbench.register_suite,
    gradbench.Setting, gradbench.Hyperparam, gradbench.Requirement,
    gradbench.run(...)            run an estimator on a suite in this process -> tidy DataFrame
    gradbench.read_results(...)   read results files or folders -> tidy DataFrame

Estimator-writing helpers live in gradbench.estimators (per_sample_grad, log_prob_sum, ...),
capabilities in gradbench.core.capabilities, suite helpers in gradbench.suites.
"""

from __future__ import annotations

from typing import Any

from gradbench.core.capabilities import Capability
from gradbench.core.estimator import Hyperparam, all_estimators, get_estimator, register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import Requirement
from gradbench.core.suite import Setting, all_suites, get_suite, register_suite
from gradbench.core.version import __version__

__all__ = [
    "Capability",
    "Hyperparam",
    "Problem",
    "Requirement",
    "Setting",
    "__version__",
    "all_estimators",
    "all_suites",
    "get_estimator",
    "get_suite",
    "read_results",
    "register_estimator",
    "register_suite",
    "run",
]


def __getattr__(name: str) -> Any:
    # pandas and the app load only when these are used, so `import gradbench` stays light.
    if name == "run":
        from gradbench.app.pytest_plugin import run

        return run
    if name == "read_results":
        from gradbench.results.store import read_results

        return read_results
    raise AttributeError(f"module 'gradbench' has no attribute {name!r}")
