"""vae-bernoulli: the discrete-estimator papers' binary-latent VAE, shrunk to digits.

Model and formulas: suites/_binary_vae.py. Data: scikit-learn's digits binarised at 8 of 16,
64 binary pixels; the gradient is taken with respect to the encoder's parameters, of the
minibatch mean of the negative ELBO with the Monte Carlo KL (log q(z|x) inside f: a direct term
of the encoder's parameters, which every estimator adds), at the decoder and prior of `point`.

`point` is "init" (the initialisation) or a number of steps of the suite's reference training
run, as text ("1000"; a str setting, like bayes-logistic's "init" / "optimum" `point`): the
suite's own Trainer's initial parameters, trained (encoder, decoder and prior together) by
plain Adam (lr 3e-3, minibatches of 32 training rows drawn with a generator seeded by the
suite's settings) on the local-expectation gradient (`_binary_vae.logit_gradients` for the
encoder, the ordinary gradient at the same draws for decoder and prior): an unbiased estimator
that none of the compared estimators is, fixed once and for all. The checkpoints are computed,
not shipped: a step takes 2-3 ms of CPU, so the default grid's 1,000 steps cost ~3 s once per
process and (latents, nonlinear) (cached in memory by `checkpoint`), and nothing binary or
machine-specific enters the repository. They are deterministic on a given machine and build;
another BLAS may move them by rounding, which moves the truth with them (the truth is always
computed at the checkpoint).

Truth: per data point enumeration of the 2^K latent states where K <= 16 (`enumeration`),
otherwise the local-expectation reference with its standard error (`reference`, REFERENCE_BUDGET
below). Every discrete estimator applies: the cost is defined and smooth on the relaxation
[0, 1]^K (RelaxedCost), and the problem is block-separable by data point, so `exact` enumerates
2^K states per data point (where K <= 16) rather than 2^(B K).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
from torch import Tensor

from gradbench.core.capabilities import BlockSeparableCost, DifferentiableCost, RelaxedCost
from gradbench.core.params import at_least, between
from gradbench.core.problem import Problem
from gradbench.core.seeding import derive_seed
from gradbench.core.suite import Setting, register_suite
from gradbench.suites import _binary_vae as model
from gradbench.suites._digits import binarised, minibatch
from gradbench.suites._vae_bernoulli_training import (
    BinaryVAETrainer,
    build_problem,
    checkpoint,
)

MAX_LATENTS = 64
MAX_POINT = 20_000  # steps of the reference run a checkpoint may ask for (~20 s)
# Elements of the local-expectation reference (samples x K flips x B rows x 64 pixels): the
# samples are this budget's share, within [REFERENCE_MIN, REFERENCE_MAX]; at K = 32, B = 8
# that is 2,048 samples, a few seconds once per process.
REFERENCE_BUDGET = 1 << 25
REFERENCE_MIN, REFERENCE_MAX = 256, 1 << 14


def point_steps(point: str) -> int:
    """Reference-run steps of a `point` setting: "init" is 0, "1000" is 1,000."""
    return 0 if point == "init" else int(point)


def _point(value: str) -> str | None:
    if value == "init":
        return None
    if not value.isdigit() or not 1 <= int(value) <= MAX_POINT:
        return (f"must be init or a number of reference-run steps from 1 to {MAX_POINT} "
                "(written without sign, decimals or exponent)")
    return None if str(int(value)) == value else f"write it as {int(value)}"


def _batch(value: int) -> str | None:
    return at_least(1)(value) or (None if value <= 1500 else "must be at most 1500 (the "
                                  "training rows)")


def reference_samples(latents: int, batch: int) -> int:
    """How many local-expectation samples the reference truth draws."""
    share = REFERENCE_BUDGET // (latents * batch * model.PIXELS)
    return max(REFERENCE_MIN, min(REFERENCE_MAX, share))


@functools.lru_cache(maxsize=32)
def truth(latents: int, batch: int, steps: int, nonlinear: bool, method: str = "auto"
          ) -> tuple[str, dict[str, Tensor], dict[str, Tensor] | None]:
    """(truth_method, gradient, standard error or None) w.r.t. the encoder at the checkpoint
    after `steps` reference-run steps, float64 on the CPU.

    method "auto": enumeration for K <= 16, else the reference; "enumeration" or "reference"
    forces one (tests compare them). Cached: the runner builds the same problem once per cell.
    """
    x = minibatch(binarised(), batch)
    t = checkpoint(latents, nonlinear, steps)
    names = model.encoder_names(nonlinear)
    if method == "auto":
        method = "enumeration" if latents <= model.MAX_ENUMERATED else "reference"
    if method == "enumeration":
        return "enumeration", model.exact_gradient(x, t, names), None
    if method == "reference":
        samples = reference_samples(latents, batch)
        gen = torch.Generator().manual_seed(derive_seed(
            "vae-bernoulli reference", latents, batch, steps, nonlinear, samples))
        mean, se = model.reference_gradient(x, t, names, samples, gen)
        return "reference", mean, se
    raise ValueError(f"method must be 'auto', 'enumeration' or 'reference', not {method!r}")


def _trainer(latents: int, batch: int, point: str, nonlinear: bool, *, device: torch.device,
             dtype: torch.dtype) -> BinaryVAETrainer:
    return BinaryVAETrainer(latents, batch, point_steps(point), nonlinear, device, dtype)


# Default grid (4 cells): 8 latents (enumerated truth, 256 states per data point) and 32 (the
# local-expectation reference), a minibatch of 8, the initialisation and the checkpoint after
# 1,000 reference-run steps; the linear model (`--set nonlinear=true` adds the hidden layers,
# `--set latents=16` enumerates 65,536 states per data point). Budget: RELAX's warm-up (200
# steps of 64 draws, differentiated twice; 5-7 s of CPU per cell here) is most of the default
# run's time and grows with the batch, hence 4 cells and a batch of 8 for a run of about a
# minute.
@register_suite(
    "vae-bernoulli",
    offers=(DifferentiableCost, RelaxedCost, BlockSeparableCost),
    settings=(
        Setting("latents", int, (8, 32), "binary latents K (enumerated truth up to 16, a "
                "local-expectation reference beyond)", between(1, MAX_LATENTS)),
        Setting("batch", int, (8,), "minibatch size (the first rows of the training split)",
                _batch),
        Setting("point", str, ("init", "1000"), "init, or the number of steps of the suite's "
                "reference training run the parameters come from", _point),
        Setting("nonlinear", bool, (False,), f"encoder and decoder with one tanh hidden layer "
                f"of {model.HIDDEN} units (false: linear maps)"),
    ),
    samples=1_000,
    trainer=_trainer,
)
def vae_bernoulli(latents: int, batch: int, point: str, nonlinear: bool, *,
                  device: torch.device, dtype: torch.dtype) -> Problem:
    """Binary-latent VAE on binarised digits; d/d encoder of the minibatch negative ELBO."""
    x = minibatch(binarised(), batch)
    steps = point_steps(point)
    t = checkpoint(latents, nonlinear, steps)
    names = model.encoder_names(nonlinear)
    method, grad, se = truth(latents, batch, steps, nonlinear)

    def move(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}

    return build_problem(
        x.to(device=device, dtype=dtype), move({k: t[k] for k in names}),
        move({k: v for k, v in t.items() if k not in names}),
        {"latents": latents, "batch": batch, "point": point, "nonlinear": nonlinear},
        truth=move(grad), truth_method=method, truth_se=None if se is None else move(se),
    )
