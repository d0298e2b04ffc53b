"""Structure as declared capabilities, in the spirit of torch.distributions' `has_rsample`.

A suite's Problem offers capabilities (instances, carrying what an estimator needs to use the
structure); an estimator declares Requirements (gradbench.core.requirements), each a check that
returns None when the problem has what it needs and the reason otherwise. `bench list` shows
both sides. Problem gains no field per estimator family: a new family that exploits new
structure adds a Capability here (or in its own module) and a Requirement on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

Params = Mapping[str, Tensor]


class Capability:
    """Base of every capability. `title` and `summary` are what `bench list` prints."""

    title: ClassVar[str] = ""
    summary: ClassVar[str] = ""


@dataclass(frozen=True)
class DifferentiableCost(Capability):
    """f is differentiable in z almost everywhere and autograd computes df/dz."""

    title: ClassVar[str] = "differentiable cost"
    summary: ClassVar[str] = "df/dz exists a.e. and autograd computes it"


@dataclass(frozen=True)
class RelaxedCost(Capability):
    """For discrete q: f is also defined, and differentiable, on the continuous relaxation of
    the support ([0, 1] for Bernoulli, the simplex for one-hot categoricals)."""

    title: ClassVar[str] = "relaxed cost"
    summary: ClassVar[str] = "f is defined and differentiable on the relaxed support"


@dataclass(frozen=True)
class SeparableCost(Capability):
    """f(z) = sum_i f_i(z_i): `terms(z, params)` gives the per-coordinate terms [m, coords] for
    z [m, *sample_shape] (coordinates flattened in q's batch order)."""

    terms: Callable[[Tensor, Params], Tensor]
    title: ClassVar[str] = "separable cost"
    summary: ClassVar[str] = "f is a sum of per-coordinate terms"


@dataclass(frozen=True)
class CostGradient(Capability):
    """A closed form of df/dz: `grad(z, params)` -> [m, *sample_shape], row i the gradient of
    f(z_i) in z_i. Offered only for costs that do not depend on the parameters directly."""

    grad: Callable[[Tensor, Params], Tensor]
    title: ClassVar[str] = "closed-form df/dz"
    summary: ClassVar[str] = "df/dz in closed form (fused pathwise paths)"


@dataclass(frozen=True)
class GaussianLinearLayer(Capability):
    """q is a mean-field Gaussian over the weights (and bias) of one linear map, and the cost
    depends on them only through the pre-activations A = X W^T + b of a minibatch X, as a sum
    over the minibatch rows of per-row terms, f = sum_n f_n(A_n) (plus any direct term of the
    parameters). The sum is what local reparameterization and Flipout need: they change the
    joint distribution of the rows' pre-activations (independent rows; sign-decorrelated rows)
    and keep only each row's marginal, so a cost that couples rows would be estimated biased.

    inputs: X [B, in].
    moments(params) -> (w_mean [.., out, in], w_std [.., out, in], b_mean [.., out] | None,
        b_std [.., out] | None), differentiable in params (per-sample copies carry a leading
        batch dimension, which the outputs keep).
    head(A, params) -> [m]: the cost from pre-activations A [m, B, out] (the parameters are
        passed for any direct term, such as an analytic KL).
    """

    inputs: Tensor
    moments: Callable[[Params], tuple[Tensor, Tensor, Tensor | None, Tensor | None]]
    head: Callable[[Tensor, Params], Tensor]
    title: ClassVar[str] = "Gaussian linear layer"
    summary: ClassVar[str] = ("mean-field Gaussian weights of a linear map; f depends on them "
                              "only through the pre-activations X W^T + b")


@dataclass(frozen=True)
class BlockSeparableCost(Capability):
    """q factorises into independent blocks along its first batch dimension (one block per data
    point of a minibatch: q(z) = prod_n q_n(z_n)), and f(z) = sum_n f_n(z_n).

    terms(z, params) -> [m, blocks] for z [m, *sample_shape]: row i holds f_n(z_i[n]) for every
    block n (any weighting, e.g. 1/B for a minibatch mean, is inside the terms), so that
    cost(z, params) = terms(z, params).sum(-1). E_q[f] is then a sum of one small expectation
    per block: enumeration visits the states of one block (2^K for K binary latents), not the
    joint states of all of them (2^(B K)).
    """

    terms: Callable[[Tensor, Params], Tensor]
    title: ClassVar[str] = "block-separable cost"
    summary: ClassVar[str] = ("q and f split into independent blocks (one per data point); "
                              "expectations are per block")


@dataclass(frozen=True)
class NegativeELBO(Capability):
    """The cost is a negative evidence lower bound with a Monte Carlo KL (Kingma & Welling's
    L^A), over latents z ~ q (the problem's distribution):

        cost(z, params) = -log_likelihood(z, params) - log_prior(z, params) + log_q(z, params)

    each piece [m] for z [m, *sample_shape] and weighted as the cost is (e.g. a mean over a
    minibatch's data points). log_q(z, params) is log q_params(z) itself, so with the parameters
    detached it is the term sticking-the-landing keeps (Roeder et al. 2017). kl(params) is the
    closed form of E_q[log_q - log_prior] with the same weighting ([] for the problem's own
    parameters, [m] for per-sample copies), for the analytic-KL estimator (Kingma & Welling's
    L^B). Pathwise differentiation of the cost itself is the MC-KL estimator (L^A).
    """

    log_likelihood: Callable[[Tensor, Params], Tensor]
    log_prior: Callable[[Tensor, Params], Tensor]
    log_q: Callable[[Tensor, Params], Tensor]
    kl: Callable[[Params], Tensor]
    title: ClassVar[str] = "negative ELBO"
    summary: ClassVar[str] = ("f = -log p(x|z) - log p(z) + log q(z|x) with its pieces and the "
                              "KL in closed form (MC-KL, analytic-KL, STL)")
