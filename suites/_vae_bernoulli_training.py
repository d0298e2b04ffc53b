"""Training the binary-latent VAE: the problem builder shared by the suite and its Trainer, the
Trainer (gradbench.core.training), and the suite's reference run that makes its checkpoints.

Trainer: every tensor of the model (encoder, decoder, prior logits) is a parameter of the
Problem; q depends on the encoder's, the cost directly on all of them (log q on the encoder's,
log p(x|z) on the decoder's, log p(z) on the prior's), so an estimator's gradient covers the
decoder and prior through the direct term. Trajectories start from the suite's `point` (the
checkpoint after that many reference-run steps; the initialisation for "init").

evaluate(): the held-out importance-weighted bound (64 draws, with its Monte Carlo SE) for any
K; for K <= 16 the exact held-out log-likelihood and negative ELBO (enumeration, 297 rows); for
K <= EXACT_TRAIN_MAX the exact training objective on all 1,500 training rows. The training
objective at K = 16 would take seconds per evaluation (1,500 rows x 65,536 states), hence the
lower limit there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import Bernoulli

from gradbench.core.capabilities import BlockSeparableCost, DifferentiableCost, RelaxedCost
from gradbench.core.problem import Problem
from gradbench.core.seeding import derive_seed
from gradbench.core.training import Evaluation
from gradbench.suites import _binary_vae as model
from gradbench.suites import _bounds
from gradbench.suites._digits import binarised, heldout_rows, training_rows

EXACT_TRAIN_MAX = 12
REFERENCE_LR = 3e-3
REFERENCE_BATCH = 32


def build_problem(x: Tensor, params: Mapping[str, Tensor], fixed: Mapping[str, Tensor],
                  settings: Mapping[str, object], truth: dict[str, Tensor] | None = None,
                  truth_method: str = "none", truth_se: dict[str, Tensor] | None = None
                  ) -> Problem:
    """The gradient problem of the mean negative ELBO over the rows of x [B, 64]: `params` are
    differentiated (at least the encoder's), `fixed` completes the model."""

    # Data and fixed tensors follow the dtype of the parameters they meet (a no-op but for
    # exact enumeration, which runs in float64 whatever dtype the problem was built in).
    def full(p: Mapping[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
        return {**{k: v.to(dtype) for k, v in fixed.items()}, **p}

    def distribution(**p: Tensor) -> Bernoulli:
        dtype = next(iter(p.values())).dtype
        return Bernoulli(logits=model.encoder_logits(x.to(dtype), p), validate_args=False)

    def terms(z: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        return model.point_costs(x.to(z.dtype), z, full(p, z.dtype))

    return Problem(
        params=dict(params),
        distribution=distribution,
        cost=lambda z, p: terms(z, p).sum(-1),
        exact_gradient=truth,
        truth_method=truth_method,
        truth_se=truth_se,
        settings=dict(settings),
        data={"x": x},
        # f is a smooth function of z on [0, 1]^K (the Bernoulli log-density formulas and the
        # decoder are defined there), and it is a sum over data points of f_n(z_n).
        capabilities=(DifferentiableCost(), RelaxedCost(), BlockSeparableCost(terms)),
    )


# ---------------------------------------------------------------- the reference run


class _Adam:
    """Adam (Kingma & Ba 2015), default betas and eps, in place on float64 tensors. Written out
    rather than torch.optim.Adam, whose first construction imports torch._dynamo (seconds, in
    every worker process)."""

    def __init__(self, values: list[Tensor], lr: float) -> None:
        self.values, self.lr, self.t = values, lr, 0
        self.m = [torch.zeros_like(v) for v in values]
        self.v = [torch.zeros_like(v) for v in values]

    @torch.no_grad()
    def step(self, grads: list[Tensor]) -> None:
        self.t += 1
        for value, grad, m, v in zip(self.values, grads, self.m, self.v, strict=True):
            m.mul_(0.9).add_(grad, alpha=0.1)
            v.mul_(0.999).addcmul_(grad, grad, value=0.001)
            denominator = (v / (1 - 0.999**self.t)).sqrt_().add_(1e-8)
            value.addcdiv_(m, denominator, value=-self.lr / (1 - 0.9**self.t))


def reference_gradient_step(x: Tensor, t: Mapping[str, Tensor], nonlinear: bool,
                            generator: torch.Generator) -> dict[str, Tensor]:
    """One draw z ~ q per row of x; the encoder's gradient by local expectation (through its
    logits), the decoder's and prior's as the ordinary gradient of f at z. Unbiased for the
    gradient of the minibatch's negative ELBO w.r.t. every tensor."""
    names = model.encoder_names(nonlinear)
    leaves = {k: v.detach().requires_grad_(True) for k, v in t.items()}
    fixed = {k: v.detach() for k, v in t.items()}
    with torch.no_grad():
        probs = torch.sigmoid(model.encoder_logits(x, fixed))
        z = (torch.rand(1, *probs.shape, generator=generator, dtype=x.dtype) < probs
             ).to(x.dtype)
        g = model.logit_gradients(x, z, fixed)[0]
    with torch.enable_grad():
        encoder_part = (model.encoder_logits(x, leaves) * g).sum()
        # The encoder's direct term (the score of log q) is inside the local expectation.
        rest = model.point_costs(x, z, {**leaves, **{k: fixed[k] for k in names}}).sum()
        grads = torch.autograd.grad(encoder_part + rest, list(leaves.values()))
    return dict(zip(leaves, grads, strict=True))


@dataclass
class _ReferenceRun:
    """The reference run of one (latents, nonlinear): its state, advanced on demand, and the
    snapshots taken so far."""

    latents: int
    nonlinear: bool
    step: int = 0
    snapshots: dict[int, dict[str, Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.params = initial_tensors(self.latents, self.nonlinear)
        self.adam = _Adam(list(self.params.values()), REFERENCE_LR)
        self.generator = torch.Generator().manual_seed(
            derive_seed("vae-bernoulli reference run", self.latents, self.nonlinear))
        self.train = training_rows(binarised())
        self.snapshots[0] = {k: v.clone() for k, v in self.params.items()}

    def advance(self, to: int) -> None:
        while self.step < to:
            rows = torch.randint(0, self.train.shape[0], (REFERENCE_BATCH,),
                                 generator=self.generator)
            grads = reference_gradient_step(self.train[rows], self.params, self.nonlinear,
                                            self.generator)
            self.adam.step([grads[k] for k in self.params])
            self.step += 1
        self.snapshots[to] = {k: v.clone() for k, v in self.params.items()}


# (latents, nonlinear) -> the reference run, advanced as far as any checkpoint asked so far.
_RUNS: dict[tuple[int, bool], _ReferenceRun] = {}


def checkpoint(latents: int, nonlinear: bool, steps: int) -> dict[str, Tensor]:
    """The model's tensors (float64, CPU) after `steps` steps of the reference run (copies).
    Runs are advanced on demand and their snapshots kept, so a grid's checkpoints cost one run
    to the largest of them."""
    key = (latents, nonlinear)
    run = _RUNS.get(key)
    if run is None:
        run = _RUNS[key] = _ReferenceRun(latents, nonlinear)
    if steps not in run.snapshots:
        if steps < run.step:  # behind the run's state: replay from the start, keep snapshots
            replay = _ReferenceRun(latents, nonlinear)
            replay.snapshots.update(run.snapshots)
            run = _RUNS[key] = replay
        run.advance(steps)
    return {k: v.clone() for k, v in run.snapshots[steps].items()}


def initial_tensors(latents: int, nonlinear: bool) -> dict[str, Tensor]:
    """The initialisation every reference run and trajectory starts from."""
    seed = derive_seed("vae-bernoulli initial", latents, nonlinear)
    return model.initial_tensors(latents, nonlinear, training_rows(binarised()).mean(0), seed)


# ---------------------------------------------------------------- trainer


@dataclass
class BinaryVAETrainer:
    """Trains encoder, decoder and prior logits of the binary VAE on the training rows, from
    the reference run's checkpoint after `steps` steps (0: the initialisation)."""

    latents: int
    batch: int
    steps: int
    nonlinear: bool
    device: torch.device
    dtype: torch.dtype
    objective: str = "negative ELBO (nats per image, minibatch mean)"
    train_rows: int = 1500
    _train: Tensor = field(init=False, repr=False)
    # bench train's defaults for this suite: the three (a leave-one-out baseline, the
    # ARM family's best, a learned control variate), and the reference run's Adam step size.
    estimators: ClassVar[tuple[str, ...]] = ("disarm", "score-function-loo", "relax")
    learning_rate: ClassVar[float] = REFERENCE_LR
    optimizer: ClassVar[str] = "adam"

    def __post_init__(self) -> None:
        self._train = training_rows(binarised()).to(self.device, self.dtype)
        self.train_rows = self._train.shape[0]

    def initial(self) -> dict[str, Tensor]:
        t = checkpoint(self.latents, self.nonlinear, self.steps)
        return {k: v.to(self.device, self.dtype) for k, v in t.items()}

    def problem(self, params: Mapping[str, Tensor], rows: Tensor) -> Problem:
        own = {name: value.detach().clone() for name, value in params.items()}
        settings = {"latents": self.latents, "batch": int(rows.numel()),
                    "nonlinear": self.nonlinear}
        return build_problem(self._train[rows.to(self.device)], own, {}, settings)

    def evaluate(self, params: Mapping[str, Tensor], generator: torch.Generator
                 ) -> dict[str, Evaluation]:
        """The primary metric first (bench train's target): the exact training objective where
        it is cheap (K <= EXACT_TRAIN_MAX), else the exact held-out negative ELBO (K <= 16),
        else the held-out IWAE bound; then the others of those that apply."""
        t = {k: v.detach().to("cpu", torch.float64) for k, v in params.items()}
        heldout = heldout_rows(binarised())
        out: dict[str, Evaluation] = {}
        with torch.no_grad():
            if self.latents <= EXACT_TRAIN_MAX:
                value = float(model.exact_negative_elbo(training_rows(binarised()), t))
                out["train_negative_elbo"] = Evaluation(value, 0.0, higher_is_better=False)
            if self.latents <= model.MAX_ENUMERATED:
                value = float(model.exact_negative_elbo(heldout, t))
                out["heldout_negative_elbo"] = Evaluation(value, 0.0, higher_is_better=False)
                out["heldout_log_likelihood"] = Evaluation(
                    float(model.exact_log_likelihood(heldout, t)), 0.0, higher_is_better=True)
            out["heldout_iw_bound"] = _bounds.importance_weighted(
                _log_weights(heldout, t, generator))
        return out


def _log_weights(x: Tensor, t: Mapping[str, Tensor], generator: torch.Generator) -> Tensor:
    """log p(x_r, z) - log q(z | x_r) for GROUPS x DRAWS draws z ~ q per row: [J, S, R]."""
    groups, draws = _bounds.GROUPS, _bounds.DRAWS
    probs = torch.sigmoid(model.encoder_logits(x, t))
    # Drawn where the generator lives (the trajectory's device), used where the rows are.
    u = torch.rand(groups * draws, *probs.shape, generator=generator, dtype=x.dtype,
                   device=generator.device).to(probs.device)
    z = (u < probs).to(x.dtype)
    log_w = -model.point_costs(x, z, t) * x.shape[0]  # point_costs holds -log w / R per row
    return log_w.reshape(groups, draws, x.shape[0])
