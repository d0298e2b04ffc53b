"""The linear-Gaussian VAE of vae-gaussian: model, probabilistic-PCA solution, closed-form ELBO.

Model, for x in R^D (D = 64 pixels in [0, 1]) and z in R^K:

    p(z) = N(0, I),   p(x | z) = N(W z + c, sigma^2 I),   q(z | x) = N(A x + b, diag(s)^2),
    s = exp(log_s) (one scale per latent, shared by all x).

Tensors: encoder A [K, D], b [K], log_s [K]; decoder W [D, K], c [D], log_sigma [] (log of the
noise standard deviation). Any of them may carry one leading per-sample dimension (the
estimators' per-sample copies); the functions below broadcast it.

Negative ELBO of one data point, with mu = A x + b, r = x - W mu - c, w_k = ||W[:, k]||^2
(E_q ||x - W z - c||^2 = ||r||^2 + sum_k w_k s_k^2, and the Gaussian KL to N(0, I)):

    L(x) = (||r||^2 + sum_k w_k s_k^2) / (2 sigma^2) + D log sigma + D/2 log(2 pi)
           + 1/2 sum_k (s_k^2 + mu_k^2 - 1 - 2 log s_k)

The suites' objective is its mean over a minibatch. Its gradient in the encoder, with
G_n = (W^T W / sigma^2 + I) mu_n - W^T (x_n - c) / sigma^2 (= dL/dmu_n):

    dL/dA = mean_n G_n x_n^T,   dL/db = mean_n G_n,   dL/dlog_s_k = s_k^2 (w_k / sigma^2 + 1) - 1.

Probabilistic PCA (Tipping & Bishop 1999), maximum likelihood on the training rows: c = the
sample mean, S = the sample covariance with eigenvalues l_1 >= ... >= l_D and eigenvectors U,
sigma^2 = the mean of the D - K discarded eigenvalues, W = U_K (Lambda_K - sigma^2 I)^(1/2)
(the rotation R = I, so W's columns are orthogonal). There W^T W = Lambda_K - sigma^2 I is
diagonal and M = W^T W + sigma^2 I = Lambda_K, so the exact posterior
p(z | x) = N(M^-1 W^T (x - c), sigma^2 M^-1) is mean-field and the encoder reaches it:

    A* = Lambda_K^-1 W^T,   b* = -A* c,   log_s* = 1/2 log(sigma^2 / l_k).

At (A*, b*, log_s*) the gradient above is exactly zero (G_n = 0 and s_k^2 (w_k + sigma^2) =
sigma^2), and log p(x, z) - log q(z | x) = log p(x) for every z, which is why
sticking-the-landing has zero variance there.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gradbench.suites._digits import scaled, training_rows

Tensors = dict[str, Tensor]
ENCODER = ("A", "b", "log_s")
DECODER = ("W", "c", "log_sigma")
_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class PPCA:
    """The maximum-likelihood probabilistic PCA of the training rows (float64, CPU)."""

    mean: Tensor  # c [D]
    weight: Tensor  # W [D, K], orthogonal columns
    noise_var: float  # sigma^2
    eigenvalues: Tensor  # l_1..l_K [K]
    log_likelihood: float  # mean log p(x) over the training rows at the optimum

    def decoder(self) -> Tensors:
        return {"W": self.weight, "c": self.mean,
                "log_sigma": torch.tensor(0.5 * math.log(self.noise_var), dtype=torch.float64)}

    def posterior_encoder(self) -> Tensors:
        """The encoder of the exact posterior (A*, b*, log_s*)."""
        a = self.weight.T / self.eigenvalues[:, None]
        return {"A": a, "b": -a @ self.mean,
                "log_s": 0.5 * torch.log(self.noise_var / self.eigenvalues)}


def fit_ppca(x: Tensor, latents: int) -> PPCA:
    """Maximum-likelihood probabilistic PCA of the rows of x [N, D] with `latents` components."""
    n, d = x.shape
    if not 1 <= latents < d:
        raise ValueError(f"latents must be between 1 and {d - 1}, not {latents}")
    x = x.to(torch.float64)
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / n
    values, vectors = torch.linalg.eigh(cov)  # ascending
    values, vectors = values.flip(0).clamp_min(0.0), vectors.flip(1)
    noise_var = float(values[latents:].mean())
    if not noise_var > 0 or not bool(values[latents - 1] > noise_var):
        raise ValueError(f"probabilistic PCA with {latents} latents is degenerate on this data")
    top = values[:latents]
    weight = vectors[:, :latents] * torch.sqrt(top - noise_var)
    # Fix each column's sign (eigh's is arbitrary): the largest-magnitude entry is positive.
    signs = torch.sign(weight.gather(0, weight.abs().argmax(0, keepdim=True)))
    weight = weight * signs
    marginal = weight @ weight.T + noise_var * torch.eye(d, dtype=torch.float64)
    log_lik = float(marginal_log_likelihood(x, mean, marginal).mean())
    return PPCA(mean, weight, noise_var, top.clone(), log_lik)


def marginal_log_likelihood(x: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
    """log N(x_n; mean, cov) per row of x [N, D] (the linear-Gaussian model's exact log p(x))."""
    chol = torch.linalg.cholesky(cov)
    white = torch.linalg.solve_triangular(chol, (x - mean).T, upper=False)  # [D, N]
    log_det = 2 * torch.log(torch.diagonal(chol)).sum()
    return -0.5 * (white.square().sum(0) + log_det + x.shape[1] * _LOG_2PI)


# ---------------------------------------------------------------- model pieces (batched)


def encoder_moments(x: Tensor, t: Tensors) -> tuple[Tensor, Tensor]:
    """q's loc [(m), B, K] and scale [(m), 1, K] for data x [B, D]."""
    loc = x @ t["A"].transpose(-1, -2) + t["b"].unsqueeze(-2)
    return loc, t["log_s"].exp().unsqueeze(-2)


def log_likelihood(x: Tensor, z: Tensor, t: Tensors) -> Tensor:
    """mean_n log p(x_n | z_n) for z [m, B, K] -> [m]."""
    mean = z @ t["W"].transpose(-1, -2) + t["c"].unsqueeze(-2)  # [m, B, D]
    log_sigma = t["log_sigma"]
    sq = (x - mean).square().sum(-1).mean(-1)  # [m]
    d = x.shape[-1]
    return -0.5 * sq * torch.exp(-2 * log_sigma) - d * log_sigma - 0.5 * d * _LOG_2PI


def log_prior(z: Tensor) -> Tensor:
    """mean_n log N(z_n; 0, I) for z [m, B, K] -> [m]."""
    return -0.5 * z.square().sum(-1).mean(-1) - 0.5 * z.shape[-1] * _LOG_2PI


def log_q(x: Tensor, z: Tensor, t: Tensors) -> Tensor:
    """mean_n log q(z_n | x_n) for z [m, B, K] -> [m]."""
    loc, scale = encoder_moments(x, t)
    log_scale = t["log_s"].unsqueeze(-2)
    white = (z - loc) / scale
    per_point = (-0.5 * white.square() - log_scale - 0.5 * _LOG_2PI).sum(-1)
    return per_point.mean(-1)


def kl(x: Tensor, t: Tensors) -> Tensor:
    """mean_n KL(q(. | x_n) || N(0, I)) in closed form: [] or [m] for per-sample tensors."""
    loc, _ = encoder_moments(x, t)
    log_s = t["log_s"]
    per_latent = (torch.exp(2 * log_s) - 1 - 2 * log_s).sum(-1)  # [] or [m]
    return 0.5 * (per_latent + loc.square().sum(-1).mean(-1))


def point_costs(x: Tensor, z: Tensor, t: Tensors) -> Tensor:
    """Per data point negative ELBO terms with the Monte Carlo KL, each already divided by B
    (so they sum to the cost): [m, B] for z [m, B, K]."""
    loc, scale = encoder_moments(x, t)
    mean = z @ t["W"].transpose(-1, -2) + t["c"].unsqueeze(-2)
    log_sigma = t["log_sigma"].reshape(*t["log_sigma"].shape, 1)
    d, k = x.shape[-1], z.shape[-1]
    nll = (0.5 * (x - mean).square().sum(-1) * torch.exp(-2 * log_sigma) + d * log_sigma
           + 0.5 * d * _LOG_2PI)
    prior = -0.5 * z.square().sum(-1) - 0.5 * k * _LOG_2PI
    white = (z - loc) / scale
    entropy_term = (-0.5 * white.square() - t["log_s"].unsqueeze(-2) - 0.5 * _LOG_2PI).sum(-1)
    return (nll - prior + entropy_term) / x.shape[0]


def separable_terms(x: Tensor, z: Tensor, t: Tensors) -> Tensor:
    """The cost split into one term per latent coordinate (n, k), [m, B * K] for z [m, B, K],
    exact where W^T W is diagonal (the PPCA decoder; not a trained one). With u = W^T (x - c),
    ||x - W z - c||^2 = ||x - c||^2 - 2 u . z + sum_k w_k z_k^2, and the prior and log q are
    sums over coordinates already; each data point's constant is shared equally by its K terms.
    """
    w, c, log_sigma = t["W"], t["c"], t["log_sigma"]
    noise_var = torch.exp(2 * log_sigma)
    u = (x - c) @ w  # [B, K]
    d, k = x.shape[-1], z.shape[-1]
    constant = (0.5 * (x - c).square().sum(-1) / noise_var + d * log_sigma
                + 0.5 * d * _LOG_2PI) / k  # [B]
    loc, scale = encoder_moments(x, t)
    white = (z - loc) / scale
    log_q_terms = -0.5 * white.square() - t["log_s"].unsqueeze(-2) - 0.5 * _LOG_2PI
    terms = (constant.unsqueeze(-1) + (w.square().sum(0) * z.square() - 2 * u * z)
             / (2 * noise_var) + 0.5 * z.square() + 0.5 * _LOG_2PI + log_q_terms)
    return (terms / x.shape[0]).flatten(-2)


def is_diagonal(matrix: Tensor, tolerance: float = 1e-12) -> bool:
    """Whether a square matrix's off-diagonal entries are negligible next to its diagonal."""
    off = matrix - torch.diag_embed(torch.diagonal(matrix))
    return bool(off.abs().max() <= tolerance * torch.diagonal(matrix).abs().max())


# ---------------------------------------------------------------- closed forms


def negative_elbo(x: Tensor, t: Tensors) -> Tensor:
    """The exact mean negative ELBO over the rows of x [B, D] (unbatched tensors): a scalar,
    differentiable in every tensor (the trainer's exact objective; autograd checks)."""
    loc, _ = encoder_moments(x, t)
    w, c, log_sigma, log_s = t["W"], t["c"], t["log_sigma"], t["log_s"]
    residual = x - loc @ w.T - c
    spread = (w.square().sum(0) * torch.exp(2 * log_s)).sum()
    d = x.shape[1]
    expected_nll = (0.5 * (residual.square().sum(1).mean() + spread) * torch.exp(-2 * log_sigma)
                    + d * log_sigma + 0.5 * d * _LOG_2PI)
    return expected_nll + kl(x, t)


def encoder_gradient(x: Tensor, t: Tensors) -> Tensors:
    """d negative_elbo / d(A, b, log_s) by the closed form in the module docstring."""
    w, c, log_s = t["W"], t["c"], t["log_s"]
    noise_var = torch.exp(2 * t["log_sigma"])
    loc, _ = encoder_moments(x, t)
    k = w.shape[1]
    precision = w.T @ w / noise_var + torch.eye(k, dtype=w.dtype, device=w.device)
    g = loc @ precision - (x - c) @ w / noise_var  # [B, K]; precision is symmetric
    b = x.shape[0]
    column_sq = w.square().sum(0)
    return {
        "A": g.T @ x / b,
        "b": g.mean(0),
        "log_s": torch.exp(2 * log_s) * (column_sq / noise_var + 1) - 1,
    }


@functools.lru_cache(maxsize=16)
def ppca_of_training_rows(latents: int) -> PPCA:
    """The PPCA decoder of the digits' training rows (cached: one eigendecomposition)."""
    return fit_ppca(training_rows(scaled()), latents)
