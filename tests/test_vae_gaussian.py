"""vae-gaussian: the PPCA decoder, the exact posterior, the closed-form ELBO and its gradient
(against autograd through a huge-sample estimate), the ELBO estimator variants (unbiased;
sticking the landing has zero variance at the exact posterior), and the Trainer."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import Tensor

from gradbench.app import measure, planning
from gradbench.core.capabilities import (
    BlockSeparableCost,
    DifferentiableCost,
    NegativeELBO,
    SeparableCost,
)
from gradbench.core.problem import Problem
from gradbench.core.seeding import seeded
from gradbench.estimators import all_estimators, get_estimator
from gradbench.suites import _digits, get_suite
from gradbench.suites import _linear_gaussian as model
from gradbench.suites.vae_gaussian import LinearGaussianTrainer

F64 = torch.float64
CPU = torch.device("cpu")
Z_LIMIT = 5.0
SMALL = {"latents": 2, "batch": 4, "encoder": 0.5}


def problem(**settings) -> Problem:
    return get_suite("vae-gaussian").problem({**SMALL, **settings})


def z_scores(estimates: dict[str, Tensor], truth: dict[str, Tensor]) -> float:
    """Largest |mean - truth| / SE over all coordinates; a rounding floor keeps exactly
    constant coordinates (pixels that are 0 in every row of the minibatch) finite."""
    worst = 0.0
    for name, value in truth.items():
        draws = estimates[name].double()
        n = draws.shape[0]
        mean, se = draws.mean(0), draws.std(0) / math.sqrt(n)
        floor = 1e-10 * value.abs().clamp(min=1.0)
        worst = max(worst, float(((mean - value).abs() / torch.sqrt(se**2 + floor**2)).max()))
    return worst


def run(name: str, prob: Problem, n: int, seed: int = 5, **hyper) -> dict[str, Tensor]:
    estimator = get_estimator(name)
    hyper = {**{h.name: h.default for h in estimator.hyperparams.values()}, **hyper}
    with seeded(seed, CPU):
        state = {"state": estimator.warmup(prob, **hyper)} if estimator.warmup else {}
        return estimator.fn(prob, n, **hyper, **state)


# ---------------------------------------------------------------- the model


def test_ppca_matches_scikit_learn_and_an_independent_likelihood() -> None:
    from scipy.stats import multivariate_normal
    from sklearn.decomposition import PCA

    x = _digits.training_rows(_digits.scaled())
    n = x.shape[0]
    for latents in (2, 8):
        fit = model.ppca_of_training_rows(latents)
        pca = PCA(n_components=latents).fit(x.numpy())
        # scikit-learn's variances divide by n - 1, the maximum-likelihood ones by n.
        assert fit.noise_var == pytest.approx(pca.noise_variance_ * (n - 1) / n, rel=1e-10)
        np.testing.assert_allclose(fit.eigenvalues.numpy(),
                                   pca.explained_variance_ * (n - 1) / n, rtol=1e-10)
        directions = (fit.weight / fit.weight.norm(dim=0)).T.numpy()
        np.testing.assert_allclose(np.abs((directions * pca.components_).sum(1)), 1, rtol=1e-9)
        gram = fit.weight.T @ fit.weight
        assert model.is_diagonal(gram)
        cov = (fit.weight @ fit.weight.T + fit.noise_var * torch.eye(64, dtype=F64)).numpy()
        expected = multivariate_normal(fit.mean.numpy(), cov).logpdf(x.numpy()).mean()
        assert fit.log_likelihood == pytest.approx(expected, rel=1e-10)
        # The ELBO at the PPCA decoder and its exact posterior is the log-likelihood.
        t = {**fit.decoder(), **fit.posterior_encoder()}
        assert float(model.negative_elbo(x, t)) == pytest.approx(-fit.log_likelihood, rel=1e-11)


def test_posterior_encoder_is_the_exact_posterior() -> None:
    fit = model.ppca_of_training_rows(8)
    w, c, noise_var = fit.weight, fit.mean, fit.noise_var
    x = _digits.minibatch(_digits.scaled(), 10)
    m = w.T @ w + noise_var * torch.eye(8, dtype=F64)  # general formula, no diagonal assumed
    mean = torch.linalg.solve(m, w.T @ (x - c).T).T
    cov = noise_var * torch.linalg.inv(m)
    loc, scale = model.encoder_moments(x, fit.posterior_encoder())
    torch.testing.assert_close(loc, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.diag_embed(scale[0] ** 2), cov, rtol=1e-10, atol=1e-14)
    grad = model.encoder_gradient(x, {**fit.decoder(), **fit.posterior_encoder()})
    for value in grad.values():
        assert float(value.abs().max()) < 1e-12


@pytest.mark.parametrize("encoder", [0.0, 0.5, 1.0])
def test_closed_form_gradient_is_the_gradient_of_the_closed_form_elbo(encoder: float) -> None:
    prob = problem(latents=8, batch=16, encoder=encoder)
    x = prob.data["x"]
    decoder = model.ppca_of_training_rows(8).decoder()
    leaves = {k: v.clone().requires_grad_(True) for k, v in prob.params.items()}
    grads = torch.autograd.grad(model.negative_elbo(x, {**decoder, **leaves}),
                                list(leaves.values()))
    for (name, truth), grad in zip(prob.exact_gradient.items(), grads, strict=True):
        torch.testing.assert_close(truth, grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("encoder", [0.0, 0.5])
def test_analytic_gradient_agrees_with_autograd_through_a_huge_sample_estimate(
        encoder: float) -> None:
    """2^16 draws in 32 batches: the autograd gradient of each batch's mean cost (the Monte
    Carlo ELBO, log q inside) estimates the gradient; the batches give its standard error."""
    prob = problem(encoder=encoder)
    batches, per_batch = 32, 2048
    grads, values = [], []
    with seeded(11, CPU):
        for _ in range(batches):
            leaves = {k: v.clone().requires_grad_(True) for k, v in prob.params.items()}
            z = prob.distribution(**leaves).rsample((per_batch,))
            value = prob.cost(z, leaves).mean()
            grads.append(torch.cat([g.reshape(-1) for g in
                                    torch.autograd.grad(value, list(leaves.values()))]))
            values.append(value.item())
    stacked = torch.stack(grads)
    mean, se = stacked.mean(0), stacked.std(0) / math.sqrt(batches)
    truth = torch.cat([g.reshape(-1) for g in prob.exact_gradient.values()])
    floor = 1e-10 * truth.abs().clamp(min=1.0)
    assert float(((mean - truth).abs() / torch.sqrt(se**2 + floor**2)).max()) < Z_LIMIT
    assert float(se.max()) < 0.05 * float(truth.abs().max())  # the test has power
    decoder = model.ppca_of_training_rows(2).decoder()
    exact_value = float(model.negative_elbo(prob.data["x"], {**decoder, **prob.params}))
    value_se = float(np.std(values, ddof=1)) / math.sqrt(batches)
    assert abs(float(np.mean(values)) - exact_value) < Z_LIMIT * value_se


def test_the_capabilities_pieces_add_up() -> None:
    prob = problem(latents=8, batch=6, encoder=0.3)
    z = prob.q().sample((7,))
    cost = prob.cost(z, prob.params)
    elbo = prob.offers(NegativeELBO)
    parts = (-elbo.log_likelihood(z, prob.params) - elbo.log_prior(z, prob.params)
             + elbo.log_q(z, prob.params))
    torch.testing.assert_close(parts, cost, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(prob.offers(SeparableCost).terms(z, prob.params).sum(-1), cost,
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(prob.offers(BlockSeparableCost).terms(z, prob.params).sum(-1),
                               cost, rtol=1e-12, atol=1e-12)
    # log q is q's own log-density, and the KL is E_q[log q - log p(z)] (here with torch's KL).
    q = prob.q()
    own = q.log_prob(z).sum((-2, -1)) / 6
    torch.testing.assert_close(elbo.log_q(z, prob.params), own, rtol=1e-12, atol=1e-12)
    prior = torch.distributions.Normal(torch.zeros_like(q.loc), torch.ones_like(q.loc))
    kl = torch.distributions.kl_divergence(q, prior).sum() / 6
    torch.testing.assert_close(elbo.kl(prob.params), kl, rtol=1e-12, atol=1e-12)


def test_only_the_ppca_decoder_offers_a_separable_cost() -> None:
    assert problem().offers(SeparableCost) is not None
    trainer = LinearGaussianTrainer(2, 4, CPU, F64)
    trained = trainer.problem(trainer.initial(), torch.arange(4))
    assert trained.offers(SeparableCost) is None
    assert trained.offers(NegativeELBO) is not None


# ---------------------------------------------------------------- the estimators


def unbiased_names(prob: Problem) -> list[str]:
    return [name for name, est in all_estimators().items()
            if est.unbiased and est.applicability(prob) is None]


def test_the_elbo_variants_apply_and_the_score_function_family_alongside() -> None:
    names = set(unbiased_names(problem()))
    assert {"pathwise", "pathwise-analytic-kl", "pathwise-stl", "score-function",
            "score-function-loo", "score-function-cv", "measure-valued"} <= names


def test_the_variants_refuse_a_cost_that_is_not_an_elbo() -> None:
    plain = dataclasses.replace(problem(), capabilities=(DifferentiableCost(),))
    for name in ("pathwise-analytic-kl", "pathwise-stl"):
        reason = get_estimator(name).applicability(plain)
        assert reason is not None and "negative ELBO" in reason


@pytest.mark.parametrize("name", unbiased_names(problem()))
def test_every_unbiased_estimator_is_unbiased(name: str) -> None:
    prob = problem()
    n = 4000 if name == "score-function" else 20_000
    assert z_scores(run(name, prob, n), prob.exact_gradient) < Z_LIMIT


def test_stl_has_zero_variance_at_the_exact_posterior_and_the_others_do_not() -> None:
    variance = {}
    for encoder in (0.5, 1.0):
        prob = problem(latents=8, batch=16, encoder=encoder)
        for name in ("pathwise", "pathwise-analytic-kl", "pathwise-stl"):
            draws = run(name, prob, 2000)
            variance[name, encoder] = sum(float(v.var(0).sum()) for v in draws.values())
    for name in ("pathwise", "pathwise-analytic-kl"):
        assert variance[name, 1.0] > 1.0
    # Zero up to the rounding of terms of size ~1 (float64): 20 orders of magnitude below.
    assert variance["pathwise-stl", 1.0] < 1e-20 * variance["pathwise", 1.0]
    assert variance["pathwise-stl", 0.5] > 0.1 * variance["pathwise", 0.5]


def test_the_zero_variance_shows_in_the_results_rows() -> None:
    def cell(estimator: str) -> planning.Cell:
        settings = (("latents", 2), ("batch", 16), ("encoder", 1.0))
        return planning.Cell("vae-gaussian", settings, estimator, (), "cpu", "float64", 500, 0)

    stl = measure.run_cell(cell("pathwise-stl"))
    mc = measure.run_cell(cell("pathwise"))
    assert max(stl["variance"]) < 1e-25
    assert max(mc["variance"]) > 0.1
    assert set(stl["truth_method"]) == {"analytic"}


# ---------------------------------------------------------------- the trainer


def exact_trainer_gradient(trainer: LinearGaussianTrainer, params: dict[str, Tensor],
                           rows: Tensor) -> dict[str, Tensor]:
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    x = _digits.training_rows(_digits.scaled())[rows]
    grads = torch.autograd.grad(model.negative_elbo(x, leaves), list(leaves.values()))
    return dict(zip(leaves, grads, strict=True))


@pytest.mark.parametrize("name", ["pathwise", "pathwise-analytic-kl", "pathwise-stl",
                                  "score-function-loo"])
def test_estimators_are_unbiased_for_every_trainable_parameter(name: str) -> None:
    """The decoder's gradient is the direct term of the cost; the encoder's goes through q."""
    trainer = LinearGaussianTrainer(2, 4, CPU, F64)
    params = trainer.initial()
    with torch.no_grad():  # away from the initialisation's zeros
        params["A"] += 0.05
        params["log_s"] -= 0.3
    rows = torch.arange(3, 7)
    prob = trainer.problem(params, rows)
    assert set(prob.params) == {"A", "b", "log_s", "W", "c", "log_sigma"}
    n = 5000 if name == "score-function-loo" else 20_000  # loo: 4 draws per estimate
    assert z_scores(run(name, prob, n), exact_trainer_gradient(trainer, params, rows)) < Z_LIMIT


def test_the_problem_keeps_no_reference_to_the_trainers_tensors() -> None:
    trainer = LinearGaussianTrainer(2, 4, CPU, F64)
    params = trainer.initial()
    prob = trainer.problem(params, torch.arange(4))
    before = {k: v.clone() for k, v in prob.params.items()}
    with torch.no_grad():
        for value in params.values():
            value += 1.0
    for name, value in prob.params.items():
        assert torch.equal(value, before[name])


def test_exact_gradient_steps_lower_the_exact_objective() -> None:
    trainer = LinearGaussianTrainer(2, 16, CPU, F64)
    params = trainer.initial()
    gen = torch.Generator().manual_seed(0)
    start = trainer.evaluate(params, gen)["train_negative_elbo"].value
    rows = torch.arange(1500)
    for _ in range(20):
        grads = exact_trainer_gradient(trainer, params, rows)
        params = {k: v - 0.01 * grads[k] for k, v in params.items()}
    end = trainer.evaluate(params, gen)
    assert end["train_negative_elbo"].value < start - 1.0
    assert end["optimum_gap"].value > 0


def test_evaluation_at_the_optimum() -> None:
    trainer = LinearGaussianTrainer(8, 16, CPU, F64)
    fit = model.ppca_of_training_rows(8)
    optimum = {**fit.decoder(), **fit.posterior_encoder()}
    metrics = trainer.evaluate(optimum, torch.Generator().manual_seed(3))
    assert abs(metrics["optimum_gap"].value) < 1e-9
    assert metrics["train_negative_elbo"].value == pytest.approx(-fit.log_likelihood)
    exact, bound = metrics["heldout_log_likelihood"], metrics["heldout_iw_bound"]
    # At the exact posterior every importance weight is p(x): the bound is exact, no noise.
    assert bound.value == pytest.approx(exact.value, rel=1e-10)
    assert bound.se < 1e-9
    again = trainer.evaluate(optimum, torch.Generator().manual_seed(3))
    assert again == metrics


def test_the_bound_lies_between_the_elbo_and_the_likelihood() -> None:
    trainer = LinearGaussianTrainer(8, 16, CPU, F64)
    fit = model.ppca_of_training_rows(8)
    halfway = {**fit.decoder(), **{k: 0.5 * v for k, v in fit.posterior_encoder().items()}}
    metrics = trainer.evaluate(halfway, torch.Generator().manual_seed(3))
    heldout = _digits.heldout_rows(_digits.scaled())
    elbo = -float(model.negative_elbo(heldout, halfway))
    bound = metrics["heldout_iw_bound"]
    assert bound.se > 0
    # E[bound] lies between the ELBO and log p(x); allow its Monte Carlo noise.
    assert elbo - Z_LIMIT * bound.se < bound.value
    assert bound.value < metrics["heldout_log_likelihood"].value + Z_LIMIT * bound.se
    assert bound.value - elbo > 10 * bound.se  # 64 draws tighten this bound measurably


@pytest.mark.slow
@pytest.mark.parametrize("encoder", [0.0, 0.5, 1.0])
def test_every_unbiased_estimator_is_unbiased_on_the_default_grid(encoder: float) -> None:
    prob = problem(latents=8, batch=16, encoder=encoder)
    for name in unbiased_names(prob):
        n = 5000 if name == "score-function-loo" else 20_000
        assert z_scores(run(name, prob, n), prob.exact_gradient) < Z_LIMIT, name
