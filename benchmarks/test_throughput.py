"""Per-sample gradient throughput of the harness (gradbench.app.measure.run_cell: estimates and
streaming statistics, one cell) against the random numbers each estimate needs, drawn by torch
alone into preallocated tensors of the same dtype and device: the RNG floor. See conftest.py for
how to run it and how the numbers are taken; the summary table comes at the end of the run.

The floors, per estimate and coordinate:
- pathwise and score-function on Gaussians: one standard normal (torch.randn);
- measure-valued on Gaussians (coupled, its default): the Rayleigh draw (one uniform), the double-
  sided Maxwell (one uniform, one normal and a random sign) and the coupled normal (one uniform):
  three torch.rand, one torch.randn and one torch.randint;
- score-function, ARM and DisARM on Bernoulli: one uniform (torch.rand).
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from throughput_cases import Case

from gradbench.app import measure, planning
from gradbench.estimators import get_estimator
from gradbench.suites import all_suites

GAUSSIAN = {"mu": 1.0, "sigma": 1.0, "k": 0.0}
BERNOULLI = {"theta": 0.0, "t": 0.499}
# (suite, fixed settings, estimator, dims): the targets and the large-dim checks.
GRID = [
    ("gaussian-quadratic", GAUSSIAN, "pathwise", (1, 1000, 10_000)),
    ("gaussian-quadratic", GAUSSIAN, "score-function", (1, 1000, 10_000)),
    ("gaussian-quadratic", GAUSSIAN, "measure-valued", (1, 1000, 10_000)),
    ("bernoulli-toy", BERNOULLI, "score-function", (1, 20)),
    ("bernoulli-toy", BERNOULLI, "arm", (1, 20)),
    ("bernoulli-toy", BERNOULLI, "disarm", (1, 20)),
]
DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
# Elements (estimates x coordinates) per timed round: ~0.1 s of randn on this CPU at float64.
ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}
ROUNDS = {"cpu": 5, "cuda": 5}


def cases():
    for suite, fixed, estimator, dims in GRID:
        for dim in dims:
            for device in DEVICES:
                for dtype in ("float64", "float32"):
                    yield pytest.param(suite, fixed, estimator, dim, device, dtype,
                                       id=f"{estimator}-{suite}-dim{dim}-{device}-{dtype}")


def rng_floor(estimator: str, suite: str, shape: tuple[int, ...], dtype: torch.dtype,
              device: str):
    """A function drawing, into preallocated tensors, the random numbers one round of the case
    needs (module docstring), and the floor's name for the summary."""
    buffers = [torch.empty(shape, dtype=dtype, device=device) for _ in range(4)]
    signs = torch.empty(shape, dtype=torch.int64, device=device)
    if suite.startswith("bernoulli"):
        return (lambda: torch.rand(shape, out=buffers[0], dtype=dtype)), "rand"
    if estimator == "measure-valued":
        def draws() -> None:
            for buffer in buffers[:3]:
                torch.rand(shape, out=buffer, dtype=dtype)
            torch.randn(shape, out=buffers[3], dtype=dtype)
            torch.randint(0, 2, shape, out=signs)
        return draws, "3 rand+randn+randint"
    return (lambda: torch.randn(shape, out=buffers[0], dtype=dtype)), "randn"


def clock_for(device: str):
    if device == "cuda":
        def wall() -> float:
            torch.cuda.synchronize()  # everything queued so far counts in the round
            return time.perf_counter()
        return wall
    return time.process_time  # one torch thread: CPU time, not inflated by others' load


def tutorial_loop(problem, estimator: str, n: int) -> None:
    """The per-sample loop of tutorials: fresh leaves, one draw, one backward, per sample (for
    estimators without a backward pass, the estimator itself called once per sample)."""
    if estimator not in ("pathwise", "score-function"):
        fn = get_estimator(estimator).fn
        for _ in range(n):
            fn(problem, 1)
        return
    for _ in range(n):
        params = {k: v.detach().clone().requires_grad_(True) for k, v in problem.params.items()}
        q = problem.distribution(**params)
        if estimator == "pathwise":
            loss = problem.cost(q.rsample((1,)), params).sum()
        else:  # score-function: f(z) grad log q(z)
            z = q.sample((1,))
            loss = (problem.cost(z, params).detach() * q.log_prob(z).sum()).sum()
        loss.backward()


@pytest.mark.parametrize(("suite", "fixed", "estimator", "dim", "device", "dtype"), list(cases()))
def test_throughput(benchmark, record, suite, fixed, estimator, dim, device, dtype):
    if suite not in all_suites():
        pytest.skip(f"suite {suite} is not registered in this checkout")
    settings = {**fixed, "dim": dim}
    problem = all_suites()[suite].problem(settings, device=torch.device(device),
                                          dtype=planning.DTYPES[dtype])
    spec = get_estimator(estimator)
    reason = spec.applicability(problem)
    if reason is not None:
        pytest.skip(f"{estimator} does not apply to {suite}: {reason}")
    coords = problem.q().sample().numel()
    samples = max(64, ELEMENTS[device] // coords)
    hyper = tuple((h.name, h.default) for h in spec.hyperparams.values())
    cell = planning.Cell(suite, tuple(settings.items()), estimator, hyper, device, dtype,
                         samples, 0)
    draws, floor = rng_floor(estimator, suite, (samples * coords,), planning.DTYPES[dtype],
                             device)
    case = record(Case(f"{estimator} {suite} dim{dim}", device, dtype, coords, samples,
                       floor=floor))
    clock = clock_for(device)

    half = dataclasses.replace(cell, samples=samples // 2)
    half_s: list[float] = []

    def limit() -> None:  # pytest-benchmark's setup: untimed by it, so its table stays whole cells
        start = clock()
        draws()
        case.limit_s.append(clock() - start)
        start = clock()
        measure.run_cell(half)
        half_s.append(clock() - start)

    def harness() -> None:
        start = clock()
        measure.run_cell(cell)
        case.harness_s.append(clock() - start)
        # The marginal time of the last samples // 2 estimates: a cell's fixed work (warm-up,
        # truths, the per-coordinate summaries) cancels; see throughput_cases.Case.
        case.marginal_s.append(case.harness_s[-1] - half_s[-1])

    measure.run_cell(dataclasses.replace(cell, samples=1000))  # warm: kernels, allocator, caches
    draws()
    benchmark.extra_info.update(samples=samples, coords=coords, device=device, dtype=dtype)
    benchmark.pedantic(harness, setup=limit, rounds=ROUNDS[device], iterations=1)

    case.loop_samples = 1000 if coords <= 100 else 100
    for _ in range(3):
        start = clock()
        tutorial_loop(problem, estimator, case.loop_samples)
        case.loop_s.append(clock() - start)
    benchmark.extra_info.update(harness_per_s=case.harness_rate(), limit_per_s=case.limit_rate(),
                                loop_per_s=case.loop_rate())
