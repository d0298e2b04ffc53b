"""The scale benchmark of issue 10: a Bayesian layer of 784 x 256 weights (bayes-linear,
data=synthetic, batch 128; 401,920 parameters), per-sample pathwise gradient estimates with
statistics (gradbench.app.measure.run_cell: the estimator's shared-sample path, _stacked and
StreamingMoments, then the per-coordinate summaries) against one ordinary training step of the
same layer (draw W and b once, forward the minibatch, Gaussian NLL, backward), the tutorials'
loop body. Goal: at most 2x a training step per estimate.

    .venv/bin/pytest benchmarks/test_bayes_layer.py --benchmark-only

Rounds alternate harness and training steps; both clocks are the process's CPU time on one
torch thread (as the other benchmarks), so other processes' load inflates neither much, and
the summary prints each round's ratio. The harness time includes everything run_cell does per
cell (building the problem, the per-coordinate summaries of 401,920 coordinates), spread over
SAMPLES estimates. Peak memory at 1e4 estimates: benchmarks/bayes_layer_memory.py.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from throughput_cases import LAYER_RESULTS, LayerCase
from torch.distributions import Normal

from gradbench.app import measure, planning
from gradbench.suites import get_suite

SETTINGS = (("data", "synthetic"), ("batch", 128), ("log_sigma", -3.0), ("noise", 1.0),
            ("in_features", 784), ("out_features", 256))
SAMPLES = 2048  # 32 chunks of 64 estimates per round: the per-cell fixed costs (building the
# problem, the first chunk's shifts, 401,920 coordinates' summaries: 1-3 s) weigh ~5-10%
STEPS = 64  # training steps per round
ROUNDS = 3


def training_step(problem) -> callable:
    """One ordinary training step of the layer, as the tutorials write it."""
    params = {name: value.clone().requires_grad_(True) for name, value in problem.params.items()}
    x, y = problem.data["X"], problem.data["y"]
    scale = 1024 / (128 * 1.0**2)  # N / (B noise^2), the suite's cost

    def step() -> None:
        weight = Normal(params["weight_mu"], params["weight_log_sigma"].exp()).rsample()
        bias = Normal(params["bias_mu"], params["bias_log_sigma"].exp()).rsample()
        loss = 0.5 * scale * (y - (x @ weight.T + bias)).square().sum()
        loss.backward()
        for value in params.values():
            value.grad = None

    return step


def test_bayes_layer_pathwise_against_a_training_step(benchmark) -> None:
    problem = get_suite("bayes-linear").problem(dict(SETTINGS))
    cell = planning.Cell("bayes-linear", SETTINGS, "pathwise", (), "cpu", "float64", SAMPLES, 0)
    step = training_step(problem)
    case = LayerCase("pathwise bayes-linear 784x256 batch 128 (float64, CPU)", SAMPLES)
    LAYER_RESULTS.append(case)
    measure.run_cell(dataclasses.replace(cell, samples=64))  # warm: allocator, kernels
    step()

    def steps() -> None:
        start = time.process_time()
        for _ in range(STEPS):
            step()
        case.step_s.append((time.process_time() - start) / STEPS)

    def harness() -> None:
        start = time.process_time()
        measure.run_cell(cell)
        case.harness_s.append((time.process_time() - start) / SAMPLES)

    benchmark.extra_info.update(parameters=problem.numel, samples=SAMPLES)
    benchmark.pedantic(harness, setup=steps, rounds=ROUNDS, iterations=1)
    benchmark.extra_info.update(ratios=case.ratios())
    assert torch.get_num_threads() == 1  # the conftest's fixture: timings on one thread
