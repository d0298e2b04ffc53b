"""Reliability diagnostics: the Pareto k-hat recovers known tail shapes, the rare-state kurtosis
matches closed forms and a direct enumeration, the verdicts and their reasons, and the
categorical repro of issue 12 is flagged instead of reporting a confident wrong number."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from gradbench.app import measure, planning
from gradbench.core.rare_states import rare_states
from gradbench.core.reliability import RARE_COUNT, RareStates, judge, limit, samples_for_tail
from gradbench.core.suite import get_suite
from gradbench.core.tail_index import gpd_shape, reliable_tail_index, tail_index, tail_size


@pytest.mark.parametrize("shape", [0.0, 0.3, 0.7])
def test_k_hat_recovers_generalized_pareto_shapes(shape):
    # 40 columns of M = 400 GPD(k) draws. The estimate's sampling SD at M = 400 is ~0.06-0.08;
    # the mean over 40 columns is within 4 of its SEs of k, after the PSIS prior's pull towards
    # 0.5 by 10 / (M + 10) of the distance (2.4%), which is added to the target.
    rng = np.random.default_rng(11)
    u = rng.random((400, 40))
    x = -np.log(u) if shape == 0 else (u ** (-shape) - 1.0) / shape
    k = gpd_shape(torch.from_numpy(x)).numpy()
    target = (400 * shape + 10 * 0.5) / 410
    assert abs(k.mean() - target) < 4 * k.std(ddof=1) / math.sqrt(40) + 0.01


def test_k_hat_of_discrete_or_short_tails_is_nan():
    assert math.isnan(float(tail_index(torch.ones(50, 1))[0]))  # all tied
    repeated = torch.tensor([[1.0], [2.0], [3.0]]).repeat(20, 1)  # 3 distinct values
    assert math.isnan(float(tail_index(repeated)[0]))
    assert math.isnan(float(tail_index(torch.rand(5, 1))[0]))  # fewer than MIN_TAIL


def test_thresholds_follow_vehtari_et_al_capped_at_finite_variance():
    assert reliable_tail_index(200) == pytest.approx(1 - 1 / math.log10(200))
    assert reliable_tail_index(10**6) == 0.7
    assert limit(60) == pytest.approx(1 - 1 / math.log10(60)) and limit(10**4) == 0.5
    assert tail_size(10_000) == 300 and tail_size(100) == 20 and tail_size(10**9) == 1000


def test_samples_needed_is_where_the_extrapolated_k_hat_meets_the_limit():
    needed = samples_for_tail(2000, 0.8)
    # k-hat log(1/p(n)) held fixed: at the answer it is at or just below 1/2, and 3% fewer
    # estimates would not do (two significant digits, rounded up).
    strength = 0.8 * math.log(math.sqrt(2000) / 3)
    assert strength / math.log(math.sqrt(needed) / 3) <= 0.5
    assert strength / math.log(math.sqrt(needed * 0.97) / 3) > 0.5
    assert samples_for_tail(2000, 5.0) == math.inf


def test_judge_verdicts_and_reasons():
    rare = RareStates(probability=np.array([np.nan, 1e-4, np.nan, np.nan, np.nan, np.inf, np.nan]),
                      kurtosis=np.array([np.nan, 1e4 + 1, np.nan, np.nan, np.nan, 1.0, np.nan]))
    got = judge(n=np.array([10_000, 10_000, 10_000, 30, 10_000, 10_000, 200]),
                k_hat=np.array([0.2, 0.2, 1.9, 0.1, 0.9, 0.1, 0.3]),
                variance=np.array([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]),
                two_point=np.zeros(7, dtype=bool), rare=rare,
                skewness=np.array([0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0]))
    assert got["reliable"].tolist() == [True, False, False, False, True, True, True]
    assert got["mean_reliable"].tolist() == [True, False, False, True, True, True, False]
    assert got["samples_needed"][1] == pytest.approx(RARE_COUNT / 1e-4)
    assert got["reliability_reason"][1].startswith("rare states")
    assert got["reliability_reason"][2].startswith("heavy tail: k-hat 1.90 > 0.50")
    assert "the mean's too" in got["reliability_reason"][2]
    assert "too few estimates" in got["reliability_reason"][3]
    # Skewness 3 at n = 200: Sugden et al.'s rule wants 28 + 25 x 9 = 253 estimates.
    assert got["reliability_reason"][6].startswith("the mean: skewness 3 needs n > 28")
    assert got["samples_needed"][6] == 260.0
    assert got["reliability_reason"][0] == "" and np.isnan(got["samples_needed"][0])


# ---------------------------------------------------------------- rare states


def test_rare_state_kurtosis_of_one_bernoulli_is_the_two_point_closed_form():
    # One coordinate: t = (f - E f)(b - p) takes two values with probabilities p and 1 - p, so
    # its kurtosis is 1 / (p q) - 3 whatever the two values are.
    problem = get_suite("bernoulli-toy").problem({"theta": -2.5, "t": 0.45, "dim": 1})
    p = 1 / (1 + math.exp(2.5))
    got = rare_states(problem)["logits"]
    assert got.kurtosis[0] == pytest.approx(1 / (p * (1 - p)) - 3, rel=1e-12)
    assert got.probability[0] == pytest.approx(1 / (1 / (p * (1 - p)) - 4), rel=1e-12)


def test_rare_state_kurtosis_matches_a_direct_enumeration():
    problem = get_suite("categorical").problem(
        {"categories": 3, "dim": 2, "scale": 3.0, "t": 0.45})
    probs = torch.softmax(problem.params["logits"][0], -1).numpy()
    values = np.linspace(0, 1, 3)
    states = list(itertools.product(range(3), repeat=2))
    weight = np.array([probs[a] * probs[b] for a, b in states])
    cost = np.array([(values[a] - 0.45) ** 2 + (values[b] - 0.45) ** 2 for a, b in states])
    centred = cost - weight @ cost
    got = rare_states(problem)["logits"]
    for coordinate, (i, k) in enumerate(itertools.product(range(2), range(3))):
        score = np.array([float(s[i] == k) - probs[k] for s in states])
        t = centred * score
        dev = t - weight @ t
        kurtosis = (weight @ dev**4) / (weight @ dev**2) ** 2
        assert got.kurtosis[coordinate] == pytest.approx(kurtosis, rel=1e-10)
    # The rare class's logits need ~3e4 estimates: the issue's repro ran 1e4.
    assert 2.5e4 < RARE_COUNT / got.probability[0] < 3.5e4


def test_continuous_problems_have_no_rare_states():
    assert rare_states(get_suite("gaussian-quadratic").problem(
        {"mu": 1.0, "sigma": 1.0, "k": 0.0, "dim": 2})) is None


def test_marginal_rare_states_beyond_the_enumeration_limit():
    problem = get_suite("bernoulli-toy").problem({"theta": -2.5, "t": 0.45, "dim": 20})
    got = rare_states(problem)["logits"]  # 2^20 joint states: per coordinate, f = 1
    p = 1 / (1 + math.exp(2.5))
    np.testing.assert_allclose(got.kurtosis, 1 / (p * (1 - p)) - 3, rtol=1e-12)


def test_issue_12_categorical_repro_is_flagged_not_confidently_wrong():
    request = planning.RunRequest(
        suite="categorical", estimators=("score-function-cv",), seed=12,
        overrides=planning.parse_assignments(["categories=3", "dim=2", "scale=3.0", "t=0.45"]))
    rows = measure.run_cell(planning.plan(request).cells[0])
    rare_class = [i for i, (level, coord) in enumerate(zip(rows["level"], rows["coord"],
                                                         strict=True))
                  if level == "coord" and coord in (0, 3)]
    for i in rare_class:
        assert rows["reliable"][i] is False and rows["mean_reliable"][i] is False
        assert rows["reliability_reason"][i].startswith("rare states")
        assert 2.5e4 < rows["samples_needed"][i] < 3.5e4
    tensor = rows["level"].index("tensor")
    assert rows["reliable"][tensor] is False


# ---------------------------------------------------------------- learned surrogates


def test_least_likely_state_is_the_smallest_class_probability_of_each_coordinate():
    problem = get_suite("categorical").problem(
        {"categories": 10, "dim": 2, "scale": 3.0, "t": 0.45})
    least = rare_states(problem)["logits"].least_likely
    p0 = torch.softmax(3.0 * torch.linspace(-1, 1, 10, dtype=torch.float64), 0)[0].item()
    np.testing.assert_allclose(least, np.full(20, p0), rtol=1e-12)  # every logit of both rows
    toy = get_suite("bernoulli-toy").problem({"theta": -2.5, "t": 0.45, "dim": 20})
    np.testing.assert_allclose(rare_states(toy)["logits"].least_likely,
                               1 / (1 + math.exp(2.5)), rtol=1e-12)


def test_a_learned_surrogate_needs_its_least_likely_state_seen():
    # p = 0.0012 (categorical, 10 classes, scale 3): a Bernoulli(p) skewness of 28.8 wants
    # 28 + 25 g1^2 = 20,786 estimates for the mean, and n p >= 10 (n >= 8,334) for the variance.
    p = 0.0012
    def verdict(n, surrogate):
        rare = RareStates(probability=np.array([np.inf]), kurtosis=np.array([1.0]),
                          least_likely=np.array([p]))
        rare = rare.for_surrogate() if surrogate else rare
        return judge(n=np.array([n]), k_hat=np.array([0.1]), variance=np.array([1.0]),
                     two_point=np.array([False]), rare=rare, skewness=np.array([0.0]))
    g1 = (1 - 2 * p) / math.sqrt(p * (1 - p))
    assert 28 + 25 * g1**2 == pytest.approx(20_786, abs=1)
    for n, reliable, mean_reliable in [(5_000, False, False), (10_000, True, False),
                                       (20_000, True, False), (21_000, True, True)]:
        got = verdict(n, surrogate=True)
        assert (got["reliable"][0], got["mean_reliable"][0]) == (reliable, mean_reliable), n
        assert verdict(n, surrogate=False)["mean_reliable"][0]  # the reference rule: no objection
    got = verdict(10_000, surrogate=True)
    assert got["reliability_reason"][0].startswith("learned surrogate: the least likely state")
    assert got["samples_needed"][0] == 21_000.0


def test_relax_on_rare_categorical_classes_gets_no_bias_verdict():
    # The two false alarms of 370 A/A pairs (docs/calibration-check.md): RELAX at scale 3.
    request = planning.RunRequest(
        suite="categorical", estimators=("relax", "score-function"), seed=3, samples=2000,
        overrides=planning.parse_assignments(["categories=10", "dim=1", "scale=3.0"]))
    cells = {cell.estimator: measure.run_cell(cell) for cell in planning.plan(request).cells}
    relax = cells["relax"]
    assert not any(relax["mean_reliable"])
    # At n = 2000 the reference rule already flags the three rarest classes' logits (n p_eff
    # < 10); the surrogate rule the other seven, whose reference terms are well sampled.
    reasons = relax["reliability_reason"]
    assert all(r.startswith(("learned surrogate", "rare states")) for r in reasons)
    assert sum(r.startswith("learned surrogate") for r in reasons) == 7
    # The reference rule alone leaves common classes' means testable for the score function.
    assert any(cells["score-function"]["mean_reliable"])
