"""binary-latent: a tiny binary-latent model, trainable with `bench train`, in which everything
is exact: the objective, its gradient, the log-likelihood, and (by enumeration) any estimator's
variance. It is small enough to check the training harness against closed forms and to compare
discrete estimators along a training trajectory in seconds.

Model (a one-layer sigmoid belief network with a mean-field encoder), K latents, D pixels:

    p(z)     = prod_k Bernoulli(z_k; sigma(a_k))                  prior logits a [K]
    p(x | z) = prod_d Bernoulli(x_d; sigma(W z + c)_d)            decoder W [D, K], c [D]
    q(z | x) = prod_k Bernoulli(z_k; sigma(E x + e)_k)            encoder E [K, D], e [K]

The problem at a minibatch x_1..x_B: z [B, K] ~ q (rows independent), cost

    f(z) = 1/B sum_r [ -log p(x_r | z_r) - log p(z_r) + log q(z_r | x_r) ],

the minibatch's negative ELBO per data point, so E_q[f] is what training minimises. The
gradient is taken with respect to all five tensors (enc_weight E, enc_bias e, dec_weight W,
dec_bias c, prior_logits a): the encoder's through q (where estimators differ) and every
tensor's through f's direct dependence (the ordinary gradient every estimator adds). f is
defined and smooth on relaxed z in [0, 1]^K (it is linear in z but for the decoder's softplus),
so the relaxation-based estimators apply.

Truth: q factorises over rows, so E_q[f] = 1/B sum_r sum_{s in {0,1}^K} q(s | x_r) f_r(s): an
enumeration of the 2^K latent states of each row separately (B 2^K terms, not 2^(BK)), then
autograd. The exact log-likelihood log p(x) = logsumexp_s [log p(x | s) + log p(s)] comes the
same way.

Data: binary vectors drawn from a teacher model of the same form (weights N(0, 3^2), biases
N(0, 1), uniform prior), `train_rows` for training (512 by default; a few make full-batch
training possible) and TEST_ROWS held out, from a generator seeded by the settings: the suite
ships no data and downloads none. Initial parameters (where every
`bench train` trajectory starts, and the point `bench run` measures): weights N(0, 0.1^2),
encoder bias and prior logits 0, decoder bias the logits of the training pixel means.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli

from gradbench.core.capabilities import DifferentiableCost, RelaxedCost
from gradbench.core.params import at_least, between
from gradbench.core.problem import Problem
from gradbench.core.seeding import derive_seed
from gradbench.core.suite import Setting, register_suite
from gradbench.core.training import Evaluation

TEST_ROWS = 256
MAX_TRAIN_ROWS = 1 << 16
MAX_LATENTS = 12  # 4096 states per row for the enumerated truth
PARAMS = ("enc_weight", "enc_bias", "dec_weight", "dec_bias", "prior_logits")
Params = Mapping[str, Tensor]


@functools.lru_cache(maxsize=16)
def dataset(latents: int, pixels: int, data_seed: int, train_rows: int = 512
            ) -> tuple[Tensor, Tensor]:
    """(train [train_rows, pixels], test [TEST_ROWS, pixels]) binary float64 data on the CPU,
    drawn from the teacher model with a generator of their own; the test rows come first, so
    they are the same whatever train_rows is (and a smaller training set is a prefix)."""
    gen = torch.Generator().manual_seed(derive_seed("binary-latent data", latents, pixels,
                                                    data_seed))
    weight = 3.0 * torch.randn(pixels, latents, generator=gen, dtype=torch.float64)
    bias = torch.randn(pixels, generator=gen, dtype=torch.float64)
    rows = TEST_ROWS + train_rows
    z = (torch.rand(rows, latents, generator=gen, dtype=torch.float64) < 0.5).double()
    probs = torch.sigmoid(z @ weight.T + bias)
    x = (torch.rand(rows, pixels, generator=gen, dtype=torch.float64) < probs).double()
    return x[TEST_ROWS:], x[:TEST_ROWS]


def initial_params(latents: int, pixels: int, data_seed: int, train_rows: int = 512
                   ) -> dict[str, Tensor]:
    """The parameters every trajectory starts from (float64, CPU)."""
    gen = torch.Generator().manual_seed(derive_seed("binary-latent init", latents, pixels,
                                                    data_seed))
    train, _ = dataset(latents, pixels, data_seed, train_rows)
    mean = train.mean(dim=0).clamp(1e-3, 1 - 1e-3)
    return {
        "enc_weight": 0.1 * torch.randn(latents, pixels, generator=gen, dtype=torch.float64),
        "enc_bias": torch.zeros(latents, dtype=torch.float64),
        "dec_weight": 0.1 * torch.randn(pixels, latents, generator=gen, dtype=torch.float64),
        "dec_bias": torch.log(mean) - torch.log1p(-mean),
        "prior_logits": torch.zeros(latents, dtype=torch.float64),
    }


def _row(vector: Tensor) -> Tensor:
    """A bias [n] or per-sample biases [m, n] ready to add to [..., B, n] pre-activations."""
    return vector.unsqueeze(-2)


def encoder_logits(x: Tensor, params: Params) -> Tensor:
    """Logits of q(z | x) for rows x [B, D]: [B, K], or [m, B, K] for per-sample parameters."""
    return x @ params["enc_weight"].transpose(-1, -2) + _row(params["enc_bias"])


def joint_log_terms(z: Tensor, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor]:
    """(log p(x | z), log p(z), log q(z | x)) per draw and row, [m, B] each, for z [m, B, K]
    (0/1, or relaxed in [0, 1]) and parameters shared or per sample ([m, ...])."""
    decoded = z @ params["dec_weight"].transpose(-1, -2) + _row(params["dec_bias"])
    log_px = (x * decoded - F.softplus(decoded)).sum(-1)
    prior = _row(params["prior_logits"])
    log_pz = (z * prior - F.softplus(prior)).sum(-1)
    encoded = encoder_logits(x, params)
    log_qz = (z * encoded - F.softplus(encoded)).sum(-1)
    return log_px, log_pz, log_qz


def row_costs(z: Tensor, x: Tensor, params: Params) -> Tensor:
    """Negative ELBO terms -log p(x_r | z_r) - log p(z_r) + log q(z_r | x_r): [m, B]."""
    log_px, log_pz, log_qz = joint_log_terms(z, x, params)
    return log_qz - log_px - log_pz


def latent_states(latents: int, like: Tensor) -> Tensor:
    """Every z in {0, 1}^K: [2^K, K], in `like`'s dtype and device."""
    codes = torch.arange(2**latents, device=like.device)
    bits = torch.arange(latents, device=like.device)
    return ((codes[:, None] >> bits) & 1).to(like.dtype)


def _per_state(x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor]:
    """(log p(x, s), log q(s | x), f(s)) for every state s and row: [S, B] each."""
    states = latent_states(params["enc_bias"].shape[-1], x)
    z = states[:, None, :].expand(states.shape[0], x.shape[0], states.shape[1])
    log_px, log_pz, log_qz = joint_log_terms(z, x, params)
    return log_px + log_pz, log_qz, log_qz - log_px - log_pz


def exact_negative_elbo(x: Tensor, params: Params) -> Tensor:
    """Mean over rows of the negative ELBO, by enumeration per row (differentiable)."""
    _, log_q, cost = _per_state(x, params)
    return (log_q.exp() * cost).sum(0).mean()


def exact_nll(x: Tensor, params: Params) -> Tensor:
    """Mean over rows of -log p(x) = -logsumexp_s log p(x, s)."""
    log_joint, _, _ = _per_state(x, params)
    return -torch.logsumexp(log_joint, dim=0).mean()


def exact_gradient(x: Tensor, params: Params) -> dict[str, Tensor]:
    """d/dtheta of the minibatch's negative ELBO (float64, autograd through the enumeration)."""
    leaves = {k: v.detach().to(torch.float64).requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        value = exact_negative_elbo(x.to(torch.float64), leaves)
        grads = torch.autograd.grad(value, list(leaves.values()))
    return {name: grad.to(params[name].dtype)
            for name, grad in zip(leaves, grads, strict=True)}


def minibatch_problem(x: Tensor, params: Params, settings: Mapping[str, object],
                      truth: bool = True) -> Problem:
    """The gradient problem of E_q[f] at `params` on rows x [B, D], with its enumerated truth
    (or without, for training steps, which need none)."""
    own = {name: params[name] for name in PARAMS}

    def distribution(**values: Tensor) -> Bernoulli:
        return Bernoulli(logits=encoder_logits(x, values))

    def cost(z: Tensor, values: Params) -> Tensor:
        return row_costs(z, x, values).mean(-1)

    return Problem(
        params=own, distribution=distribution, cost=cost,
        exact_gradient=exact_gradient(x, own) if truth else None,
        truth_method="enumeration" if truth else "none",
        settings=dict(settings), data={"x": x},
        capabilities=(DifferentiableCost(), RelaxedCost()),
    )


class BinaryLatentTrainer:
    """bench train's view of binary-latent (gradbench.core.training.Trainer)."""

    objective = "negative ELBO per data point, nats (minibatch)"
    estimators = ("score-function-loo", "disarm", "relax")
    # Adam at 1e-3 moves this model little in 1,000 steps of 8 rows (exact -ELBO 7.65 -> 7.57
    # with DisARM); 0.03 reaches 6.86 (the teacher's held-out NLL is 6.19), 0.01 reaches 7.18.
    learning_rate = 0.03

    def __init__(self, latents: int, pixels: int, batch: int, train_rows: int, data_seed: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        train, test = dataset(latents, pixels, data_seed, train_rows)
        self.train = train.to(device=device, dtype=dtype)
        self.test = test.to(device=device, dtype=dtype)
        self._initial = {k: v.to(device=device, dtype=dtype)
                         for k, v in initial_params(latents, pixels, data_seed,
                                                    train_rows).items()}
        self.settings = {"latents": latents, "pixels": pixels, "batch": batch,
                         "train_rows": train_rows, "data_seed": data_seed}
        self.train_rows = train_rows
        self.batch = batch

    def initial(self) -> dict[str, Tensor]:
        return {name: value.clone() for name, value in self._initial.items()}

    def problem(self, params: Params, rows: Tensor, truth: bool = False) -> Problem:
        own = {name: params[name].detach().clone() for name in PARAMS}
        return minibatch_problem(self.train[rows.to(self.train.device)], own, self.settings,
                                 truth)

    def evaluate(self, params: Params, generator: torch.Generator) -> dict[str, Evaluation]:
        """Exact: the training set's negative ELBO, the held-out negative ELBO and held-out
        negative log-likelihood (all per data point; no randomness needed)."""
        with torch.no_grad():
            return {
                "train_neg_elbo": _lower(exact_negative_elbo(self.train, params)),
                "test_neg_elbo": _lower(exact_negative_elbo(self.test, params)),
                "test_nll": _lower(exact_nll(self.test, params)),
            }


def _lower(value: Tensor) -> Evaluation:
    return Evaluation(float(value), 0.0, higher_is_better=False)


def _trainer(latents: int, pixels: int, batch: int, train_rows: int, data_seed: int, *,
             device: torch.device, dtype: torch.dtype) -> BinaryLatentTrainer:
    return BinaryLatentTrainer(latents, pixels, batch, train_rows, data_seed, device, dtype)


def _batch_fits(latents: int, pixels: int, batch: int, train_rows: int, data_seed: int
                ) -> str | None:
    if batch > train_rows:
        return f"batch={batch} exceeds train_rows={train_rows}: a minibatch takes distinct rows"
    return None


# Default grid (one cell): 4 latents (16 states per row), 16 pixels, minibatch 8. The problem is
# the minibatch of the first 8 training rows at the initial parameters. 10,000 estimates resolve
# each estimator's variance to ~1.4% and the 77 coordinates' means well inside a second each.
@register_suite(
    "binary-latent",
    offers=(DifferentiableCost, RelaxedCost),
    settings=(
        Setting("latents", int, (4,), f"binary latents K (enumerated truth: at most "
                f"{MAX_LATENTS})", between(1, MAX_LATENTS)),
        Setting("pixels", int, (16,), "binary pixels D of each data vector", at_least(1)),
        Setting("batch", int, (8,), "minibatch rows (at most train_rows)", at_least(1)),
        Setting("train_rows", int, (512,), f"training rows (at most {MAX_TRAIN_ROWS})",
                between(1, MAX_TRAIN_ROWS)),
        Setting("data_seed", int, (0,), "seed of the synthetic data and the initial "
                "parameters", at_least(0)),
    ),
    samples=10_000,
    check_combination=_batch_fits,
    trainer=_trainer,
)
def binary_latent(latents: int, pixels: int, batch: int, train_rows: int, data_seed: int, *,
                  device: torch.device, dtype: torch.dtype) -> Problem:
    """Tiny binary-latent model (sigmoid belief net + encoder) on synthetic data; exact ELBO."""
    trainer = BinaryLatentTrainer(latents, pixels, batch, train_rows, data_seed, device, dtype)
    return trainer.problem(trainer.initial(), torch.arange(batch), truth=True)

