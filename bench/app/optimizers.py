"""The optimizers `bench train` offers: plain SGD and Adam, in place on one flat parameter
vector (bench train keeps every trainable tensor as a view into it, so a step is a handful of
kernels whatever the number of tensors). The vector never requires grad, so in-place updates need
no torch.no_grad (whose context costs more than this update on small models).

Why not torch.optim: constructing the first torch optimizer in a process imports torch._dynamo,
about 3 s here, paid again by every worker process (estimators/relax.py measured the same); each
update is a few lines.
"""

from __future__ import annotations

import torch
from torch import Tensor

OPTIMIZERS = ("sgd", "adam")


class SGD:
    """theta <- theta - lr g."""

    def __init__(self, flat: Tensor, lr: float) -> None:
        self.flat, self.lr = flat, lr

    def step(self, grad: Tensor) -> None:
        self.flat.sub_(grad, alpha=self.lr)


class Adam:
    """Adam (Kingma & Ba 2015) with the default betas (0.9, 0.999) and eps 1e-8, bias-corrected
    moments, no weight decay."""

    def __init__(self, flat: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.flat, self.lr, self.betas, self.eps = flat, lr, betas, eps
        self.m = torch.zeros_like(flat)
        self.v = torch.zeros_like(flat)
        self.t = 0

    def step(self, grad: Tensor) -> None:
        self.t += 1
        b1, b2 = self.betas
        correction1, correction2 = 1 - b1**self.t, 1 - b2**self.t
        self.m.lerp_(grad, 1 - b1)  # m <- b1 m + (1 - b1) g
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denominator = (self.v / correction2).sqrt_().add_(self.eps)
        self.flat.addcdiv_(self.m, denominator, value=-self.lr / correction1)


def make_optimizer(name: str, flat: Tensor, lr: float) -> SGD | Adam:
    """The optimizer `name` (one of OPTIMIZERS) updating the vector `flat` in place."""
    if name == "sgd":
        return SGD(flat, lr)
    if name == "adam":
        return Adam(flat, lr)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
