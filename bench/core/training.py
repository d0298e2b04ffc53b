"""Training trajectories: the contract between a trainable suite and `bench train`.

A suite that can be trained registers `trainer=` (a function of its settings, device and dtype,
like the builder) returning a Trainer. `bench train` owns everything else: the optimizer, the
minibatch schedule, seeding, evaluation cadence, variance measurements, results and resume.

Every trainable parameter is a parameter of the Problem the trainer builds for a minibatch: the
distribution q depends on some of them (an encoder's), the cost depends directly on the others
(a decoder's, prior logits). An estimator's gradient of E_q[f_theta] then covers both: the part
through q is what estimators differ in, and the rest is the direct term every estimator adds
(gradbench.core.problem), i.e. the ordinary gradient, with no special case.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from gradbench.core.problem import Problem

Params = Mapping[str, Tensor]


@dataclass(frozen=True)
class Evaluation:
    """One evaluation metric: its value and standard error (0 when exact). `higher_is_better`
    says which way the report's target and final table read it."""

    value: float
    se: float = 0.0
    higher_is_better: bool = True


class Trainer(Protocol):
    """What a trainable suite provides.

    initial(): the parameters every trajectory starts from (the same for every estimator and
        seed, so trajectories differ only by the estimator and the draws).
    train_rows: the size of the training set; `bench train` draws minibatch row indices from
        range(train_rows) with its own seeded generator.
    batch: the default minibatch size.
    objective: the name of the training objective, minimised (e.g. "negative ELBO"); the
        Problem's E_q[f] is its minibatch estimate, scaled as the suite documents.
    problem(params, rows): the gradient problem at `params` on minibatch `rows` (an int64 tensor
        of row indices). Its `params` are the trainable parameters (same names and shapes as
        initial()), and it must not keep references that later steps would mutate.
    evaluate(params, generator): named metrics at `params` (exact objective where enumerable or
        closed form, a held-out multi-sample bound, distance to a known optimum, ...), using only
        `generator` for randomness so evaluations are reproducible. Their order is kept: the
        first is the report's primary metric (the target of "steps to reach a target").

    Optional attributes, read with getattr (a trainer without them gets bench train's defaults):
    estimators: names of the estimators `bench train` uses when none are given (default:
        every estimator registered as unbiased that applies).
    learning_rate, optimizer ("sgd" or "adam"): the step size and optimizer the model trains
        well with when --lr / --optimizer are not given (defaults 1e-3, "adam").
    """

    train_rows: int
    batch: int
    objective: str

    def initial(self) -> dict[str, Tensor]: ...

    def problem(self, params: Params, rows: Tensor) -> Problem: ...

    def evaluate(self, params: Params, generator: torch.Generator) -> dict[str, Evaluation]: ...


TrainerFactory = Callable[..., Trainer]  # (**settings, device=, dtype=) -> Trainer
