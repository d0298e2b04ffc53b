"""Shared machinery of the relaxation-based estimators (Concrete / Gumbel-softmax: Maddison et al.
2016, Jang et al. 2016; REBAR: Tucker et al. 2017; Gumbel-Rao: Paulus et al. 2020), written once
for Bernoulli and one-hot categorical q.

Every discrete draw is the hard threshold H of a continuous, reparameterizable one:

    Bernoulli(logits th):        z = th + L,  L = log u - log(1 - u) ~ Logistic(0, 1),
                                 b = H(z) = 1[z > 0],       P(b = 1) = P(L > -th) = sigma(th)
    OneHotCategorical(th):       z = th + G,  G_k = -log(-log u_k) ~ Gumbel(0, 1),
                                 b = H(z) = onehot(argmax z),  P(b = e_k) = softmax(th)_k
                                 (the Gumbel-max trick)

with u ~ U(0, 1). The relaxation of b is sigma(z / tau), resp. softmax(z / tau), which tends to b
as tau -> 0. Conditional draws z~ ~ p(z | H(z) = b), reparameterized in th (for REBAR/RELAX)
and used with the noise z~ - th held fixed (for Gumbel-Rao), are derived at `conditional`.

`th` is always read from q (q.logits: for a Bernoulli built from probs p that is logit(p), for a
categorical the normalised log-probabilities), so autograd maps everything to the problem's own
parameters, whatever they are called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Distribution,
    OneHotCategorical,
    RelaxedBernoulli,
    RelaxedOneHotCategorical,
)

from gradbench.core.estimator import Hyperparam


def open_uniform(shape: torch.Size | tuple[int, ...], like: Tensor) -> Tensor:
    """U(0, 1) draws on like's device and dtype, kept off 0 so that logs stay finite.

    torch.rand lies in [0, 1): 1 - u >= 2^-24 (float32) is never 0, but u = 0 has probability
    2^-24 per float32 draw, which a 1e7-sample run would hit. Clamping it to the smallest normal
    number moves a 2^-24-probability event by 1e-38: no measurable bias.
    """
    u = torch.rand(shape, device=like.device, dtype=like.dtype)
    return u.clamp_min(torch.finfo(like.dtype).tiny)


@dataclass(frozen=True)
class Discrete:
    """A Bernoulli or one-hot categorical q seen through its logits (differentiable in the
    per-sample parameter leaves q was built from)."""

    kind: str  # "bernoulli" or "categorical"
    logits: Tensor  # Bernoulli: [n, *batch]; categorical: normalised log-probs [n, *batch, C]

    def perturb(self) -> Tensor:
        """z = th + noise (logistic or Gumbel), reparameterized: dz/dth = 1."""
        u = open_uniform(self.logits.shape, self.logits)
        if self.kind == "bernoulli":
            return self.logits + (u.log() - torch.log1p(-u))
        return self.logits - torch.log(-u.log())

    def hard(self, z: Tensor) -> Tensor:
        """H(z): the discrete draw z encodes (no gradient)."""
        if self.kind == "bernoulli":
            return (z.detach() > 0).to(z.dtype)
        return F.one_hot(z.detach().argmax(-1), z.shape[-1]).to(z.dtype)

    def relax(self, z: Tensor, tau: Tensor | float) -> Tensor:
        """The continuous relaxation of H(z): sigma(z / tau) or softmax(z / tau)."""
        if self.kind == "bernoulli":
            return torch.sigmoid(z / tau)
        return torch.softmax(z / tau, dim=-1)

    def conditional(self, b: Tensor, copies: int | None = None) -> Tensor:
        """z~ ~ p(z | H(z) = b), reparameterized in th; `copies` independent draws stacked first.

        Bernoulli, b = 1 (so u > 1 - p, p = sigma(th)): u = 1 - p + v p, v ~ U(0, 1), and
            z~ = th + logit(u) = log(1 + v / ((1 - v)(1 - p))) = softplus(logit v + softplus(th)).
            Check: P(z~ > x) = (1 + e^th) / (e^th + e^x) = sigma(th - x) / sigma(th) for x > 0,
            the logistic's tail conditioned on z > 0. b = 0 is the mirror image (z -> -z,
            th -> -th), so with s = 2b - 1:  z~ = s softplus(logit v + softplus(s th)).
        Categorical, b = e_k, th normalised (logsumexp th = 0), E_i = -log v_i ~ Exp(1): the
            maximum of th + G is Gumbel(0) and independent of the argmax, so z~_k = -log E_k; every
            other z~_i is Gumbel(th_i) truncated below z~_k. Inverting the truncated CDF
            exp(-e^{th_i - x}) at v_i exp(-e^{th_i - z~_k}) gives
            z~_i = -log(E_i e^{-th_i} + E_k) = -logaddexp(log E_k, log E_i - th_i)
            (Tucker et al. 2017, appendix; the logaddexp form stays finite for tiny p_i).
        """
        shape = self.logits.shape if copies is None else (copies, *self.logits.shape)
        v = open_uniform(shape, self.logits)
        if self.kind == "bernoulli":
            s = 2 * b - 1
            return s * F.softplus(v.log() - torch.log1p(-v) + F.softplus(s * self.logits))
        log_e = torch.log(-v.log())
        log_e_top = (log_e * b).sum(-1, keepdim=True)
        others = torch.where(b > 0, -math.inf, log_e - self.logits)
        return -torch.logaddexp(log_e_top, others)


def discrete_view(q: Distribution) -> Discrete:
    """The Discrete view of a Bernoulli or OneHotCategorical q (requirements guarantee one)."""
    if isinstance(q, Bernoulli):
        return Discrete("bernoulli", q.logits)
    if isinstance(q, OneHotCategorical):
        return Discrete("categorical", q.logits)
    raise TypeError(f"needs a Bernoulli or OneHotCategorical, not {type(q).__name__}")


def relaxed_distribution(q: Distribution, tau: float) -> Distribution:
    """torch's Concrete relaxation of q at temperature tau (rsample: sigma / softmax of z/tau)."""
    d = discrete_view(q)
    temperature = torch.tensor(tau, dtype=d.logits.dtype, device=d.logits.device)
    if d.kind == "bernoulli":
        return RelaxedBernoulli(temperature, logits=d.logits)
    return RelaxedOneHotCategorical(temperature, logits=d.logits)


# ---------------------------------------------------------------- hyperparameters


def check_tau(value: float) -> str | None:
    if not (math.isfinite(value) and value > 0):
        return f"tau must be a finite temperature > 0, not {value}"
    return None


def tau_hyperparam(default: float, help_text: str) -> Hyperparam:
    return Hyperparam("tau", float, default, help_text, check_tau)


def require(reason: str | None) -> None:
    """Raise ValueError for an invalid hyperparameter (None: valid); the planner has already
    refused such values with a one-line error, so this guards direct calls."""
    if reason is not None:
        raise ValueError(reason)
