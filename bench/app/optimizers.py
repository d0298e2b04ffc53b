"""The optimizers `bench train` offers: plain SGD and Adam, in place on named parameter tensors.

Why not torch.optim: constructing the first torch optimizer in a process imports torch._dynamo,
about 3 s here, paid again by every worker process (estimators/relax.py measured the same); each
update is a few lines.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

OPTIMIZERS = ("sgd", "adam")


class SGD:
    """theta <- theta - lr g."""

    def __init__(self, params: Mapping[str, Tensor], lr: float) -> None:
        self.params, self.lr = params, lr

    @torch.no_grad()
    def step(self, grads: Mapping[str, Tensor]) -> None:
        for name, value in self.params.items():
            value.sub_(grads[name], alpha=self.lr)


class Adam:
    """Adam (Kingma & Ba 2015) with the default betas (0.9, 0.999) and eps 1e-8, bias-corrected
    moments, no weight decay."""

    def __init__(self, params: Mapping[str, Tensor], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = {name: torch.zeros_like(value) for name, value in params.items()}
        self.v = {name: torch.zeros_like(value) for name, value in params.items()}
        self.t = 0

    @torch.no_grad()
    def step(self, grads: Mapping[str, Tensor]) -> None:
        self.t += 1
        b1, b2 = self.betas
        correction1, correction2 = 1 - b1**self.t, 1 - b2**self.t
        for name, value in self.params.items():
            grad, m, v = grads[name], self.m[name], self.v[name]
            m.mul_(b1).add_(grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            denominator = (v / correction2).sqrt_().add_(self.eps)
            value.addcdiv_(m, denominator, value=-self.lr / correction1)


def make_optimizer(name: str, params: Mapping[str, Tensor], lr: float) -> SGD | Adam:
    """The optimizer `name` (one of OPTIMIZERS) updating `params` in place."""
    if name == "sgd":
        return SGD(params, lr)
    if name == "adam":
        return Adam(params, lr)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
