"""The held-out importance-weighted bound of the VAE trainers, with an honest standard error.

For each held-out row x_r, S draws z_s ~ q(z | x_r) give the IWAE bound (Burda et al. 2016)

    L_S(x_r) = log (1/S) sum_s p(x_r, z_s) / q(z_s | x_r)   <=   log p(x_r),

and the metric is its mean over rows. Its only randomness is the draws (the rows are fixed), so
its standard error is that of the Monte Carlo noise, not the spread over rows: each row gets J
independent groups of S draws, L_{r,j}, the estimate is mean_{r,j} L_{r,j} (whose mean is still
the S-sample bound), and

    Var(estimate) = (1 / R^2) sum_r Var(L_r) / J,   Var(L_r) estimated by the sample variance of
    L_{r,1..J}: unbiased for each row, and summed over hundreds of rows, stable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradbench.core.training import Evaluation

DRAWS = 64  # S, draws per bound
# J, independent groups per row. Two suffice for the standard error (each row's variance
# estimate has one degree of freedom, but their sum over hundreds of rows is stable), and the
# bound is evaluated often during training: 128 draws per row cost ~0.1 s per evaluation.
GROUPS = 2


def importance_weighted(log_weights: Tensor) -> Evaluation:
    """The mean S-sample bound and its standard error from log p(x, z) - log q(z | x) of shape
    [J, S, R] (groups, draws, rows), J >= 2."""
    groups, draws, rows = log_weights.shape
    if groups < 2:
        raise ValueError("the standard error needs at least 2 groups of draws")
    bounds = torch.logsumexp(log_weights, dim=1) - math.log(draws)  # [J, R]
    per_row_var = bounds.var(dim=0)  # [R], unbiased over the J groups
    se = math.sqrt(float(per_row_var.sum()) / groups) / rows
    return Evaluation(float(bounds.mean()), se, higher_is_better=True)
