"""Per-sample gradient throughput of the harness (gradbench.app.measure.run_cell) against
torch.randn of
as many elements, and against the tutorials' one-backward-per-sample loop. See conftest.py for
how to run and how the numbers are taken; the summary table comes at the end of the run."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from throughput_cases import Case

from gradbench.app import measure, planning
from gradbench.estimators import get_estimator
from gradbench.suites import all_suites

ESTIMATORS = ("pathwise", "score-function", "measure-valued")
DIMS = (1, 100, 10_000)
SUITES = {  # suite -> settings other than dim (bernoulli-toy only where registered)
    "gaussian-quadratic": {"mu": 1.0, "sigma": 1.0, "k": 0.0},
    "bernoulli-toy": {"theta": 0.0, "t": 0.499},
}
DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
# Elements (estimates x coordinates) per timed round: ~0.1 s of randn on this CPU at float64.
ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}
ROUNDS = {"cpu": 5, "cuda": 5}


def cases():
    for suite, fixed in SUITES.items():
        for estimator in ESTIMATORS:
            for dim in DIMS:
                for device in DEVICES:
                    for dtype in ("float64", "float32"):
                        yield pytest.param(suite, fixed, estimator, dim, device, dtype,
                                           id=f"{estimator}-{suite}-dim{dim}-{device}-{dtype}")


def clock_for(device: str):
    if device == "cuda":
        def wall() -> float:
            torch.cuda.synchronize()  # everything queued so far counts in the round
            return time.perf_counter()
        return wall
    return time.process_time  # one torch thread: CPU time, not inflated by others' load


def tutorial_loop(problem, estimator: str, n: int) -> None:
    """The per-sample loop of tutorials: fresh leaves, one draw, one backward, per sample (for
    measure-valued, which has no backward, the estimator itself called once per sample)."""
    if estimator == "measure-valued":
        fn = get_estimator(estimator).fn
        for _ in range(n):
            fn(problem, 1)
        return
    for _ in range(n):
        params = {k: v.detach().clone().requires_grad_(True) for k, v in problem.params.items()}
        q = problem.distribution(**params)
        if estimator == "pathwise":
            loss = problem.cost(q.rsample((1,))).sum()
        else:  # score-function: f(z) grad log q(z)
            z = q.sample((1,))
            loss = (problem.cost(z).detach() * q.log_prob(z).sum()).sum()
        loss.backward()


@pytest.mark.parametrize(("suite", "fixed", "estimator", "dim", "device", "dtype"), list(cases()))
def test_throughput(benchmark, record, suite, fixed, estimator, dim, device, dtype):
    if suite not in all_suites():
        pytest.skip(f"suite {suite} is not registered in this checkout")
    settings = {**fixed, "dim": dim}
    the_suite = all_suites()[suite]
    problem = the_suite.problem(settings, device=torch.device(device),
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
    case = record(Case(f"{estimator} {suite} dim{dim}", device, dtype, coords, samples))
    clock = clock_for(device)
    buffer = torch.empty(samples * coords, dtype=planning.DTYPES[dtype], device=device)

    def limit() -> None:
        start = clock()
        torch.randn(buffer.shape, out=buffer)
        case.limit_s.append(clock() - start)

    def harness() -> None:
        start = clock()
        measure.run_cell(cell)
        case.harness_s.append(clock() - start)

    measure.run_cell(dataclasses.replace(cell, samples=1000))  # warm: kernels, allocator, caches
    torch.randn(buffer.shape, out=buffer)
    benchmark.extra_info.update(samples=samples, coords=coords, device=device, dtype=dtype)
    benchmark.pedantic(harness, setup=limit, rounds=ROUNDS[device], iterations=1)

    case.loop_samples = 1000 if coords <= 100 else 100
    for _ in range(3):
        start = clock()
        tutorial_loop(problem, estimator, case.loop_samples)
        case.loop_s.append(clock() - start)
    benchmark.extra_info.update(harness_per_s=case.harness_rate(), limit_per_s=case.limit_rate(),
                                loop_per_s=case.loop_rate())
