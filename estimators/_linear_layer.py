"""Shared machinery of the estimators that use a GaussianLinearLayer (pathwise's shared weight
sample, local reparameterization, Flipout): the layer's moments, the head's per-sample gradient
in the pre-activations, and the map from gradients in the moments to the problem's parameters.

Everything is batched over the n estimates: per-sample pre-activations and weight gradients are
single GEMMs ([n out, in] x [in, B] and [n out, B] x [B, in]) or one bmm, never a loop over
samples, and the parameters are never cloned n times (one vector-Jacobian product through
expanded views maps the n per-sample gradients to the parameters), except for a cost's direct
term.

Notation: X [B, in] the minibatch, moments (M_w [out, in], S_w [out, in], M_b [out], S_b [out])
the weights' and biases' means and standard deviations, A [n, B, out] pre-activations, and
dA = d head / dA, row i the gradient of estimate i's head in its own pre-activations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from gradbench.core.autograd import detached
from gradbench.core.capabilities import GaussianLinearLayer
from gradbench.core.problem import Problem


@dataclass(frozen=True)
class Layer:
    """A problem's Gaussian linear layer at its own parameters (detached moments)."""

    spec: GaussianLinearLayer
    w_mean: Tensor  # [out, in]
    w_std: Tensor  # [out, in]
    b_mean: Tensor | None  # [out]
    b_std: Tensor | None  # [out]

    @property
    def inputs(self) -> Tensor:
        return self.spec.inputs

    @property
    def has_bias(self) -> bool:
        return self.b_mean is not None

    @property
    def out_features(self) -> int:
        return self.w_mean.shape[0]

    def noise(self, n: int) -> tuple[Tensor, Tensor | None]:
        """Standard normal draws for n weight matrices [n, out, in] and biases [n, out], from one
        normal_ call over [n, out * in + out]: the draws Normal.rsample makes for a flat
        z = (W.flatten(), b) with per-sample parameters [n, ...]."""
        out, width = self.w_mean.shape
        total = out * width + (out if self.has_bias else 0)
        eps = torch.empty((n, total), dtype=self.w_mean.dtype, device=self.w_mean.device)
        eps.normal_()
        weights = eps[:, : out * width].view(n, out, width)
        return weights, eps[:, out * width:] if self.has_bias else None

    def mean_pre_activations(self) -> Tensor:
        """X M_w^T + M_b [B, out]: the pre-activations' mean, shared by every estimate."""
        mean = self.inputs @ self.w_mean.T
        return mean + self.b_mean if self.b_mean is not None else mean

    def weight_gradient(self, d_pre: Tensor, inputs: Tensor | None = None) -> Tensor:
        """sum_n d_pre[i, n, o] inputs[n, j] -> [n, out, in] in one GEMM (`inputs` [B, in],
        default X) or one bmm (`inputs` [n, B, in], per-sample inputs)."""
        inputs = self.inputs if inputs is None else inputs
        n, batch, out = d_pre.shape
        if inputs.ndim == 3:
            return torch.bmm(d_pre.transpose(1, 2), inputs)
        flat = d_pre.transpose(1, 2).reshape(n * out, batch)
        return (flat @ inputs).view(n, out, inputs.shape[1])


# Elements of one block's [k, out, in] temporaries (2 MiB in float64): passes over a block stay
# in a core's L2, where passes over a whole chunk of a big layer (64 x 2e5) ran from memory.
BLOCK_ELEMENTS = 1 << 18


def estimate_blocks(n: int, per_estimate: int) -> list[slice]:
    """Consecutive blocks of the n estimates, each with at most BLOCK_ELEMENTS elements of
    `per_estimate` (at least one estimate per block)."""
    size = max(1, min(n, BLOCK_ELEMENTS // max(1, per_estimate)))
    return [slice(start, min(n, start + size)) for start in range(0, n, size)]


def concatenated(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Blocks' estimates joined along the estimates."""
    if len(parts) == 1:
        return parts[0]
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def layer_of(problem: Problem) -> Layer:
    spec = problem.offers(GaussianLinearLayer)
    if spec is None:
        raise ValueError("the problem offers no Gaussian linear layer")
    with torch.no_grad():
        w_mean, w_std, b_mean, b_std = spec.moments(detached(problem.params))
    return Layer(spec, w_mean, w_std, b_mean, b_std)


def head_gradient(problem: Problem, layer: Layer, pre: Tensor
                  ) -> tuple[Tensor, dict[str, Tensor] | None]:
    """(dA [n, B, out], direct): row i of dA is d head_i / d A_i, by one backward pass (head_i
    touches only A_i). `direct` is the cost's direct term per sample, d head_i / d theta at
    fixed A_i ({name: [n, ...]}), when the cost depends on the parameters; else None."""
    n = pre.shape[0]
    pre = pre.detach().requires_grad_(True)
    direct = problem.cost_depends_on_params()
    params = problem.expand_params(n, requires_grad=True) if direct else detached(problem.params)
    with torch.enable_grad():
        value = layer.spec.head(pre, params)
        leaves = [pre, *params.values()] if direct else [pre]
        grads = torch.autograd.grad(value.sum(), leaves, allow_unused=True)
    if not direct:
        return grads[0], None
    per_sample = {name: torch.zeros_like(leaf) if grad is None else grad
                  for (name, leaf), grad in zip(params.items(), grads[1:], strict=True)}
    return grads[0], per_sample


class _Cotangent(torch.autograd.Function):
    """A scalar node whose backward hands `cotangent` to `moment` as its gradient, i.e. the
    backward pass of <moment, cotangent> without computing the product or multiplying the
    cotangent by the incoming 1. Only for surrogates differentiated once, as a scalar output
    seeded with 1 (to_params): the incoming gradient is not applied."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, moment: Tensor, cotangent: Tensor
                ) -> Tensor:
        ctx.cotangent = cotangent
        return moment.new_zeros(())

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor
                 ) -> tuple[Tensor, None]:
        return ctx.cotangent, None


def to_params(problem: Problem, layer: Layer, w_mean: Tensor, w_std: Tensor,
              b_mean: Tensor | None, b_std: Tensor | None,
              direct: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Per-sample gradients in the moments ([n, out, in] and [n, out]) -> per-sample gradients
    in the problem's parameters: the chain rule, one vector-Jacobian product of params ->
    moments for all n rows at once (so log-sigma, softplus or any other parameterisation of the
    moments is handled). The per-sample leaves are expanded views of the parameters (stride 0:
    nothing is cloned n times), and the cotangents enter the backward pass as they are
    (_Cotangent), so an identity map (weight_mu -> the weights' mean) costs nothing and exp
    one multiplication. (torch.func's vmap of a vjp would do the same, but its first call
    imports torch._dynamo, and autograd.grad with tensor grad_outputs imports sympy: seconds
    per process.) `direct`, the cost's direct term per sample, is added."""
    n = w_mean.shape[0]
    leaves = {name: value.detach().expand(n, *value.shape).requires_grad_(True)
              for name, value in problem.params.items()}
    with torch.enable_grad():
        moments = layer.spec.moments(leaves)
        nodes = [_Cotangent.apply(m, c) for m, c in
                 zip(moments, (w_mean, w_std, b_mean, b_std), strict=True)
                 if m is not None and c is not None and m.requires_grad]
        # No moment depends on a parameter (fixed scales, say): the sampling part is 0.
        grads = (torch.autograd.grad(sum(nodes), list(leaves.values()), allow_unused=True)
                 if nodes else [None] * len(leaves))
    out = {name: torch.zeros_like(leaf) if grad is None else grad
           for (name, leaf), grad in zip(leaves.items(), grads, strict=True)}
    if direct is not None:
        out = {name: out[name] + direct[name] for name in out}
    return out


def working_memory(per_row: Callable[[int, int], float]) -> Callable[..., float]:
    """An estimator's `memory` (working memory of one estimate in multiples of the parameters'
    size, which sizes the runner's chunks) on a Gaussian linear layer: the estimates plus
    `per_row(in, out)` elements per minibatch row (pre-activations, their gradients, random
    signs). 1 for problems without a layer, as for any one-evaluation estimator."""

    def memory(problem: Problem, **_: object) -> float:
        """1 + per-row temporaries x batch / parameters"""
        spec = problem.offers(GaussianLinearLayer)
        if spec is None:
            return 1.0
        batch, width = spec.inputs.shape
        out = _out_features(problem, spec)
        return 1.0 + batch * per_row(width, out) / problem.numel

    return memory


def _out_features(problem: Problem, spec: GaussianLinearLayer) -> int:
    with torch.no_grad():
        return int(spec.moments(detached(problem.params))[0].shape[-2])
