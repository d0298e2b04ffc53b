"""vae-gaussian: the linear-Gaussian VAE on scikit-learn's digits, with a closed-form ELBO.

Model and derivations: suites/_linear_gaussian.py. The decoder sits at the probabilistic-PCA
maximum-likelihood solution of the training rows (W with orthogonal columns), where the mean-field
encoder can reach the exact posterior; the gradient is taken with respect to the encoder
(A, b, log_s) on a minibatch (the first `batch` training rows), of the minibatch mean of the
negative ELBO.

`encoder` places the encoder on a straight path in parameter space,

    (A, b, log_s) = t (A*, b*, log_s*),   t = encoder in [0, 1],

from the initialisation t = 0 (A = 0, b = 0, log_s = 0: q(z|x) = N(0, I), the prior, for every
x) to the exact posterior t = 1. Truth: the closed-form gradient (analytic); at t = 1 it is zero.
At the PPCA decoder W^T W is diagonal, so the cost is a sum of one term per latent coordinate
(SeparableCost: measure-valued then needs 4 evaluations per estimate, not 4 per coordinate).

Why the ELBO estimators are organised as they are. The problem's cost is the per-sample negative
ELBO with the Monte Carlo KL, f = -log p(x|z) - log p(z) + log q(z|x): log q is a direct term of
the encoder's parameters, which every estimator adds (the Problem contract), so every generic
estimator stays correct on it, and `pathwise` on this cost *is* Kingma & Welling's L^A (MC-KL).
The other two variants need to see inside f, which a plain cost cannot show, so the problem
offers the NegativeELBO capability (log-likelihood, log-prior and log q pieces, and the KL in
closed form) and they are estimators that require it: `pathwise-analytic-kl` (L^B) and
`pathwise-stl` (sticking the landing: the score term of log q dropped). They are listed by
`bench list` beside `pathwise`, and refuse problems without the capability with a reason. The
score-function family applies as to any problem with a log-density (same cost, direct term
added). Variants as estimators rather than a hyperparameter of `pathwise`: their requirements
differ (a hyperparameter cannot make `pathwise` refuse a problem), and each is its own row in
every table.

The Trainer trains encoder and decoder (W, c, log_sigma) from a fixed initialisation; its exact
objective is the closed-form ELBO on the training rows, and the known optimum is the PPCA
log-likelihood (the ELBO <= log p(x) <= the PPCA maximum, with equality at the PPCA decoder and
its exact posterior), so `optimum_gap` is the distance to it in nats per image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import Normal

from gradbench.core.capabilities import (
    BlockSeparableCost,
    DifferentiableCost,
    NegativeELBO,
    SeparableCost,
)
from gradbench.core.params import at_least, between
from gradbench.core.problem import Problem
from gradbench.core.seeding import derive_seed
from gradbench.core.suite import Setting, register_suite
from gradbench.core.training import Evaluation
from gradbench.suites import _bounds
from gradbench.suites import _linear_gaussian as model
from gradbench.suites._digits import heldout_rows, minibatch, scaled, training_rows

MAX_LATENTS = 32  # PPCA on 64 pixels stays well-conditioned (sigma^2 > 0, l_K > sigma^2)


def _latents(value: int) -> str | None:
    return between(1, MAX_LATENTS)(value)


def _batch(value: int) -> str | None:
    return at_least(1)(value) or (None if value <= 1500 else "must be at most 1500 (the "
                                  "training rows)")


def build_problem(x: Tensor, params: Mapping[str, Tensor], fixed: Mapping[str, Tensor],
                  settings: Mapping[str, object], truth: dict[str, Tensor] | None = None
                  ) -> Problem:
    """The gradient problem of the mean negative ELBO over the rows of x [B, D]: `params` are
    differentiated (at least the encoder's A, b, log_s), `fixed` completes the model. A fixed
    decoder with W^T W diagonal (the PPCA one) makes the cost separable per latent coordinate,
    and the problem then offers SeparableCost too."""

    def full(p: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {**fixed, **p}

    def distribution(**p: Tensor) -> Normal:
        loc, scale = model.encoder_moments(x, p)
        return Normal(loc, scale.expand_as(loc), validate_args=False)

    def log_likelihood(z: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        return model.log_likelihood(x, z, full(p))

    def log_prior(z: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        return model.log_prior(z)

    def log_q(z: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        return model.log_q(x, z, full(p))

    def cost(z: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        t = full(p)
        return model.log_q(x, z, t) - model.log_likelihood(x, z, t) - model.log_prior(z)

    separable: tuple[SeparableCost, ...] = ()
    if "W" in fixed and model.is_diagonal(fixed["W"].T @ fixed["W"]):
        separable = (SeparableCost(lambda z, p: model.separable_terms(x, z, full(p))),)
    return Problem(
        params=dict(params),
        distribution=distribution,
        cost=cost,
        exact_gradient=truth,
        truth_method="analytic" if truth is not None else "none",
        settings=dict(settings),
        data={"x": x},
        capabilities=(
            DifferentiableCost(),
            BlockSeparableCost(lambda z, p: model.point_costs(x, z, full(p))),
            NegativeELBO(log_likelihood=log_likelihood, log_prior=log_prior, log_q=log_q,
                         kl=lambda p: model.kl(x, full(p))),
            *separable,
        ),
    )


def encoder_on_path(latents: int, t: float) -> dict[str, Tensor]:
    """The encoder at `t` on the path from the initialisation (0) to the exact posterior (1)."""
    posterior = model.ppca_of_training_rows(latents).posterior_encoder()
    return {name: t * value for name, value in posterior.items()}


def _trainer(latents: int, batch: int, encoder: float, *, device: torch.device,
             dtype: torch.dtype) -> LinearGaussianTrainer:
    return LinearGaussianTrainer(latents, batch, device, dtype)


# Default grid (6 cells): 2 and 8 latents, a minibatch of 16, and the encoder at the
# initialisation, halfway, and the exact posterior, where STL's variance is zero.
@register_suite(
    "vae-gaussian",
    offers=(DifferentiableCost, BlockSeparableCost, NegativeELBO, SeparableCost),
    settings=(
        Setting("latents", int, (2, 8), f"latent dimension K (1 to {MAX_LATENTS})", _latents),
        Setting("batch", int, (16,), "minibatch size (the first rows of the training split)",
                _batch),
        Setting("encoder", float, (0.0, 0.5, 1.0), "position on the path from the "
                "initialisation (0: q = prior) to the exact posterior (1)", between(0, 1)),
    ),
    samples=2_000,
    trainer=_trainer,
)
def vae_gaussian(latents: int, batch: int, encoder: float, *, device: torch.device,
                 dtype: torch.dtype) -> Problem:
    """Linear-Gaussian VAE on digits at the PPCA decoder; d/d encoder of the minibatch -ELBO."""
    x = minibatch(scaled(), batch)
    decoder = model.ppca_of_training_rows(latents).decoder()
    params = encoder_on_path(latents, encoder)
    truth = model.encoder_gradient(x, {**decoder, **params})

    def move(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}

    return build_problem(move({"x": x})["x"], move(params), move(decoder),
                         {"latents": latents, "batch": batch, "encoder": encoder},
                         truth=move(truth))


# ---------------------------------------------------------------- trainer


@dataclass
class LinearGaussianTrainer:
    """Trains encoder (A, b, log_s) and decoder (W, c, log_sigma) of the linear-Gaussian VAE on
    the training rows. Initialisation: the encoder at the path's start (q = prior), W with
    N(0, 0.1^2) entries from a generator seeded by the latent count, c = 0, sigma = 1. The
    suite's `encoder` setting places the encoder relative to the PPCA decoder, which training
    does not start from, so the Trainer does not use it."""

    latents: int
    batch: int
    device: torch.device
    dtype: torch.dtype
    objective: str = "negative ELBO (nats per image, minibatch mean)"
    train_rows: int = 1500
    _train: Tensor = field(init=False, repr=False)
    _heldout: Tensor = field(init=False, repr=False)
    # bench train's defaults for this suite: the ELBO estimator axis, and Adam at 1e-2, which
    # brings 1,000 steps to within ~0.5 nats of the optimum (1e-3 stays ~13 nats away).
    estimators: ClassVar[tuple[str, ...]] = ("pathwise", "pathwise-analytic-kl", "pathwise-stl")
    learning_rate: ClassVar[float] = 1e-2
    optimizer: ClassVar[str] = "adam"

    def __post_init__(self) -> None:
        self._train = training_rows(scaled()).to(self.device, self.dtype)
        self._heldout = heldout_rows(scaled()).to(self.device, self.dtype)
        self.train_rows = self._train.shape[0]

    def initial(self) -> dict[str, Tensor]:
        k, d = self.latents, self._train.shape[1]
        gen = torch.Generator().manual_seed(derive_seed("vae-gaussian initial", k))
        values = {
            "A": torch.zeros(k, d), "b": torch.zeros(k), "log_s": torch.zeros(k),
            "W": 0.1 * torch.randn(d, k, generator=gen), "c": torch.zeros(d),
            "log_sigma": torch.zeros(()),
        }
        return {name: v.to(self.device, self.dtype) for name, v in values.items()}

    def problem(self, params: Mapping[str, Tensor], rows: Tensor) -> Problem:
        own = {name: value.detach().clone() for name, value in params.items()}
        return build_problem(self._train[rows.to(self.device)], own, {},
                             {"latents": self.latents, "batch": int(rows.numel())})

    def evaluate(self, params: Mapping[str, Tensor], generator: torch.Generator
                 ) -> dict[str, Evaluation]:
        """Exact training objective (first: bench train's primary metric) and its gap to the
        PPCA optimum (closed forms), the exact held-out log-likelihood, and the held-out
        importance-weighted bound (with its SE)."""
        t = {k: v.detach().to("cpu", torch.float64) for k, v in params.items()}
        train = self._train.to("cpu", torch.float64)
        heldout = self._heldout.to("cpu", torch.float64)
        objective = float(model.negative_elbo(train, t))
        optimum = -model.ppca_of_training_rows(self.latents).log_likelihood
        w, noise_var = t["W"], torch.exp(2 * t["log_sigma"])
        cov = w @ w.T + noise_var * torch.eye(w.shape[0], dtype=torch.float64)
        exact_ll = float(model.marginal_log_likelihood(heldout, t["c"], cov).mean())
        return {
            "train_negative_elbo": Evaluation(objective, 0.0, higher_is_better=False),
            "optimum_gap": Evaluation(objective - optimum, 0.0, higher_is_better=False),
            "heldout_log_likelihood": Evaluation(exact_ll, 0.0, higher_is_better=True),
            "heldout_iw_bound": _bounds.importance_weighted(
                _log_weights(heldout, t, generator)),
        }


def _log_weights(x: Tensor, t: Mapping[str, Tensor], generator: torch.Generator) -> Tensor:
    """log p(x_r, z) - log q(z | x_r) for GROUPS x DRAWS draws z ~ q per row: [J, S, R]."""
    loc, scale = model.encoder_moments(x, t)
    groups, draws = _bounds.GROUPS, _bounds.DRAWS
    # Drawn where the generator lives (the trajectory's device), used where the rows are.
    eps = torch.randn(groups * draws, *loc.shape, generator=generator, dtype=loc.dtype,
                      device=generator.device).to(loc.device)
    z = loc + scale * eps
    # point_costs is -(log p(x, z) - log q(z | x)) / R per row.
    log_w = -model.point_costs(x, z, t) * x.shape[0]
    return log_w.reshape(groups, draws, x.shape[0])
