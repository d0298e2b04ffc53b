"""The binary-latent VAE of vae-bernoulli: model, exact expectations by enumeration per data
point, and the local-expectation gradient (the reference truth where enumeration is too big).

Model, for x in {0, 1}^64 (binarised digits) and z in {0, 1}^K:

    p(z) = prod_k Bernoulli(z_k; sigmoid(a_k))            a = prior_logits (learned)
    p(x | z) = prod_d Bernoulli(x_d; sigmoid(dec(z)_d))   decoder logits
    q(z | x) = prod_k Bernoulli(z_k; sigmoid(enc(x)_k))   encoder logits

enc and dec are affine maps (linear option) or affine -> tanh -> affine with HIDDEN units
(`nonlinear`). Tensors: enc_w [K, 64], enc_b [K] (or enc_w1 [H, 64], enc_b1 [H], enc_w2 [K, H],
enc_b2 [K]); dec_w [64, K], dec_b [64] (or dec_w1 [H, K], dec_b1 [H], dec_w2 [64, H],
dec_b2 [64]); prior_logits [K]. Any of them may carry one leading per-sample dimension.

The per data point negative ELBO with the Monte Carlo KL is

    f_n(z) = -log p(x_n | z) - log p(z) + log q(z | x_n),

with log Bernoulli(z; sigmoid(l)) = z l - softplus(l), a formula that is also defined and smooth
for z in [0, 1] (the relaxations of REBAR, RELAX, Gumbel-softmax evaluate it there). The suite's
cost is the minibatch mean: f = (1/B) sum_n f_n(z_n).

Exact expectations enumerate the 2^K states of one data point's z (K <= 16): the decoder runs
once per state for all data points, so the exact ELBO of a minibatch costs 2^K decoder passes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from gradbench.core.autograd import per_sample_grad
from gradbench.core.moments import Moments

Tensors = Mapping[str, Tensor]
PIXELS = 64
HIDDEN = 32  # hidden units of the nonlinear option's encoder and decoder
MAX_ENUMERATED = 16  # latents up to which expectations are exact (2^16 states per data point)
# Elements of one chunk's [rows, states] or [samples, flips, batch, pixels] temporaries.
_CHUNK_ELEMENTS = 1 << 21


def encoder_names(nonlinear: bool) -> tuple[str, ...]:
    return ("enc_w1", "enc_b1", "enc_w2", "enc_b2") if nonlinear else ("enc_w", "enc_b")


def model_names(nonlinear: bool) -> tuple[str, ...]:
    """Every trainable tensor: encoder, decoder, prior."""
    decoder = ("dec_w1", "dec_b1", "dec_w2", "dec_b2") if nonlinear else ("dec_w", "dec_b")
    return (*encoder_names(nonlinear), *decoder, "prior_logits")


def initial_tensors(latents: int, nonlinear: bool, pixel_means: Tensor, seed: int
                    ) -> dict[str, Tensor]:
    """The initialisation (float64): weights N(0, 1/fan_in) from a generator seeded by `seed`,
    hidden biases 0, the decoder's output bias at the logit of each pixel's training mean
    (clamped to [0.01, 0.99]), the encoder's output bias 0 and the prior logits 0."""
    gen = torch.Generator().manual_seed(seed)

    def weight(rows: int, cols: int) -> Tensor:
        return torch.randn(rows, cols, generator=gen, dtype=torch.float64) / math.sqrt(cols)

    def zeros(size: int) -> Tensor:
        return torch.zeros(size, dtype=torch.float64)

    means = pixel_means.to(torch.float64).clamp(0.01, 0.99)
    out_bias = torch.log(means) - torch.log1p(-means)
    k, h = latents, HIDDEN
    if nonlinear:
        tensors = {"enc_w1": weight(h, PIXELS), "enc_b1": zeros(h), "enc_w2": weight(k, h),
                   "enc_b2": zeros(k), "dec_w1": weight(h, k), "dec_b1": zeros(h),
                   "dec_w2": weight(PIXELS, h), "dec_b2": out_bias}
    else:
        tensors = {"enc_w": weight(k, PIXELS), "enc_b": zeros(k), "dec_w": weight(PIXELS, k),
                   "dec_b": out_bias}
    return {**tensors, "prior_logits": zeros(k)}


def _affine(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """x @ w^T + b, for w [out, in] or per-sample [m, out, in] (then x is [m, ..., in] or
    shared [B, in]; the result keeps the per-sample dimension first)."""
    return x @ w.transpose(-1, -2) + b.unsqueeze(-2)


def encoder_logits(x: Tensor, t: Tensors) -> Tensor:
    """q's logits [(m), B, K] for x [B, 64]."""
    if "enc_w" in t:
        return _affine(x, t["enc_w"], t["enc_b"])
    return _affine(torch.tanh(_affine(x, t["enc_w1"], t["enc_b1"])), t["enc_w2"], t["enc_b2"])


def decoder_logits(z: Tensor, t: Tensors) -> Tensor:
    """p(x | z)'s logits [m, B, 64] for z [m, B, K]."""
    if "dec_w" in t:
        return _affine(z, t["dec_w"], t["dec_b"])
    return _affine(torch.tanh(_affine(z, t["dec_w1"], t["dec_b1"])), t["dec_w2"], t["dec_b2"])


def log_bernoulli(z: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(z; sigmoid(logits)) summed over the last dim (z may be relaxed)."""
    return (z * logits - F.softplus(logits)).sum(-1)


def log_likelihood_terms(x: Tensor, z: Tensor, t: Tensors) -> Tensor:
    """log p(x_n | z_n) [m, B] for z [m, B, K] and binary x: log sigmoid(+-logit) per pixel,
    the same value as log_bernoulli's x l - softplus(l) for x in {0, 1} in fewer operations
    (RELAX's warm-up differentiates this twice: ~40% less time than the general form)."""
    return F.logsigmoid((2 * x - 1) * decoder_logits(z, t)).sum(-1)


def log_prior_terms(z: Tensor, t: Tensors) -> Tensor:
    """log p(z_n) [m, B] for z [m, B, K]."""
    return log_bernoulli(z, t["prior_logits"].unsqueeze(-2))


def log_q_terms(x: Tensor, z: Tensor, t: Tensors) -> Tensor:
    """log q(z_n | x_n) [m, B] for z [m, B, K]."""
    return log_bernoulli(z, encoder_logits(x, t))


def point_costs(x: Tensor, z: Tensor, t: Tensors) -> Tensor:
    """f_n(z_n) / B [m, B] for z [m, B, K]: they sum to the minibatch cost."""
    f = log_q_terms(x, z, t) - log_likelihood_terms(x, z, t) - log_prior_terms(z, t)
    return f / x.shape[0]


# ---------------------------------------------------------------- enumeration (K <= 16)


def states(latents: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """All 2^K binary states [2^K, K] (row s holds the bits of s)."""
    if latents > MAX_ENUMERATED:
        raise ValueError(f"enumeration is limited to {MAX_ENUMERATED} latents, not {latents}")
    codes = torch.arange(1 << latents)
    return ((codes[:, None] >> torch.arange(latents)) & 1).to(dtype)


def _state_chunks(x: Tensor, t: Tensors) -> Iterator[tuple[Tensor, Tensor]]:
    """For chunks of states: (log p(z_s) + log p(x_n | z_s) [B, S'], log q(z_s | x_n) [B, S'])."""
    latents = t["prior_logits"].shape[-1]
    all_states = states(latents, x.dtype)
    logits = encoder_logits(x, t)  # [B, K]
    log_norm = F.softplus(logits).sum(-1, keepdim=True)  # [B, 1]
    chunk = max(1, _CHUNK_ELEMENTS // max(x.shape[0], PIXELS))
    for start in range(0, all_states.shape[0], chunk):
        s = all_states[start:start + chunk]  # [S', K]
        dec = decoder_logits(s.unsqueeze(1), t).squeeze(1)  # [S', 64]
        log_lik = x @ dec.T - F.softplus(dec).sum(-1)  # [B, S']
        log_prior = log_bernoulli(s, t["prior_logits"])  # [S']
        yield log_lik + log_prior, logits @ s.T - log_norm


def exact_negative_elbo(x: Tensor, t: Tensors) -> Tensor:
    """mean_n E_q[f_n] over the rows of x [B, 64], by enumeration; differentiable in t."""
    total = torch.zeros((), dtype=x.dtype)
    for log_joint, log_q in _state_chunks(x, t):
        total = total + (log_q.exp() * (log_q - log_joint)).sum()
    return total / x.shape[0]


def exact_log_likelihood(x: Tensor, t: Tensors) -> Tensor:
    """mean_n log p(x_n) = log sum_z p(z) p(x_n | z), by enumeration (no gradient)."""
    with torch.no_grad():
        parts = [torch.logsumexp(log_joint, dim=1) for log_joint, _ in _state_chunks(x, t)]
        return torch.logsumexp(torch.stack(parts), dim=0).mean()


def exact_gradient(x: Tensor, t: Tensors, names: tuple[str, ...]) -> dict[str, Tensor]:
    """d exact_negative_elbo / d t[name] for `names`, by autograd through the enumeration."""
    leaves = {k: v.detach().clone().requires_grad_(k in names) for k, v in t.items()}
    grads = torch.autograd.grad(exact_negative_elbo(x, leaves), [leaves[k] for k in names])
    return dict(zip(names, grads, strict=True))


# ---------------------------------------------------------------- local expectation


def logit_gradients(x: Tensor, z: Tensor, t: Tensors) -> Tensor:
    """Local-expectation gradients w.r.t. q's logits l [B, K], one per draw z [m, B, K]
    (unbatched tensors t):

        g[i, n, k] = sigma'(l_nk) (f_n(z_i; z_nk = 1) - f_n(z_i; z_nk = 0)) / B.

    Unbiased for d E_q[f] / d l_nk: E_q[f_n] = E_{z_-k}[p f_n(1) + (1 - p) f_n(0)] plus the
    score of log q inside f_n, whose expectation is exactly 0 and is dropped, and the
    coordinate's own expectation is exact (Titsias & Lazaro-Gredilla 2015, local expectation
    gradients). log q and log p(z) are linear in z_k, so flipping z_k changes them by
    (z'_k - z_k)(l_k - a_k); only the likelihood is recomputed, for all K flips at once
    (`_flipped_log_likelihood`).
    """
    logits = encoder_logits(x, t)  # [B, K]
    step = 1 - 2 * z  # z'_k - z_k for the flip of coordinate k
    base = log_likelihood_terms(x, z, t)  # [m, B]
    # f(z') - f(z) for each single flip; f(1) - f(0) = step * (f(z') - f(z)).
    change = (base.unsqueeze(-1) - _flipped_log_likelihood(x, z, t)
              + step * (logits - t["prior_logits"]))
    return torch.sigmoid(logits) * torch.sigmoid(-logits) * step * change / x.shape[0]


def _flipped_log_likelihood(x: Tensor, z: Tensor, t: Tensors) -> Tensor:
    """log p(x_n | z_n with coordinate k flipped) [m, B, K] for z [m, B, K]: the flip moves the
    first affine map's output by (z'_k - z_k) times column k of its weight, so the decoder is
    never re-run from scratch (linear: only softplus of [m, B, K, 64] logits)."""
    step = (1 - 2 * z).unsqueeze(-1)  # [m, B, K, 1]
    if "dec_w" in t:
        w = t["dec_w"]  # [64, K]
        logits = decoder_logits(z, t)  # [m, B, 64]
        # x . logits' = x . logits + step_k (x . W[:, k]); only softplus needs the full tensor.
        dot = (x * logits).sum(-1).unsqueeze(-1) + step.squeeze(-1) * (x @ w)
        flipped = logits.unsqueeze(-2) + step * w.T  # [m, B, K, 64]
        return dot - F.softplus(flipped).sum(-1)
    hidden = _affine(z, t["dec_w1"], t["dec_b1"])  # [m, B, H]
    flipped = torch.tanh(hidden.unsqueeze(-2) + step * t["dec_w1"].T)  # [m, B, K, H]
    out = flipped @ t["dec_w2"].T + t["dec_b2"]  # [m, B, K, 64]
    return (x.unsqueeze(-2) * out).sum(-1) - F.softplus(out).sum(-1)


def reference_gradient(x: Tensor, t: Tensors, names: tuple[str, ...], samples: int,
                       generator: torch.Generator) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Mean and standard error of `samples` local-expectation estimates of d E_q[f] / d t[name]
    (the encoder's tensors), mapped from logits to parameters per sample by the chain rule."""
    with torch.no_grad():
        probs = torch.sigmoid(encoder_logits(x, t))
    b, k = probs.shape
    width = sum(t[name].numel() for name in names)
    chunk = max(2, _CHUNK_ELEMENTS // (k * b * PIXELS))
    moments, done = Moments.zeros(width), 0
    while done < samples:
        m = min(chunk, samples - done)
        u = torch.rand(m, b, k, generator=generator, dtype=x.dtype, device=generator.device)
        z = (u.to(probs.device) < probs).to(x.dtype)
        with torch.no_grad():
            g = logit_gradients(x, z, t)
        copies = {name: t[name].detach().expand(m, *t[name].shape).clone().requires_grad_(True)
                  for name in names}
        with torch.enable_grad():
            surrogate = (encoder_logits(x, {**t, **copies}) * g).sum((-2, -1))
            per_sample = per_sample_grad(surrogate, copies)
        moments = moments.merge(Moments.of(torch.cat(
            [per_sample[name].reshape(m, -1) for name in names], dim=1)))
        done += m
    summary = moments.summarize()
    mean, se = torch.from_numpy(summary["mean"]), torch.from_numpy(summary["mean_se"])
    out_mean, out_se, offset = {}, {}, 0
    for name in names:
        size = t[name].numel()
        out_mean[name] = mean[offset:offset + size].reshape(t[name].shape).clone()
        out_se[name] = se[offset:offset + size].reshape(t[name].shape).clone()
        offset += size
    return out_mean, out_se
