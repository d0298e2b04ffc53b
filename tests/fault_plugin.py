"""Fault-injecting estimators for the robustness tests, loaded with `bench run --plugin` (so the
parent and every worker have them). They apply only where the environment variable FAULT_DIR
names a folder (a Requirement), so a test process that imported this file by accident cannot run
them in someone else's sweep.

On gaussian-quadratic, the cell with dim = 3 misbehaves and the others are healthy:
- test-segv: the dim-3 cell waits until a healthy cell is running, then kills its own process
  with SIGSEGV; the healthy cells wait for that, so they are in flight when their worker or
  pool goes down, and then finish normally.
- test-exit: the dim-3 cell calls sys.exit(3).
- test-os-exit: the dim-3 cell ends its process with os._exit(7).
- test-nan: every other estimate is NaN when FAULT_NAN=1 (else truth + N(0, 1) noise).
- test-slow: healthy, but each chunk sleeps FAULT_SLEEP seconds (default 0.5): time to
  interrupt a run between cells.
"""

import os
import signal
import sys
import time

import torch

from gradbench.core.estimator import register_estimator
from gradbench.core.requirements import Requirement


def _enabled(problem) -> str | None:
    return None if os.environ.get("FAULT_DIR") else "a test estimator: set FAULT_DIR to run it"


ENABLED = (Requirement("fault injection enabled", _enabled),)


def _dim(problem) -> int:
    return problem.params["mu"].numel()


def _zeros(problem, n):
    return {k: torch.zeros(n, *v.shape, dtype=v.dtype) for k, v in problem.params.items()}


def _marker(name: str) -> str:
    return os.path.join(os.environ["FAULT_DIR"], name)


def _wait_for(name: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(_marker(name)) and time.monotonic() < deadline:
        time.sleep(0.02)


@register_estimator("test-segv", family="test", unbiased=False, requires=ENABLED, evals=1)
def segv(problem, n):
    """dim 3 segfaults once a healthy cell runs; the healthy ones finish after the crash"""
    if _dim(problem) == 3:
        _wait_for("healthy-started")
        open(_marker("crashing"), "w").close()
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(60)  # not reached: the signal ends the process
    open(_marker("healthy-started"), "w").close()
    _wait_for("crashing")
    time.sleep(0.3)
    return _zeros(problem, n)


@register_estimator("test-exit", family="test", unbiased=False, requires=ENABLED, evals=1)
def exits(problem, n):
    """dim 3 calls sys.exit(3); the others return zeros"""
    if _dim(problem) == 3:
        sys.exit(3)
    return _zeros(problem, n)


@register_estimator("test-nan", family="test", unbiased=True, requires=ENABLED, evals=1)
def nan(problem, n):
    """truth + N(0, 1); every other estimate NaN when FAULT_NAN=1"""
    out = {}
    for name, value in problem.params.items():
        noise = torch.randn(n, *value.shape, dtype=value.dtype)
        estimate = problem.exact_gradient[name].expand(n, *value.shape) + noise
        if os.environ.get("FAULT_NAN") == "1":
            estimate[::2] = float("nan")
        out[name] = estimate
    return out


@register_estimator("test-slow", family="test", unbiased=False, requires=ENABLED, evals=1)
def slow(problem, n):
    """zeros, after sleeping FAULT_SLEEP seconds per chunk"""
    time.sleep(float(os.environ.get("FAULT_SLEEP", "0.5")))
    return _zeros(problem, n)


@register_estimator("test-os-exit", family="test", unbiased=False, requires=ENABLED, evals=1)
def os_exit(problem, n):
    """dim 3 ends its process with os._exit(7) (no exception, no cleanup)"""
    if _dim(problem) == 3:
        os._exit(7)
    return _zeros(problem, n)
