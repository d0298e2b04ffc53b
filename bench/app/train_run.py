"""Computing one training trajectory: a pure function of its key (gradbench.app.train_plan).

Each step: the minibatch rows of that step (from permutations seeded by the trajectory's data
seed, epoch by epoch), the trainer's problem at the current parameters on them, one estimator
call for one gradient estimate with torch's generator seeded from (estimator seed, step), and an
optimizer step. The estimator's estimate covers every trainable parameter: the part through q
and the cost's direct term (the ordinary gradient of the rest), so nothing is special-cased.

An estimator with a warm-up (a fitted surrogate or control variate) refits it every
`refit_every` steps at the current parameters on that step's minibatch; its time and
evaluations of f count as training.

At each evaluation step, untimed: the objective on a fixed evaluation minibatch (mean of f over
`variance_draws` draws, with its SE), trainer.evaluate() with a generator seeded from (data
seed, step), and the gradient variance on that minibatch from `variance_draws` estimates: total
and per parameter tensor (gradbench.core.trace_variance), of the trajectory's estimator and of
each basket variant (which, if it has a warm-up, is fitted there first). Evaluation draws from
its own seeds, so it never changes the trajectory.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gradbench.app.optimizers import make_optimizer
from gradbench.app.planning import DTYPES
from gradbench.app.timing import device_name, synchronize
from gradbench.app.train_plan import Trajectory
from gradbench.core.estimator import Estimator, get_estimator
from gradbench.core.problem import Problem
from gradbench.core.schema import family_column
from gradbench.core.seeding import derive_seed, seeded
from gradbench.core.suite import get_suite
from gradbench.core.trace_variance import TOTAL, trace_variances
from gradbench.results.store import canonical_json

# Set by the CLI around an in-process run: called as (trajectory_id, steps done) at every
# evaluation step, for a progress bar finer than one tick per trajectory. Worker processes
# never have it (their parent counts finished trajectories).
_progress: list[Callable[[str, int], None]] = []


@contextmanager
def progress_hook(hook: Callable[[str, int], None]) -> Iterator[None]:
    _progress.append(hook)
    try:
        yield
    finally:
        _progress.remove(hook)


class MinibatchSchedule:
    """Rows of step t: positions t B .. (t + 1) B - 1 of an endless sequence of epochs, each a
    permutation of range(rows) seeded by (seed, epoch): a pure function of (seed, t)."""

    def __init__(self, rows: int, batch: int, seed: int) -> None:
        if rows < 1 or batch < 1:
            raise ValueError(f"a minibatch schedule needs rows >= 1 and batch >= 1, not "
                             f"{rows} and {batch}")
        self.total, self.batch, self.seed = rows, batch, seed
        self._epochs: dict[int, Tensor] = {}

    def _epoch(self, epoch: int) -> Tensor:
        if epoch not in self._epochs:
            if len(self._epochs) > 2:  # steps go forward: older epochs are done with
                self._epochs.pop(min(self._epochs))
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._epochs[epoch] = torch.randperm(self.total, generator=gen)
        return self._epochs[epoch]

    def rows(self, step: int) -> Tensor:
        start = step * self.batch
        first, last = start // self.total, (start + self.batch - 1) // self.total
        if first == last:  # the usual case: one epoch's slice
            offset = start - first * self.total
            return self._epoch(first)[offset:offset + self.batch]
        positions = torch.arange(start, start + self.batch)
        epochs = torch.stack([self._epoch(e) for e in range(first, last + 1)])
        return epochs[positions // self.total - first, positions % self.total]

    def evaluation_rows(self, seed: int) -> Tensor:
        """The fixed minibatch every evaluation step measures on, drawn with `seed`."""
        gen = torch.Generator().manual_seed(seed)
        return torch.randperm(self.total, generator=gen)[: self.batch]


@dataclass
class _Progress:
    """What a trajectory has spent so far (training only)."""

    seconds: float = 0.0
    estimator_seconds: float = 0.0
    problem_seconds: float = 0.0
    evals: float = 0.0
    diverged_at: int = -1
    state: dict[str, Any] = field(default_factory=dict)  # the estimator's warm-up state


@dataclass(frozen=True)
class _Measured:
    estimator: Estimator
    hyperparams: dict[str, Any]
    own: bool


def flat_parameters(initial: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """One flat vector holding copies of every tensor, and the tensors as views into it (same
    names and shapes): the optimizer updates the vector, the trainer sees the tensors."""
    values = list(initial.values())
    kinds = {(v.dtype, v.device) for v in values}
    if len(kinds) != 1:
        raise ValueError(f"trainable parameters must share one dtype and device, not {kinds}")
    flat = torch.cat([v.detach().reshape(-1) for v in values]).clone()
    views, offset = {}, 0
    for name, value in initial.items():
        views[name] = flat[offset:offset + value.numel()].view(value.shape)
        offset += value.numel()
    return flat, views


_MASK64 = (1 << 64) - 1


def step_seed(base: int, step: int) -> int:
    """A 63-bit seed for step `step` of a stream seeded by `base`: SplitMix64's finaliser of
    base + (step + 1) * golden gamma (Steele et al. 2014). Per step, derive_seed's JSON and
    SHA-256 cost more than a small model's whole update; this mixes as well for seeding."""
    z = (base + (step + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def _reseed(device: torch.device, seed: int) -> None:
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


def _warmup(estimator: Estimator, problem: Problem, hyper: dict[str, Any]) -> dict[str, Any]:
    return {} if estimator.warmup is None else {"state": estimator.warmup(problem, **hyper)}


def run_trajectory(traj: Trajectory) -> dict[str, list]:
    """The trajectory's rows as columns of plain values (see gradbench.core.schema's
    TRAINING_COLUMNS): one per evaluation step and measured estimator."""
    device = torch.device(traj.device)
    if device.type == "cuda":
        with torch.cuda.device(device):  # seeded() seeds the current CUDA device
            return _Loop(traj, device).run()
    return _Loop(traj, device).run()


class _Loop:
    """One trajectory's training loop and the measurements at its evaluation steps."""

    def __init__(self, traj: Trajectory, device: torch.device) -> None:
        self.traj, self.device = traj, device
        self.trainer = get_suite(traj.suite).trainer(traj.settings_dict(), device,
                                                     DTYPES[traj.dtype])
        self.estimator = get_estimator(traj.estimator)
        self.hyper = traj.hyperparams_dict()
        self.measured = [_Measured(self.estimator, self.hyper, True)] + [
            _Measured(get_estimator(name), dict(hyper), False) for name, _, hyper in traj.basket]
        self.flat, self.params = flat_parameters(self.trainer.initial())
        self.optimizer = make_optimizer(traj.optimizer, self.flat, traj.learning_rate)
        self.estimator_seed = traj.estimator_seed  # derived once: a hash of the whole key
        self.step_base = derive_seed(self.estimator_seed, "step")
        self.schedule = MinibatchSchedule(self.trainer.train_rows, self.trainer.batch,
                                          traj.data_seed)
        self.evaluation_rows = self.schedule.evaluation_rows(traj.evaluation_seed)
        self.progress = _Progress()
        self.evals_per_step: float | None = None

    def run(self) -> dict[str, list]:
        traj = self.traj
        eval_steps = set(traj.eval_steps())
        records: list[dict[str, Any]] = []
        with seeded(traj.estimator_seed, self.device):  # one fork, reseeded per step
            for step in range(traj.steps + 1):
                if step % traj.refit_every == 0 and step < traj.steps:
                    self.refit(step)
                if step in eval_steps:
                    records += self.evaluate(step)
                    for hook in _progress:
                        hook(traj.trajectory_id, step)
                if step == traj.steps or not self.train_step(step):
                    break
        if self.progress.diverged_at >= 0:
            for record in records:
                record["diverged_at"] = self.progress.diverged_at
        return _columns(records)

    def refit(self, step: int) -> None:
        """Fit the estimator's warm-up state (if it has one) at the current parameters on this
        step's minibatch; training time and evaluations."""
        if self.estimator.warmup is None:
            return
        progress, start = self.progress, time.perf_counter()
        rows = self.schedule.rows(step)
        built = time.perf_counter()
        problem = self.trainer.problem(self.params, rows)
        _reseed(self.device, derive_seed(self.estimator_seed, "refit", step))
        called = time.perf_counter()
        progress.state = _warmup(self.estimator, problem, self.hyper)
        synchronize(self.device)
        returned = time.perf_counter()
        progress.evals += self.estimator.warmup_evals_total(problem, self.hyper)
        progress.problem_seconds += called - built
        progress.estimator_seconds += returned - called
        progress.seconds += time.perf_counter() - start

    def train_step(self, step: int) -> bool:
        """One optimizer step; False (and progress.diverged_at set) when the new parameters are
        not finite, which ends training (the rows so far are kept; no later step is
        evaluated)."""
        progress, start = self.progress, time.perf_counter()
        rows = self.schedule.rows(step)
        built = time.perf_counter()
        problem = self.trainer.problem(self.params, rows)
        _reseed(self.device, step_seed(self.step_base, step))
        called = time.perf_counter()
        estimates = self.estimator.fn(problem, 1, **self.hyper, **progress.state)
        if self.device.type == "cuda":
            synchronize(self.device)
        returned = time.perf_counter()
        self.optimizer.step(torch.cat([estimates[name][0].reshape(-1) for name in self.params]))
        if self.evals_per_step is None:  # fixed by the minibatch's shape: ask once
            self.evals_per_step = self.estimator.evals_per_estimate(problem, self.hyper)
        progress.evals += self.evals_per_step
        progress.problem_seconds += called - built
        progress.estimator_seconds += returned - called
        progress.seconds += time.perf_counter() - start
        # A NaN or Inf in the gradient reaches the parameters through SGD and Adam alike (and
        # so does an overflowing step): one check of the parameters covers both.
        if not math.isfinite(float(self.flat.sum())):
            progress.diverged_at = step
            return False
        return True

    def evaluate(self, step: int) -> list[dict[str, Any]]:
        """The rows of an evaluation step (untimed): one per measured estimator."""
        traj, data_seed = self.traj, self.traj.data_seed
        problem = self.trainer.problem(self.params, self.evaluation_rows)
        with seeded(derive_seed(data_seed, "objective", step), self.device):
            objective = problem.cost(problem.q().sample((traj.variance_draws,)), problem.params)
        generator = torch.Generator(self.device).manual_seed(
            derive_seed(data_seed, "evaluate", step))
        metrics = self.trainer.evaluate(self.params, generator)
        common = self.common_columns(step, objective.detach(), metrics)
        rows = []
        for item in self.measured:
            variance = self.variance(problem, item, step)
            rows.append({**common, **variance,
                         "variance_of": item.estimator.name,
                         "variance_of_hyperparams": canonical_json(item.hyperparams),
                         "evals_per_estimate": item.estimator.evals_per_estimate(
                             problem, item.hyperparams),
                         "own_variance": item.own})
        return rows

    def variance(self, problem: Problem, item: _Measured, step: int) -> dict[str, float]:
        """Total and per-tensor variance of one estimate of `item` at the current parameters."""
        seed = derive_seed(self.estimator_seed, "variance", item.estimator.name,
                           canonical_json(item.hyperparams), step)
        with seeded(seed, self.device):
            state = (self.progress.state if item.own
                     else _warmup(item.estimator, problem, item.hyperparams))
            estimates = item.estimator.fn(problem, self.traj.variance_draws, **item.hyperparams,
                                          **state)
        spread = trace_variances({name: estimates[name] for name in self.params})
        out = {"variance": spread[TOTAL].value, "variance_se": spread[TOTAL].se}
        for name in self.params:
            out[family_column("variance", name)] = spread[name].value
            out[family_column("variance_se", name)] = spread[name].se
        return out

    def common_columns(self, step: int, objective: Tensor, metrics: dict[str, Any]
                       ) -> dict[str, Any]:
        """The columns every row of an evaluation step shares."""
        traj, progress, draws = self.traj, self.progress, int(objective.numel())
        finite = objective[torch.isfinite(objective)]
        columns: dict[str, Any] = {
            **_key_columns(traj, self.estimator, int(self.trainer.batch)),
            "step": step, "seconds": progress.seconds,
            "estimator_seconds": progress.estimator_seconds,
            "problem_seconds": progress.problem_seconds, "evals": progress.evals,
            "objective": float(finite.mean()) if len(finite) else math.nan,
            "objective_se": (float(finite.std() / math.sqrt(len(finite))) if len(finite) > 1
                             else math.nan),
            "objective_name": str(self.trainer.objective),
            "device_name": device_name(self.device), "diverged_at": -1,
            "evaluations": json.dumps([{"name": name, "higher_is_better":
                                        bool(m.higher_is_better)} for name, m in metrics.items()],
                                      separators=(",", ":")),
        }
        if len(finite) < draws:  # a diverging estimate of f is reported, not averaged in
            columns["objective"] = math.nan
        for name, metric in metrics.items():
            columns[family_column("eval", name)] = float(metric.value)
            columns[family_column("eval_se", name)] = float(metric.se)
        return columns


def _key_columns(traj: Trajectory, estimator: Estimator, minibatch: int) -> dict[str, Any]:
    return {
        "suite": traj.suite, "suite_version": traj.suite_version,
        "settings": canonical_json(traj.settings_dict()), **traj.settings_dict(),
        "estimator": traj.estimator, "estimator_version": traj.estimator_version,
        "hyperparams": canonical_json(traj.hyperparams_dict()), **traj.hyperparams_dict(),
        "estimator_family": estimator.family, "unbiased": estimator.unbiased,
        "device": traj.device, "dtype": traj.dtype, "seed": traj.seed,
        "optimizer": traj.optimizer, "learning_rate": traj.learning_rate,
        "train_steps": traj.steps, "eval_every": traj.eval_every,
        "refit_every": traj.refit_every, "variance_draws": traj.variance_draws,
        "minibatch": minibatch, "trajectory_id": traj.trajectory_id,
        "trajectory_seed": traj.trajectory_seed,
    }


def _columns(records: list[dict[str, Any]]) -> dict[str, list]:
    """Rows -> columns; a family column some row lacks is NaN there."""
    names = list(dict.fromkeys(name for record in records for name in record))
    return {name: [record.get(name, math.nan) for record in records] for name in names}
