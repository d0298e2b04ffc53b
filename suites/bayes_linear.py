"""bayes-linear: the Bayesian `nn.Linear` of the tutorials on real regression data.

q is a mean-field Gaussian over the layer's weights W [out, in] and bias b [out], with the
tutorial's parameter names: W ~ N(weight_mu, exp(weight_log_sigma)^2), b ~ N(bias_mu,
exp(bias_log_sigma)^2). As a torch distribution it is one Normal over the flat vector
z = (W.flatten(), b). The cost is the minibatch Gaussian negative log-likelihood scaled to the
data set (N rows, a minibatch of B rows X [B, in], targets Y [B, out]):

    f(W, b) = (N / B) sum_n ||y_n - W x_n - b||^2 / (2 noise^2).

Closed-form truth. Let c = N / (B noise^2). For one output o, the pre-activation of row n is
a_no = w_o . x_n + b_o ~ N(m_no, v_no) with m_no = mu_o . x_n + bmu_o and
v_no = sum_i x_ni^2 sigma_oi^2 + bsigma_o^2 (independent weights), so E[(y - a)^2] =
(y - m)^2 + v and

    E[f] = (c / 2) sum_n sum_o [(m_no - y_no)^2 + sum_i x_ni^2 sigma_oi^2 + bsigma_o^2].

Differentiating (d sigma^2 / d log sigma = 2 sigma^2), with residuals r = X mu^T + bmu - Y [B, out]:

    d/d weight_mu        = c r^T X                      [out, in]
    d/d bias_mu          = c sum_n r_n                  [out]
    d/d weight_log_sigma = c sigma_oi^2 sum_n x_ni^2    [out, in]
    d/d bias_log_sigma   = c B bsigma_o^2 = (N / noise^2) bsigma_o^2.

Capabilities: the cost depends on (W, b) only through A = X W^T + b and is a sum over the
minibatch rows (GaussianLinearLayer: local reparameterization and Flipout apply), it is
differentiable, and df/dz has the closed form dA = c (A - Y), df/dW = dA^T X, df/db = sum_n dA_n
(CostGradient). It is not separable: (w . x_n)^2 couples the weights of an output.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Normal

import gradbench.suites._datasets as _datasets
from gradbench.core.capabilities import CostGradient, DifferentiableCost, GaussianLinearLayer
from gradbench.core.params import at_least, finite, one_of, positive
from gradbench.core.problem import Params, Problem
from gradbench.core.suite import Setting, register_suite

DATA = ("diabetes", "synthetic")
_INIT_SEED = 1_505_057  # the means' fixed initialisation (part of the suite's definition)


def dataset(data: str, in_features: int, out_features: int) -> tuple[Tensor, Tensor]:
    """(X [N, in], Y [N, out]) in float64 on the CPU."""
    if data == "diabetes":
        return _datasets.diabetes()
    return _datasets.synthetic(in_features, out_features)


def initial_means(in_features: int, out_features: int) -> tuple[Tensor, Tensor]:
    """weight_mu and bias_mu as nn.Linear initialises them, U(-1/sqrt(in), 1/sqrt(in)), from a
    fixed generator: a deterministic point with no zero gradient coordinate."""
    generator = torch.Generator().manual_seed(_INIT_SEED)
    bound = 1.0 / math.sqrt(in_features)
    weight = torch.rand(out_features, in_features, generator=generator, dtype=torch.float64)
    bias = torch.rand(out_features, generator=generator, dtype=torch.float64)
    return (2 * weight - 1) * bound, (2 * bias - 1) * bound


def exact_gradient(params: Params, x: Tensor, y: Tensor, scale: float) -> dict[str, Tensor]:
    """The closed form above; `scale` is c = N / (B noise^2)."""
    residual = x @ params["weight_mu"].T + params["bias_mu"] - y
    return {
        "weight_mu": scale * residual.T @ x,
        "weight_log_sigma": scale * params["weight_log_sigma"].exp() ** 2 * (x**2).sum(0),
        "bias_mu": scale * residual.sum(0),
        "bias_log_sigma": scale * x.shape[0] * params["bias_log_sigma"].exp() ** 2,
    }


def flat_normal(weight_mu: Tensor, weight_log_sigma: Tensor, bias_mu: Tensor,
                bias_log_sigma: Tensor) -> Normal:
    """q over z = (W.flatten(), b); leading per-sample dimensions are kept."""
    loc = torch.cat([weight_mu.flatten(-2), bias_mu], dim=-1)
    log_scale = torch.cat([weight_log_sigma.flatten(-2), bias_log_sigma], dim=-1)
    return Normal(loc, log_scale.exp())


def _unflatten(z: Tensor, out_features: int, in_features: int) -> tuple[Tensor, Tensor]:
    weights = out_features * in_features
    return (z[..., :weights].unflatten(-1, (out_features, in_features)),
            z[..., weights:])


def _moments(params: Params) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The layer's weight and bias means and standard deviations."""
    return (params["weight_mu"], params["weight_log_sigma"].exp(), params["bias_mu"],
            params["bias_log_sigma"].exp())


class LinearGaussianCost:
    """f and df/dz of z = (W.flatten(), b) on a minibatch (X, Y), c = N / (B noise^2).

    Two exact routes to f = (c / 2) sum_n ||y_n - W x_n - b||^2: through the pre-activations
    (B out (in + 1) multiply-adds per draw) or, with w~_o = (w_o, b_o) and X~ = (X, 1), through
    the Gram form (c / 2) sum_o [w~_o^T G w~_o - 2 w~_o . h_o + ||y_o||^2], G = X~^T X~ and
    h_o = X~^T y_o (out (in + 1)^2 per draw). The cheaper one is used: the Gram form when
    in + 1 < B (the diabetes set's full batch is 40x cheaper), which is what lets estimators
    that evaluate f many times per estimate (measure-valued: 4 per coordinate) run on the full
    batch. It needs no cancellation the other avoids: the terms are of the size of ||Y||^2 and
    the residual sum of squares is a sizeable fraction of it on these data sets.
    """

    def __init__(self, x: Tensor, y: Tensor, scale: float) -> None:
        self.x, self.y, self.scale = x, y, scale
        self.in_features = x.shape[1]
        self.gram = x.shape[1] + 1 < x.shape[0]
        if self.gram:
            # Sums over the rows in float64 whatever the problem's dtype (then rounded once).
            x1 = torch.cat([x, torch.ones_like(x[:, :1])], dim=1).double()
            self.g = (x1.T @ x1).to(x.dtype)  # [in + 1, in + 1]
            self.h = (y.double().T @ x1).to(x.dtype)  # [out, in + 1]
            self.yy = float(y.double().square().sum())

    def head(self, pre: Tensor, params: object = None) -> Tensor:
        """f from pre-activations A [m, B, out] (the GaussianLinearLayer head)."""
        return (0.5 * self.scale) * (pre - self.y).square().sum((-2, -1))

    def _augmented(self, z: Tensor) -> Tensor:
        """w~ [m, out, in + 1]: each output's weights followed by its bias."""
        out_features = self.y.shape[1]
        weight, bias = _unflatten(z, out_features, self.in_features)
        return torch.cat([weight, bias.unsqueeze(-1)], dim=-1)

    def pre_activations(self, z: Tensor) -> Tensor:
        weight, bias = _unflatten(z, self.y.shape[1], self.in_features)
        # One GEMM for all draws ([m out, in] x [in, B]) rather than m small batched ones.
        pre = (weight.reshape(-1, self.in_features) @ self.x.T).unflatten(0, weight.shape[:-1])
        return pre.transpose(-1, -2) + bias.unsqueeze(-2)

    def cost(self, z: Tensor, params: object = None) -> Tensor:
        if not self.gram:
            return self.head(self.pre_activations(z))
        w = self._augmented(z)
        quadratic = ((w @ self.g) * w).sum(-1) - 2 * (w * self.h).sum(-1)
        return (0.5 * self.scale) * (quadratic.sum(-1) + self.yy)

    def grad(self, z: Tensor, params: object = None) -> Tensor:
        """df/dz: c (A - Y) is df/dA, so df/dW = c (A - Y)^T X = c (w~ G - h) and
        df/db = c sum_n (A_n - y_n) (the last column of the Gram form)."""
        if self.gram:
            d_aug = self.scale * (self._augmented(z) @ self.g - self.h)  # [m, out, in + 1]
            d_weight, d_bias = d_aug[..., :-1], d_aug[..., -1]
        else:
            d_pre = self.scale * (self.pre_activations(z) - self.y)  # [m, B, out]
            d_weight = torch.matmul(d_pre.transpose(-1, -2), self.x)  # [m, out, in]
            d_bias = d_pre.sum(-2)
        return torch.cat([d_weight.flatten(-2), d_bias], dim=-1)


def _check(data: str, batch: int, in_features: int, out_features: int, **_: object
           ) -> str | None:
    if data == "diabetes" and (in_features, out_features) != (_datasets.DIABETES_FEATURES, 1):
        return (f"data=diabetes has {_datasets.DIABETES_FEATURES} features and 1 target: use "
                f"in_features={_datasets.DIABETES_FEATURES} out_features=1, or data=synthetic "
                "for other shapes")
    rows = _datasets.DIABETES_ROWS if data == "diabetes" else _datasets.SYNTHETIC_ROWS
    if batch > rows:
        return f"batch={batch} exceeds the {rows} rows of data={data}: use batch <= {rows}"
    return None


# Default grid (9 cells, diabetes). batch 1, 32 and all 442 rows: the shared weight sample's
# variance does not fall with the batch (its noise is common to every row), local
# reparameterization's and Flipout's do; that is the comparison people come for. log_sigma
# -5, -2, 0 (sigma 0.007, 0.14, 1): from a nearly deterministic layer, where every
# reparameterization estimator is almost exact in weight_mu, to the prior's scale, where the
# weight noise dominates. noise = 1 is the standardised target's scale; it only multiplies the
# cost (and every estimator's variance by 1 / noise^4), so it is not swept by default.
# 5,000 estimates per cell: variances to ~2% (relative SE sqrt(2 / n) for near-normal
# estimates), and the whole default run (90 cells) takes ~20 s of one core, most of it
# measure-valued (44 evaluations of f per estimate) and Flipout at the full batch (5,300 random
# signs per estimate).
@register_suite(
    "bayes-linear",
    offers=(GaussianLinearLayer, DifferentiableCost, CostGradient),
    settings=(
        Setting("data", str, ("diabetes",), "diabetes (scikit-learn, 442 x 10, standardised) or "
                "synthetic (1024 rows, X ~ N(0, I), a fixed linear map plus noise)",
                one_of(*DATA)),
        Setting("batch", int, (1, 32, _datasets.DIABETES_ROWS), "minibatch rows (the first "
                "`batch` of one fixed permutation); 442 = the full diabetes set", at_least(1)),
        Setting("log_sigma", float, (-5.0, -2.0, 0.0), "weight_log_sigma and bias_log_sigma "
                "of every weight (the posterior scale)", finite),
        Setting("noise", float, (1.0,), "the likelihood's standard deviation", positive),
        Setting("in_features", int, (_datasets.DIABETES_FEATURES,), "inputs of the layer "
                "(data=synthetic; diabetes has 10)", at_least(1)),
        Setting("out_features", int, (1,), "outputs of the layer (data=synthetic; diabetes has "
                "1)", at_least(1)),
    ),
    samples=5_000,
    check_combination=_check,
)
def bayes_linear(data: str, batch: int, log_sigma: float, noise: float, in_features: int,
                 out_features: int, *, device: torch.device, dtype: torch.dtype) -> Problem:
    """The tutorials' Bayesian nn.Linear, Gaussian NLL of a minibatch scaled to the data set."""
    x_all, y_all = dataset(data, in_features, out_features)
    rows = _datasets.minibatch_rows(x_all.shape[0], batch)
    x64, y64 = x_all[rows], y_all[rows]
    scale = x_all.shape[0] / (batch * noise**2)  # c = N / (B noise^2)
    weight_mu, bias_mu = initial_means(in_features, out_features)
    params64 = {
        "weight_mu": weight_mu,
        "weight_log_sigma": torch.full_like(weight_mu, log_sigma),
        "bias_mu": bias_mu,
        "bias_log_sigma": torch.full_like(bias_mu, log_sigma),
    }
    truth64 = exact_gradient(params64, x64, y64, scale)

    def convert(value: Tensor) -> Tensor:
        return value.to(device=device, dtype=dtype)

    x, y = convert(x64), convert(y64)
    costs = LinearGaussianCost(x, y, scale)
    return Problem(
        params={name: convert(value) for name, value in params64.items()},
        distribution=flat_normal,
        cost=costs.cost,
        exact_gradient={name: convert(value) for name, value in truth64.items()},
        truth_method="analytic",
        settings={"data": data, "batch": batch, "log_sigma": log_sigma, "noise": noise,
                  "in_features": in_features, "out_features": out_features},
        data={"X": x, "y": y},
        capabilities=(GaussianLinearLayer(x, _moments, costs.head), DifferentiableCost(),
                      CostGradient(costs.grad)),
    )
