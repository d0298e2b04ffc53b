"""bench train's own overhead per optimizer step on binary-latent (its default settings):
a whole trajectory (gradbench.app.train_run) against the least any training loop does per
step, the trainer's problem on the step's minibatch plus one estimator call, timed round by
round in CPU time (time.process_time, one torch thread). The difference per step is the
harness: minibatch schedule, per-step seeding, the optimizer on the flat parameter vector,
timing and divergence checks. The trajectory's two evaluation points are timed on their own and
taken out. Run: .venv/bin/pytest benchmarks --benchmark-only -k train_overhead"""

from __future__ import annotations

import time

import pytest
import torch
from train_cases import TRAIN_RESULTS, TrainCase

from gradbench.app.train_plan import TrainRequest, plan_training
from gradbench.app.train_run import MinibatchSchedule, _Loop, run_trajectory
from gradbench.core.estimator import get_estimator
from gradbench.core.suite import get_suite

STEPS = 300
ROUNDS = 9  # a busy shared machine: medians of several interleaved rounds


@pytest.mark.parametrize("estimator", ["score-function", "disarm", "score-function-loo"])
def test_train_overhead(benchmark, estimator):
    request = TrainRequest(suite="binary-latent", estimators=(estimator,), seeds=1, steps=STEPS,
                           eval_every=STEPS, variance_draws=2)
    traj = plan_training(request).trajectories[0]
    trainer = get_suite(traj.suite).trainer(traj.settings_dict())
    spec = get_estimator(estimator)
    schedule = MinibatchSchedule(trainer.train_rows, trainer.batch, traj.data_seed)
    case = TrainCase(estimator, STEPS)
    TRAIN_RESULTS.append(case)

    def limit() -> None:
        params = trainer.initial()
        start = time.process_time()
        for step in range(STEPS):
            torch.default_generator.manual_seed(step)  # what any seeded loop does
            spec.fn(trainer.problem(params, schedule.rows(step)), 1)
        case.limit_s.append(time.process_time() - start)
        loop = _Loop(traj, torch.device("cpu"))
        start = time.process_time()
        loop.evaluate(0)
        case.evaluation_s.append(time.process_time() - start)

    def harness() -> None:
        start = time.process_time()
        run_trajectory(traj)
        case.harness_s.append(time.process_time() - start)

    run_trajectory(traj)  # warm
    benchmark.pedantic(harness, setup=limit, rounds=ROUNDS, iterations=1)
    harness_ms, limit_ms, overhead_ms = case.per_step_ms()
    benchmark.extra_info.update(step_ms=harness_ms, limit_ms=limit_ms, overhead_ms=overhead_ms)
