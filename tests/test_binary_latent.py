"""binary-latent: the enumerated truth against independent computations (the joint enumeration
of gradbench.core.enumeration over all B x K latents, a brute-force log-likelihood, finite
differences), unbiased estimators against it, and its trainer's contract."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import Bernoulli

from gradbench.core import enumeration
from gradbench.core.seeding import seeded
from gradbench.estimators import get_estimator
from gradbench.suites import binary_latent as bl
from gradbench.suites import get_suite

F64 = torch.float64
SMALL = {"latents": 3, "pixels": 5, "batch": 2, "train_rows": 512, "data_seed": 1}


def small_problem(**changes):
    return get_suite("binary-latent").problem({**SMALL, **changes})


def perturbed(problem, scale=0.5, seed=0):
    """The problem's parameters moved away from the (nearly symmetric) initial point."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=gen, dtype=F64)
            for k, v in problem.params.items()}


def test_truth_equals_the_joint_enumeration_over_all_latents():
    problem = small_problem()
    params = perturbed(problem)
    moved = bl.minibatch_problem(problem.data["x"], params, SMALL)
    # gradbench.core.enumeration visits all 2^(B K) = 64 joint states of the minibatch's q and
    # differentiates sum_z q(z) f(z): no per-row factorisation, the suite's shortcut.
    joint = enumeration.exact_gradient(moved)
    for name in moved.params:
        torch.testing.assert_close(moved.exact_gradient[name], joint[name], rtol=1e-10,
                                   atol=1e-12)
    value = enumeration.exact_expectation(moved)
    torch.testing.assert_close(bl.exact_negative_elbo(moved.data["x"], params), value,
                               rtol=1e-12, atol=0)


def test_exact_objective_gradient_matches_finite_differences():
    problem = small_problem()
    params = perturbed(problem, seed=3)
    x = problem.data["x"]
    grad = bl.exact_gradient(x, params)
    h = 1e-6
    for name in ("enc_weight", "dec_bias", "prior_logits"):
        for index in range(min(3, params[name].numel())):
            up = {k: v.clone() for k, v in params.items()}
            down = {k: v.clone() for k, v in params.items()}
            up[name].view(-1)[index] += h
            down[name].view(-1)[index] -= h
            numeric = (bl.exact_negative_elbo(x, up) - bl.exact_negative_elbo(x, down)) / (2 * h)
            assert float(numeric) == pytest.approx(float(grad[name].view(-1)[index]), abs=1e-7)


def test_nll_is_a_brute_force_log_sum_and_bounds_the_elbo():
    problem = small_problem()
    params = perturbed(problem, seed=5)
    x = problem.data["x"]
    total = 0.0
    for row in x:
        terms = []
        for bits in itertools.product((0.0, 1.0), repeat=SMALL["latents"]):
            z = torch.tensor(bits, dtype=F64)
            prior = Bernoulli(logits=params["prior_logits"]).log_prob(z).sum()
            pixel_logits = params["dec_weight"] @ z + params["dec_bias"]
            likelihood = Bernoulli(logits=pixel_logits).log_prob(row).sum()
            terms.append(float(prior + likelihood))
        peak = max(terms)
        total += -(peak + math.log(sum(math.exp(t - peak) for t in terms)))
    nll = float(bl.exact_nll(x, params))
    assert nll == pytest.approx(total / len(x), rel=1e-12)
    # -ELBO >= -log p(x), with equality only at the exact posterior (mean-field q cannot be it).
    assert float(bl.exact_negative_elbo(x, params)) > nll


@pytest.mark.parametrize("name", ["score-function-loo", "disarm", "rebar"])
def test_unbiased_estimators_agree_with_the_truth(name):
    problem = small_problem()
    estimator = get_estimator(name)
    assert estimator.applicability(problem) is None
    with seeded(11, torch.device("cpu")):
        estimates = estimator.fn(problem, 40_000)
    for param, truth in problem.exact_gradient.items():
        mean = estimates[param].mean(0)
        se = estimates[param].std(0) / math.sqrt(estimates[param].shape[0])
        z = ((mean - truth).abs() / se.clamp(min=1e-12)).max()
        # The largest of ~40 |z| of an unbiased estimator exceeds 5 with probability ~2e-5.
        assert float(z) < 5.0, (param, float(z))


def test_trainer_contract():
    suite = get_suite("binary-latent")
    assert suite.trainable
    trainer = suite.trainer(SMALL)
    first, second = trainer.initial(), trainer.initial()
    assert set(first) == set(bl.PARAMS)
    first["enc_bias"] += 1.0  # initial() hands out copies
    assert torch.equal(second["enc_bias"], trainer.initial()["enc_bias"])
    rows = torch.tensor([5, 7])
    params = trainer.initial()
    problem = trainer.problem(params, rows)
    params["dec_bias"] += 1.0  # a later optimizer step must not change the built problem
    assert not torch.equal(problem.params["dec_bias"], params["dec_bias"])
    torch.testing.assert_close(problem.data["x"], trainer.train[rows])
    metrics = trainer.evaluate(trainer.initial(), torch.Generator())
    assert list(metrics) == ["train_neg_elbo", "test_neg_elbo", "test_nll"]
    assert all(not m.higher_is_better and m.se == 0 for m in metrics.values())
    assert metrics["test_neg_elbo"].value > metrics["test_nll"].value
