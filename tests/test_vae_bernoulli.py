"""vae-bernoulli: the enumeration truth against a direct computation (4 latents), the
local-expectation reference against enumeration, every unbiased discrete estimator unbiased,
the reference run's checkpoints, and the Trainer."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from torch import Tensor

from gradbench.core import enumeration
from gradbench.core.capabilities import DifferentiableCost, RelaxedCost
from gradbench.core.problem import Problem
from gradbench.core.seeding import seeded
from gradbench.estimators import all_estimators, get_estimator
from gradbench.suites import _binary_vae as model
from gradbench.suites import _digits, get_suite, vae_bernoulli
from gradbench.suites import _vae_bernoulli_training as training

F64 = torch.float64
CPU = torch.device("cpu")
Z_LIMIT = 5.0
SMALL = {"latents": 4, "batch": 3, "point": "30", "nonlinear": False}
DISCRETE = ("score-function", "score-function-loo", "score-function-cv", "arm", "disarm",
            "rebar", "relax", "straight-through", "gumbel-softmax", "straight-through-gumbel",
            "gumbel-rao", "exact")


def problem(**settings) -> Problem:
    return get_suite("vae-bernoulli").problem({**SMALL, **settings})


def z_max(estimates: dict[str, Tensor], truth: dict[str, Tensor],
          truth_se: dict[str, Tensor] | None = None) -> float:
    """Largest |mean - truth| / SE over all coordinates (truth's SE in quadrature; a rounding
    floor keeps constant coordinates, e.g. pixels that are 0 in every row, finite)."""
    worst = 0.0
    for name, value in truth.items():
        draws = estimates[name].double()
        n = draws.shape[0]
        mean, se = draws.mean(0), draws.std(0) / math.sqrt(n)
        extra = truth_se[name] if truth_se is not None else 0.0
        floor = 1e-10 * value.abs().clamp(min=1.0)
        z = (mean - value).abs() / torch.sqrt(se**2 + extra**2 + floor**2)
        worst = max(worst, float(z.max()))
    return worst


def run(name: str, prob: Problem, n: int, seed: int = 3, **hyper) -> dict[str, Tensor]:
    estimator = get_estimator(name)
    hyper = {**{h.name: h.default for h in estimator.hyperparams.values()}, **hyper}
    with seeded(seed, CPU):
        state = {"state": estimator.warmup(prob, **hyper)} if estimator.warmup else {}
        return estimator.fn(prob, n, **hyper, **state)


# ---------------------------------------------------------------- truth


def direct_gradient(x: np.ndarray, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """d/d(enc_w, enc_b) of mean_n E_q[f_n] for the linear model, by hand (numpy, no autograd):
    for q's logits l_n, dE[f_n]/dl_n = sum_z q(z) [f_n(z) (z - p_n) + (z - p_n)] (the score
    term, then f's own dependence on l through log q), and l_n = enc_w x_n + enc_b."""
    latents = t["enc_b"].shape[0]
    states = np.array(list(itertools.product([0.0, 1.0], repeat=latents)))
    grad_w, grad_b = np.zeros_like(t["enc_w"]), np.zeros_like(t["enc_b"])
    for row in x:
        logits = t["enc_w"] @ row + t["enc_b"]
        p = 1 / (1 + np.exp(-logits))
        g = np.zeros(latents)
        for z in states:
            q = np.prod(np.where(z > 0, p, 1 - p))
            dec = t["dec_w"] @ z + t["dec_b"]
            log_lik = np.sum(row * dec - np.logaddexp(0, dec))
            log_prior = np.sum(z * t["prior_logits"] - np.logaddexp(0, t["prior_logits"]))
            log_q = np.sum(z * logits - np.logaddexp(0, logits))
            f = log_q - log_lik - log_prior
            g += q * (f * (z - p) + (z - p))
        grad_w += np.outer(g, row) / len(x)
        grad_b += g / len(x)
    return {"enc_w": grad_w, "enc_b": grad_b}


@pytest.mark.parametrize(("point", "steps"), [("init", 0), ("30", 30)])
def test_enumeration_truth_agrees_with_a_direct_computation_for_4_latents(point: str,
                                                                          steps: int) -> None:
    prob = problem(point=point)
    assert prob.truth_method == "enumeration"
    x = prob.data["x"]
    t = training.checkpoint(4, False, steps)
    direct = direct_gradient(x.numpy(), {k: v.numpy() for k, v in t.items()})
    for name, value in prob.exact_gradient.items():
        np.testing.assert_allclose(value.numpy(), direct[name], rtol=1e-10, atol=1e-13)
    # ... and with the generic enumeration of the joint (2^(3 x 4) states, no blocks).
    joint = dataclasses.replace(prob, capabilities=(DifferentiableCost(), RelaxedCost()))
    assert enumeration.support_size(joint) == 2**12
    for name, value in enumeration.exact_gradient(joint).items():
        torch.testing.assert_close(value, prob.exact_gradient[name], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("nonlinear", [False, True])
def test_reference_agrees_with_enumeration(nonlinear: bool) -> None:
    method, exact, _ = vae_bernoulli.truth(6, 4, 30, nonlinear, method="enumeration")
    assert method == "enumeration"
    t = training.checkpoint(6, nonlinear, 30)
    x = _digits.minibatch(_digits.binarised(), 4)
    reference, se = model.reference_gradient(x, t, model.encoder_names(nonlinear), 4096,
                                             torch.Generator().manual_seed(2))
    for name, value in exact.items():
        z = (reference[name] - value).abs() / se[name].clamp_min(1e-300)
        assert float(z.max()) < Z_LIMIT, name
        assert float(se[name].max()) < 0.05 * float(value.abs().max())  # it has power


@pytest.fixture
def small_reference_budget(monkeypatch):
    """A reference of 1/32 of the default budget (fast; its SE says how good it is)."""
    vae_bernoulli.truth.cache_clear()
    monkeypatch.setattr(vae_bernoulli, "REFERENCE_BUDGET", 1 << 20)
    yield
    vae_bernoulli.truth.cache_clear()


def test_reference_truth_beyond_16_latents(small_reference_budget) -> None:
    prob = problem(latents=17, batch=2, point="init")
    assert vae_bernoulli.reference_samples(17, 2) == 481
    assert prob.truth_method == "reference"
    assert prob.truth_se is not None
    assert get_estimator("exact").applicability(prob) is not None
    assert z_max(run("disarm", prob, 2000), prob.exact_gradient, prob.truth_se) < Z_LIMIT


def test_the_exact_objective_matches_a_sum_over_states() -> None:
    t = training.checkpoint(3, False, 0)
    x = _digits.minibatch(_digits.binarised(), 2)
    total = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=3):
        z = torch.tensor(bits, dtype=F64).expand(1, 2, 3)
        q = torch.exp(model.log_q_terms(x, z, t))[0]  # [B]
        total += float((q * model.point_costs(x, z, t)[0]).sum())
    assert float(model.exact_negative_elbo(x, t)) == pytest.approx(total, rel=1e-12)
    log_p = torch.logsumexp(torch.stack([
        model.log_likelihood_terms(x, torch.tensor(bits, dtype=F64).expand(1, 2, 3), t)[0]
        + model.log_prior_terms(torch.tensor(bits, dtype=F64).expand(1, 2, 3), t)[0]
        for bits in itertools.product([0.0, 1.0], repeat=3)]), dim=0).mean()
    assert float(model.exact_log_likelihood(x, t)) == pytest.approx(float(log_p), rel=1e-12)


def test_the_likelihood_formula_is_the_bernoulli_log_density() -> None:
    t = training.checkpoint(5, True, 0)
    x = _digits.minibatch(_digits.binarised(), 4)
    z = (torch.rand(6, 4, 5, generator=torch.Generator().manual_seed(0)) < 0.5).to(F64)
    dist = torch.distributions.Bernoulli(logits=model.decoder_logits(z, t))
    torch.testing.assert_close(model.log_likelihood_terms(x, z, t),
                               dist.log_prob(x.expand(6, 4, 64)).sum(-1))
    flipped = model._flipped_log_likelihood(x, z, t)
    for k in range(5):
        other = z.clone()
        other[..., k] = 1 - other[..., k]
        torch.testing.assert_close(flipped[..., k], model.log_likelihood_terms(x, other, t))


# ---------------------------------------------------------------- estimators


def test_every_discrete_estimator_applies() -> None:
    prob = problem()
    applicable = {name for name, est in all_estimators().items()
                  if est.applicability(prob) is None}
    assert set(DISCRETE) <= applicable
    assert get_estimator("exact").evals_per_estimate(prob, {}) == 2**4


UNBIASED = [name for name in DISCRETE if all_estimators()[name].unbiased]


@pytest.mark.parametrize("name", UNBIASED)
def test_every_unbiased_estimator_is_unbiased(name: str) -> None:
    prob = problem()
    hyper = {"warmup_steps": 20} if name == "relax" else {}  # any surrogate is unbiased
    n = 4000 if name == "score-function" else 10_000
    assert z_max(run(name, prob, n, **hyper), prob.exact_gradient) < Z_LIMIT


@pytest.mark.parametrize("name", ["straight-through", "gumbel-softmax"])
def test_biased_estimators_show_their_bias(name: str) -> None:
    prob = problem()
    assert z_max(run(name, prob, 10_000), prob.exact_gradient) > 10


@pytest.mark.slow
@pytest.mark.parametrize("name", UNBIASED)
@pytest.mark.parametrize("settings", [
    {"latents": 8, "batch": 8, "point": "1000", "nonlinear": False},
    {"latents": 6, "batch": 4, "point": "200", "nonlinear": True},
], ids=["linear-8", "nonlinear-6"])
def test_every_unbiased_estimator_is_unbiased_on_bigger_problems(name: str, settings) -> None:
    prob = problem(**settings)
    n = 5000 if name in ("score-function", "relax") else 20_000
    assert z_max(run(name, prob, n), prob.exact_gradient) < Z_LIMIT


# ---------------------------------------------------------------- checkpoints and trainer


def test_point_settings() -> None:
    suite = get_suite("vae-bernoulli")
    assert vae_bernoulli.point_steps("init") == 0
    assert vae_bernoulli.point_steps("1000") == 1000
    for bad, fragment in (("0", "must be init"), ("-5", "must be init"), ("1e3", "must be init"),
                          ("0100", "write it as 100"), ("99999", "from 1 to 20000")):
        assert fragment in suite.validate({**SMALL, "point": bad})
    trainer = suite.trainer({**SMALL})
    assert trainer.steps == 30
    for name, value in trainer.initial().items():
        assert torch.equal(value, training.checkpoint(4, False, 30)[name])


def test_checkpoints_are_reproducible_in_any_order() -> None:
    late = training.checkpoint(3, False, 25)
    early = training.checkpoint(3, False, 10)  # behind the run's state: replayed
    fresh = training._ReferenceRun(3, False)
    fresh.advance(10)
    for name, value in early.items():
        assert torch.equal(value, fresh.params[name])
    fresh.advance(25)
    for name, value in late.items():
        assert torch.equal(value, fresh.params[name])
    assert not torch.equal(early["enc_w"], late["enc_w"])


def test_the_reference_step_is_an_unbiased_gradient() -> None:
    t = training.checkpoint(3, True, 5)
    x = _digits.minibatch(_digits.binarised(), 3)
    names = model.model_names(True)
    exact = model.exact_gradient(x, t, names)
    gen = torch.Generator().manual_seed(1)
    draws = [training.reference_gradient_step(x, t, True, gen) for _ in range(400)]
    stacked = {name: torch.stack([d[name] for d in draws]) for name in names}
    assert z_max(stacked, exact) < Z_LIMIT


def exact_all(x: Tensor, params: dict[str, Tensor], nonlinear: bool) -> dict[str, Tensor]:
    return model.exact_gradient(x, params, model.model_names(nonlinear))


@pytest.mark.parametrize("name", ["disarm", "score-function-loo", "rebar", "exact"])
def test_estimators_are_unbiased_for_every_trainable_parameter(name: str) -> None:
    """Decoder and prior get the direct term; the encoder's gradient goes through q."""
    trainer = get_suite("vae-bernoulli").trainer({**SMALL})
    params = trainer.initial()
    rows = torch.tensor([5, 9, 400])
    prob = trainer.problem(params, rows)
    assert set(prob.params) == set(model.model_names(False))
    truth = exact_all(_digits.training_rows(_digits.binarised())[rows], params, False)
    assert z_max(run(name, prob, 5000), truth) < Z_LIMIT


def test_exact_gradient_steps_lower_the_exact_objective() -> None:
    trainer = get_suite("vae-bernoulli").trainer({**SMALL, "point": "init"})
    params = trainer.initial()
    gen = torch.Generator().manual_seed(0)
    start = trainer.evaluate(params, gen)["train_negative_elbo"].value
    train = _digits.training_rows(_digits.binarised())
    for step in range(10):
        rows = torch.arange(step * 100, step * 100 + 100)
        grads = exact_all(train[rows], params, False)
        params = {k: v - 0.1 * grads[k] for k, v in params.items()}
    assert trainer.evaluate(params, gen)["train_negative_elbo"].value < start - 0.5


def test_evaluation_metrics_by_latent_count() -> None:
    small = get_suite("vae-bernoulli").trainer({**SMALL})
    metrics = small.evaluate(small.initial(), torch.Generator().manual_seed(0))
    assert set(metrics) == {"heldout_iw_bound", "heldout_log_likelihood",
                            "heldout_negative_elbo", "train_negative_elbo"}
    bound = metrics["heldout_iw_bound"]
    assert bound.se > 0
    assert -metrics["heldout_negative_elbo"].value - Z_LIMIT * bound.se < bound.value
    assert bound.value < metrics["heldout_log_likelihood"].value + Z_LIMIT * bound.se
    assert not metrics["train_negative_elbo"].higher_is_better
    again = small.evaluate(small.initial(), torch.Generator().manual_seed(0))
    assert again == metrics
    wide = get_suite("vae-bernoulli").trainer({**SMALL, "latents": 17, "point": "init"})
    assert set(wide.evaluate(wide.initial(), torch.Generator().manual_seed(0))) == {
        "heldout_iw_bound"}


@pytest.mark.slow
def test_exact_estimator_at_16_latents_matches_the_suites_truth() -> None:
    """The generic block enumeration (2^16 states x 4 data points through the cost) against the
    suite's own enumeration (the decoder once per state)."""
    prob = problem(latents=16, batch=4, point="1000")
    out = get_estimator("exact").fn(prob, 2)
    for name, value in prob.exact_gradient.items():
        torch.testing.assert_close(out[name][0], value, rtol=1e-9, atol=1e-12)


def test_float32_problems_enumerate_in_float64() -> None:
    prob = get_suite("vae-bernoulli").problem({**SMALL}, dtype=torch.float32)
    assert prob.exact_gradient["enc_w"].dtype == torch.float32
    out = get_estimator("exact").fn(prob, 2)
    torch.testing.assert_close(out["enc_w"][0], prob.exact_gradient["enc_w"], rtol=1e-5,
                               atol=1e-6)
