"""Planning `bench train`: a request (suite, estimators, --set, optimizer, steps, seeds, ...) is
validated and expanded into trajectories, one per suite setting x estimator x hyperparameters x
seed, each a pure function of its key (gradbench.app.train_run computes one)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gradbench.app.errors import BenchError
from gradbench.app.optimizers import OPTIMIZERS
from gradbench.app.planning import (
    DTYPES,
    Skip,
    _hyper_grid,
    _refuse_inapplicable,
    _split_overrides,
    check_device,
    check_seed,
)
from gradbench.core.estimator import Estimator, all_estimators, get_estimator
from gradbench.core.names import unknown_name
from gradbench.core.seeding import derive_seed
from gradbench.core.suite import Suite, all_suites, get_suite
from gradbench.core.training import Trainer

# Defaults of `bench train`: 3 seeds of 1,000 Adam steps, 11 evaluation points with 100 draws
# each for the variance (its relative SE is about sqrt(2 / 100) = 14%), warm-ups refitted at
# steps 0 and 500. On binary-latent (its default estimators score-function-loo, disarm, relax)
# that is 9 trajectories; relax's two refits (200 Adam steps x 64 draws each, ~4.4 s CPU) are
# most of its cost.
STEPS, SEEDS, EVAL_EVERY, REFIT_EVERY = 1000, 3, 100, 500
LEARNING_RATE, OPTIMIZER, VARIANCE_DRAWS = 1e-3, "adam", 100

Variant = tuple[str, int, tuple[tuple[str, Any], ...]]  # (estimator, version, hyperparameters)


@dataclass(frozen=True)
class Trajectory:
    """One training run of one estimator variant from the suite's initial parameters. Its key
    fixes every seed, so its rows are the same on every executor and after a resume."""

    suite: str
    settings: tuple[tuple[str, Any], ...]
    estimator: str
    hyperparams: tuple[tuple[str, Any], ...]
    device: str
    dtype: str
    seed: int
    steps: int
    eval_every: int
    refit_every: int
    optimizer: str
    learning_rate: float
    variance_draws: int
    basket: tuple[Variant, ...] = ()  # other variants whose variance is measured at its points
    suite_version: int = 1
    estimator_version: int = 1

    @property
    def key(self) -> tuple:
        return (self.suite, self.suite_version, self.settings, self.estimator,
                self.estimator_version, self.hyperparams, self.device, self.dtype, self.seed,
                self.steps, self.eval_every, self.refit_every, self.optimizer,
                self.learning_rate, self.variance_draws, self.basket)

    @property
    def trajectory_seed(self) -> int:
        return derive_seed(*self.key)

    @property
    def trajectory_id(self) -> str:
        return f"{self.trajectory_seed:016x}"

    @property
    def task_id(self) -> str:
        """What executors key tasks by."""
        return self.trajectory_id

    @property
    def data_seed(self) -> int:
        """Seeds the minibatch schedule, the evaluation minibatch and evaluate(): shared by all
        estimators at one seed (common random numbers: their curves differ by the estimator)."""
        return derive_seed(self.suite, self.suite_version, self.settings, self.dtype, self.seed,
                           "data")

    @property
    def evaluation_seed(self) -> int:
        """Seeds the fixed evaluation minibatch: one for every estimator and seed at these
        settings, so their objectives and variances are measured on the same rows."""
        return derive_seed(self.suite, self.suite_version, self.settings, self.dtype,
                           "evaluation minibatch")

    @property
    def estimator_seed(self) -> int:
        """Seeds the estimator's draws, step by step. Independent of the optimizer, learning rate
        and evaluation cadence, so those change the path only through the parameters."""
        return derive_seed(self.data_seed, self.estimator, self.estimator_version,
                           self.hyperparams, self.refit_every, "estimator")

    def settings_dict(self) -> dict[str, Any]:
        return dict(self.settings)

    def hyperparams_dict(self) -> dict[str, Any]:
        return dict(self.hyperparams)

    def eval_steps(self) -> list[int]:
        """Steps at which the trajectory is evaluated: 0, eval_every, ..., and the last."""
        return sorted({*range(0, self.steps, self.eval_every), self.steps})


@dataclass(frozen=True)
class TrainRequest:
    """What the user asked `bench train` for; validated and expanded by `plan_training`."""

    suite: str
    estimators: Sequence[str] = ()  # empty: the trainer's `estimators`, else every unbiased one
    overrides: Mapping[str, Sequence[str]] = field(default_factory=dict)
    steps: int = STEPS
    seeds: int = SEEDS
    seed: int = 0
    eval_every: int = EVAL_EVERY
    refit_every: int = REFIT_EVERY
    learning_rate: float | None = None  # None: the trainer's `learning_rate`, else LEARNING_RATE
    optimizer: str | None = None  # None: the trainer's `optimizer`, else OPTIMIZER
    variance_draws: int = VARIANCE_DRAWS
    basket: bool = False
    device: str = "cpu"
    dtype: str = "float64"


@dataclass
class TrainPlan:
    suite: str
    trajectories: list[Trajectory]
    skipped: list[Skip] = field(default_factory=list)


def trainable_suites() -> list[str]:
    return [name for name, suite in all_suites().items() if suite.trainable]


def _check_numbers(request: TrainRequest) -> None:
    for name, value, least in (("--steps", request.steps, 1), ("--seeds", request.seeds, 1),
                               ("--eval-every", request.eval_every, 1),
                               ("--refit-every", request.refit_every, 1),
                               ("--variance-draws", request.variance_draws, 2)):
        if value < least:
            raise BenchError(f"{name} {value}: need at least {least}")
    _check_optimizer(request.optimizer, request.learning_rate, "--optimizer", "--lr")
    if request.dtype not in DTYPES:
        raise unknown_name("dtype", request.dtype, DTYPES)
    check_seed(request.seed)
    check_seed(request.seed + request.seeds - 1)


def _check_optimizer(optimizer: str | None, learning_rate: float | None, where: str,
                     lr_where: str) -> None:
    if learning_rate is not None and not (math.isfinite(learning_rate) and learning_rate > 0):
        raise BenchError(f"{lr_where} {learning_rate}: need a finite learning rate > 0")
    if optimizer is not None and optimizer not in OPTIMIZERS:
        raise unknown_name(f"optimizer ({where})", optimizer, OPTIMIZERS)


def optimizer_for(request: TrainRequest, trainer: Trainer, suite: str) -> tuple[str, float]:
    """The request's optimizer and learning rate, else the trainer's optional `optimizer` and
    `learning_rate` attributes (a suite knows what step size its model takes), else the
    defaults."""
    optimizer = request.optimizer or getattr(trainer, "optimizer", None) or OPTIMIZER
    learning_rate = request.learning_rate or getattr(trainer, "learning_rate", None)
    learning_rate = float(learning_rate or LEARNING_RATE)
    _check_optimizer(optimizer, learning_rate, f"the trainer of {suite}",
                     f"the trainer of {suite}: learning_rate")
    return optimizer, learning_rate


def trainable_suite(name: str) -> Suite:
    suite = get_suite(name)
    if not suite.trainable:
        names = trainable_suites()
        raise BenchError(f"suite {name} cannot be trained (it registers no trainer); suites "
                         f"that can: {', '.join(names) or 'none registered'}")
    return suite


def _setting_grid(suite: Suite, chosen: list[Estimator],
                  overrides: Mapping[str, Sequence[str]]
                  ) -> tuple[list[dict[str, Any]], dict[tuple[str | None, str], list[Any]]]:
    """Settings: the first of each default grid (a suite's grid is for bench run) unless --set
    gives values; their cross product. Other keys are hyperparameters, as in bench run."""
    settings, hypers = _split_overrides(suite, chosen, overrides)
    for name, spec in suite.settings.items():
        if name not in overrides:
            settings[name] = [spec.defaults[0]]
    grid = [dict(zip(settings, combo, strict=True))
            for combo in itertools.product(*settings.values())]
    return grid, hypers


def _trainer(suite: Suite, settings: dict[str, Any], device: str, dtype: str) -> Trainer:
    try:
        return suite.trainer(settings, device=device, dtype=DTYPES[dtype])
    except ValueError as error:  # an invalid combination of settings: bad input
        raise BenchError(str(error)) from None


def default_estimators(trainer: Trainer) -> list[str]:
    """The trainer's own choice (an optional `estimators` attribute), else every registered
    estimator that is unbiased by design (those that do not apply are skipped)."""
    named = getattr(trainer, "estimators", None)
    if named:
        return list(named)
    return [name for name, est in all_estimators().items() if est.unbiased]


def plan_training(request: TrainRequest) -> TrainPlan:
    """Validate a request and expand it into trajectories (and the inapplicable estimators)."""
    suite = trainable_suite(request.suite)
    _check_numbers(request)
    device = check_device(request.device)
    names = list(dict.fromkeys(request.estimators))
    chosen = [get_estimator(name) for name in names]
    # Without -e the estimators are the trainer's choice, known per setting: check hyperparameter
    # overrides against every registered estimator (a key none of them has is still refused).
    grid, hypers = _setting_grid(suite, chosen or list(all_estimators().values()),
                                 request.overrides)
    trajectories: list[Trajectory] = []
    skipped: list[Skip] = []
    for settings in grid:
        trainer = _trainer(suite, settings, "cpu", request.dtype)
        here = chosen or [get_estimator(name) for name in default_estimators(trainer)]
        problem = trainer.problem(trainer.initial(), torch.arange(trainer.batch))
        key = tuple(settings.items())
        applicable = []
        for estimator in here:
            why_not = estimator.applicability(problem)
            if why_not is None:
                applicable.append(estimator)
            else:
                skipped.append(Skip(key, estimator.name, why_not))
        variants = [(e, tuple(h.items())) for e in applicable for h in _hyper_grid(e, hypers)]
        basket = tuple((e.name, e.version, h) for e, h in variants) if request.basket else ()
        optimizer, learning_rate = optimizer_for(request, trainer, suite.name)
        for (estimator, hyper), seed in itertools.product(variants, _seeds(request)):
            trajectories.append(Trajectory(
                suite.name, key, estimator.name, hyper, device, request.dtype, seed,
                request.steps, request.eval_every, request.refit_every, optimizer,
                learning_rate, request.variance_draws,
                tuple(v for v in basket if (v[0], v[2]) != (estimator.name, hyper)),
                suite.version, estimator.version))
    if chosen:
        _refuse_inapplicable(suite, chosen, skipped, len(grid))
    if not trajectories:
        raise BenchError(f"no estimator applies to suite {suite.name} at these settings; "
                         "run `bench list` to see what applies where")
    return TrainPlan(suite.name, trajectories, skipped)


def _seeds(request: TrainRequest) -> range:
    return range(request.seed, request.seed + request.seeds)

