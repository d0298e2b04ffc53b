"""RELAX (Grathwohl et al. 2018): REBAR's estimator with a learned surrogate c_phi.

z = th + noise, b = H(z), z~ ~ p(z | b) reparameterized, y = relax(z, tau):

    g = [f(b) - c_phi(z~)] grad log p(b) + grad c_phi(z) - grad c_phi(z~)

is unbiased for every phi (REBAR's argument with c_phi in place of eta f(sigma_tau(.))). Here

    c_phi(z) = eta f(relax(z, tau)) + w2 . tanh(W1 relax(z, tau) + b1) + b2,
    phi = (eta, log tau, W1, b1, w2, b2), 16 hidden units,

initialised at REBAR (eta = 1, tau = the `tau` hyperparameter, w2 = b2 = 0; W1 ~ N(0, 1/D)).

Warm-up (once per cell, at the cell's parameters, before measurement): `warmup_steps` Adam steps
(learning rate `lr`) on the single-sample variance, loss = mean over a batch of `warmup_batch`
draws of sum_coords g^2. E[g] does not depend on phi, so grad_phi E[|g|^2] = grad_phi of the
summed variances (the paper's objective). Its randomness is the global generator, which the
runner seeds around the warm-up. Evaluations of f: 3 per estimate (f(b), and f inside c_phi at
z and at z~) and 3 per warm-up draw: warmup_evals = warmup_steps * warmup_batch * 3.

Default budget (200 steps x 64 draws, lr 0.03), from a sweep of lr in {0.01, 0.03, 0.1} over
the Bernoulli and categorical suites: on the REBAR toy (theta = 0, t = 0.499) the summed variance
fell from REBAR's 2.2e-2 to 3e-5 / 3.5e-6 / 9e-8; on bernoulli-probs dim 20 and categorical
(C = 3) lr 0.1 was ~20% worse than 0.01; on bernoulli-coupled dim 12 no lr beat REBAR by more
than 5%. 0.03 is the compromise; sweep `lr` and `warmup_steps` per problem for more.

g depends on phi through c_phi(z~) in the score coefficient and through the gradients of c_phi,
so the warm-up needs g as a differentiable function of phi. c_phi(z~) is evaluated once, at a
leaf copy of z~ cut from th: its value gives the coefficient (live in phi, constant in th), and
its gradient d c_phi / d z~ (live in phi) times dz~/dth gives grad c_phi(z~): no extra f call.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradbench.core.autograd import check_estimates, detached, log_prob_sum, per_sample_grad
from gradbench.core.estimator import Hyperparam, register_estimator
from gradbench.core.problem import Problem
from gradbench.core.requirements import discrete, relaxed_cost
from gradbench.estimators._relaxations import (
    Discrete,
    check_tau,
    discrete_view,
    require,
    tau_hyperparam,
)

HIDDEN = 16


def _check_steps(value: int) -> str | None:
    return None if value >= 0 else f"warmup_steps must be >= 0, not {value}"


def _check_batch(value: int) -> str | None:
    return None if value >= 1 else f"warmup_batch must be >= 1, not {value}"


def _check_lr(value: float) -> str | None:
    ok = math.isfinite(value) and value > 0
    return None if ok else f"lr must be a finite learning rate > 0, not {value}"


def _check_all(tau: float, warmup_steps: int, warmup_batch: int, lr: float) -> None:
    for reason in (check_tau(tau), _check_steps(warmup_steps), _check_batch(warmup_batch),
                   _check_lr(lr)):
        require(reason)


def _surrogate(problem: Problem, d: Discrete, phi: dict[str, Tensor], zs: list[Tensor],
               b: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
    """f(b) [n] (with its graph in the parameters: the cost's direct term) and c_phi at each z
    in zs ([n] each), with one batched cost call. c_phi sees the parameters cut from the graph,
    so the control variate adds no direct term of its own."""
    n = b.shape[0]
    ys = [d.relax(z, phi["log_tau"].exp()) for z in zs]
    cut = detached(params)
    costs = problem.cost(torch.cat([b, *ys]),
                         {k: torch.cat([params[k], *[cut[k]] * len(ys)]) for k in params})
    values = []
    for k, y in enumerate(ys):
        hidden = torch.tanh(y.reshape(n, -1) @ phi["w1"].T + phi["b1"])
        mlp = hidden @ phi["w2"] + phi["b2"]
        values.append(phi["eta"] * costs[(k + 1) * n:(k + 2) * n] + mlp)
    return costs[:n], values


def _estimates(problem: Problem, n: int, phi: dict[str, Tensor], *, create_graph: bool
               ) -> dict[str, Tensor]:
    """n RELAX estimates; with create_graph they stay differentiable in phi (for the warm-up)."""
    params = problem.expand_params(n, requires_grad=True)
    q = problem.distribution(**params)
    d = discrete_view(q)
    z = d.perturb()
    b = d.hard(z)
    z_cond = d.conditional(b)
    z_leaf = z_cond.detach().requires_grad_(True)  # z~ cut from th, live in phi
    f_b, (c_z, c_cond) = _surrogate(problem, d, phi, [z, z_leaf], b, params)
    # retain_graph: c(z) shares the batched cost call's graph, still needed below.
    (dc_cond,) = torch.autograd.grad(c_cond.sum(), z_leaf, create_graph=create_graph,
                                     retain_graph=True)
    if not create_graph:
        c_cond, dc_cond = c_cond.detach(), dc_cond.detach()
    # d/dth: (f(b) - c(z~)) grad log p(b) + grad c(z) - (dc/dz~) dz~/dth.
    surrogate = ((f_b.detach() - c_cond) * log_prob_sum(q, b) + f_b + c_z
                 - (dc_cond * z_cond).reshape(n, -1).sum(-1))
    if not create_graph:
        return per_sample_grad(surrogate, params)
    names = list(params)
    grads = torch.autograd.grad(surrogate.sum(), [params[k] for k in names], create_graph=True,
                                allow_unused=True)
    return {k: torch.zeros_like(params[k]) if g is None else g
            for k, g in zip(names, grads, strict=True)}


def _initial_phi(problem: Problem, tau: float) -> dict[str, Tensor]:
    """REBAR's control variate (eta = 1, the given tau) plus a zero-output MLP."""
    like = next(iter(problem.params.values()))
    width = discrete_view(problem.q()).logits.numel()  # one relaxed draw, flattened
    options = {"device": like.device, "dtype": like.dtype}
    return {
        "eta": torch.ones((), **options),
        "log_tau": torch.tensor(math.log(tau), **options),
        "w1": torch.randn(HIDDEN, width, **options) / math.sqrt(width),
        "b1": torch.zeros(HIDDEN, **options),
        "w2": torch.zeros(HIDDEN, **options),
        "b2": torch.zeros((), **options),
    }


def warmup(problem: Problem, tau: float = 0.5, warmup_steps: int = 200, warmup_batch: int = 64,
           lr: float = 0.03, **_: object) -> dict[str, Tensor]:
    """Fit phi by Adam on the summed single-sample variance of g at the problem's parameters."""
    _check_all(tau, warmup_steps, warmup_batch, lr)
    phi = {k: v.requires_grad_(True) for k, v in _initial_phi(problem, tau).items()}
    adam = _Adam(list(phi.values()), lr)
    with torch.enable_grad():
        for _ in range(warmup_steps):  # optimisation steps; each one is vectorised over a batch
            g = _estimates(problem, warmup_batch, phi, create_graph=True)
            loss = sum(v.reshape(warmup_batch, -1).square().sum(-1).mean() for v in g.values())
            assert isinstance(loss, Tensor)
            grads = torch.autograd.grad(loss, list(phi.values()), allow_unused=True)
            adam.step([torch.zeros_like(v) if d is None else d
                       for v, d in zip(phi.values(), grads, strict=True)])
    return {k: v.detach() for k, v in phi.items()}


class _Adam:
    """Adam (Kingma & Ba 2015) with the default betas and eps, in place on leaf tensors.

    Why not torch.optim.Adam: constructing the first torch optimizer in a process imports
    torch._dynamo, about 3 s on this machine, paid again by every worker process; the update
    itself is four lines.
    """

    def __init__(self, values: list[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.values, self.lr, self.betas, self.eps = values, lr, betas, eps
        self.m = [torch.zeros_like(v) for v in values]
        self.v = [torch.zeros_like(v) for v in values]
        self.t = 0

    @torch.no_grad()
    def step(self, grads: list[Tensor]) -> None:
        self.t += 1
        b1, b2 = self.betas
        for value, grad, m, v in zip(self.values, grads, self.m, self.v, strict=True):
            m.mul_(b1).add_(grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            m_hat = m / (1 - b1**self.t)
            v_hat = v / (1 - b2**self.t)
            value.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))


def _warmup_evals(problem: Problem, warmup_steps: int = 200, warmup_batch: int = 64,
                  **_: object) -> float:
    return float(warmup_steps * warmup_batch * 3)


@register_estimator(
    "relax",
    family="relaxed-control-variate",
    unbiased=True,
    requires=(discrete, relaxed_cost),
    hyperparams=(
        tau_hyperparam(0.5, "initial temperature of the surrogate's relaxation (> 0; learned "
                       "in the warm-up)"),
        Hyperparam("warmup_steps", int, 200, "Adam steps fitting the surrogate before "
                   "measurement (>= 0; 0 leaves it at REBAR's control variate)", _check_steps),
        Hyperparam("warmup_batch", int, 64, "draws per warm-up step (>= 1)", _check_batch),
        Hyperparam("lr", float, 0.03, "Adam learning rate of the warm-up (> 0)", _check_lr),
    ),
    evals=3,
    warmup=warmup,
    warmup_evals=_warmup_evals,
    surrogate=True,
)
def relax(problem: Problem, n: int, tau: float = 0.5, warmup_steps: int = 200,
          warmup_batch: int = 64, lr: float = 0.03, state: dict[str, Tensor] | None = None
          ) -> dict[str, Tensor]:
    """RELAX (Grathwohl et al. 2018): REBAR with a learned surrogate, fitted in a warm-up."""
    _check_all(tau, warmup_steps, warmup_batch, lr)
    if state is None:
        # Fitting here would hide the warm-up's evaluations of f from the cost accounting.
        raise ValueError("relax needs state=warmup(problem, ...) first")
    return check_estimates(problem, n, _estimates(problem, n, state, create_graph=False))
