"""bench train's trajectories (in process): the variance columns against closed forms, training
with the exact gradient against a hand-made step, a trajectory as a pure function of its key,
divergence, and the total-variance statistic with its standard error."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.distributions import Bernoulli

from gradbench.app import train_plan
from gradbench.app.train_run import MinibatchSchedule, run_trajectory
from gradbench.core import estimator as registry
from gradbench.core.moments import Moments
from gradbench.core.trace_variance import TOTAL, trace_variance, trace_variances
from gradbench.suites import binary_latent as bl
from gradbench.suites import get_suite

F64 = torch.float64
# Columns that differ between two computations of the same trajectory by design.
TIMING = ["seconds", "estimator_seconds", "problem_seconds"]


def trajectory(estimator="score-function", settings=None, hyper=(), **options):
    settings = {"latents": 3, "pixels": 5, "batch": 1, "data_seed": 1, **(settings or {})}
    request = train_plan.TrainRequest(
        suite="binary-latent", estimators=(estimator,), seeds=1,
        overrides={k: [str(v)] for k, v in {**settings, **dict(hyper)}.items()},
        **{"steps": 1, "eval_every": 1, "variance_draws": 50, **options})
    plan = train_plan.plan_training(request)
    assert len(plan.trajectories) == 1
    return plan.trajectories[0]


def frame(traj) -> pd.DataFrame:
    return pd.DataFrame(run_trajectory(traj))


# ---------------------------------------------------------------- the total variance statistic


def test_trace_variance_is_the_summed_s2_with_the_delete_one_jackknife_se():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(0), dtype=F64) ** 3
    got = trace_variance(x)
    assert got.value == pytest.approx(float(x.var(dim=0).sum()), rel=1e-12)
    # The closed form against the jackknife done literally: recompute without each draw.
    n = x.shape[0]
    left_out = torch.stack([torch.cat([x[:i], x[i + 1:]]).var(dim=0).sum() for i in range(n)])
    jackknife = (n - 1) / n * float((left_out - left_out.mean()).square().sum())
    assert got.se == pytest.approx(math.sqrt(jackknife), rel=1e-10)
    # One coordinate: close to the per-coordinate plug-in of gradbench.core.moments (both
    # estimate the same SE; they differ at O(1/n)).
    one = torch.randn(4000, 1, generator=torch.Generator().manual_seed(3), dtype=F64)
    summary = Moments.of(one).summarize()
    assert trace_variance(one).se == pytest.approx(float(summary["variance_se"][0]), rel=0.02)


@pytest.mark.parametrize(("dim", "n", "reps"), [(6, 12, 4000), (200, 30, 1000)])
def test_trace_variance_se_matches_the_spread_over_replications(dim, n, reps):
    # Correlated Gaussian draws: tr S has variance 2 tr(Sigma^2) / (n - 1) (a Gaussian fact,
    # independent of the jackknife under test). dim 200 > n: where a plug-in SE fails.
    gen = torch.Generator().manual_seed(1)
    root = torch.randn(dim, dim, generator=gen, dtype=F64)
    sigma = root @ root.T / dim
    draws = torch.randn(reps, n, dim, generator=gen, dtype=F64) @ torch.linalg.cholesky(sigma).T
    results = [trace_variance(d) for d in draws]
    values = torch.tensor([r.value for r in results], dtype=F64)[:, None]
    spread = Moments.of(values).summarize()
    exact = 2 * float((sigma @ sigma).trace()) / (n - 1)
    # The mean of T is tr Sigma; the variance of T over replications is the exact formula.
    assert abs(float(values.mean()) - float(sigma.trace())) < 5 * float(spread["mean_se"][0])
    assert abs(float(spread["variance"][0]) - exact) < 5 * float(spread["variance_se"][0])
    # The reported SE^2 estimates it: the jackknife is conservative (Efron-Stein), by ~13%
    # at n = 12; the mean of the SE^2 over the replications has a relative SE of ~2%.
    mean_se2 = float(np.mean([r.se**2 for r in results]))
    assert exact <= mean_se2 <= 1.3 * exact


def test_trace_variances_sum_and_leave_out_nonfinite_rows():
    gen = torch.Generator().manual_seed(2)
    estimates = {"a": torch.randn(400, 2, 3, generator=gen, dtype=F64),
                 "b": 3 * torch.randn(400, 4, generator=gen, dtype=F64)}
    out = trace_variances(estimates)
    assert out[TOTAL].value == pytest.approx(out["a"].value + out["b"].value, rel=1e-12)
    estimates["b"][7, 1] = math.nan
    out = trace_variances(estimates)
    assert (out["b"].n, out["b"].nonfinite, out["a"].nonfinite) == (399, 1, 0)


# ---------------------------------------------------------------- variance against closed forms


def score_function_moments(x: torch.Tensor, params: dict[str, torch.Tensor]):
    """E[g] and E[g g] per tensor of one score-function estimate g(z) = f(z) grad log q(z) +
    grad f(z), by enumerating z over {0, 1}^K for one data row: the closed form."""
    latents = params["enc_bias"].numel()
    first = {k: torch.zeros_like(v) for k, v in params.items()}
    second = {k: 0.0 for k in params}
    for bits in itertools.product((0.0, 1.0), repeat=latents):
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        z = torch.tensor(bits, dtype=F64)[None, None, :]  # one draw, one row
        log_q = Bernoulli(logits=bl.encoder_logits(x, leaves)).log_prob(z).sum()
        f = bl.row_costs(z, x, leaves).mean()
        grads = torch.autograd.grad(f.detach() * log_q + f, list(leaves.values()))
        weight = float(log_q.detach().exp())
        for (name, _), g in zip(leaves.items(), grads, strict=True):
            first[name] += weight * g
            second[name] += weight * float(g.square().sum())
    return first, second


def test_variance_columns_match_the_closed_form():
    traj = trajectory("score-function", variance_draws=20_000)
    rows = frame(traj)
    start = rows[rows["step"] == 0].iloc[0]
    trainer = get_suite("binary-latent").trainer(traj.settings_dict())
    schedule = MinibatchSchedule(trainer.train_rows, trainer.batch, traj.data_seed)
    x = trainer.train[schedule.evaluation_rows(traj.evaluation_seed)]
    first, second = score_function_moments(x, trainer.initial())
    exact = {k: second[k] - float(first[k].square().sum()) for k in first}
    for name, value in exact.items():
        measured, se = start[f"variance[{name}]"], start[f"variance_se[{name}]"]
        assert abs(measured - value) < 5 * se, (name, measured, value, se)
        assert se < 0.05 * value  # the comparison has teeth
    assert abs(start["variance"] - sum(exact.values())) < 5 * start["variance_se"]
    # The objective column: E_q[f] on that row, exactly by enumeration.
    exact_objective = float(bl.exact_negative_elbo(x, trainer.initial()))
    assert abs(start["objective"] - exact_objective) < 5 * start["objective_se"]


# ---------------------------------------------------------------- training


def test_exact_gradient_training_decreases_the_exact_objective():
    # Full-batch gradient descent: the 4 training rows are the minibatch, and 2 latents x 4 rows
    # make 256 joint states, so the `exact` estimator (enumeration) gives the exact gradient of
    # the exact objective. With a step below 2 / (the gradient's Lipschitz constant) every step
    # lowers it; lr 0.5 is such a step here (lr 2 is not: it oscillates).
    settings = {"latents": 2, "batch": 4, "train_rows": 4}
    traj = trajectory("exact", settings, steps=30, eval_every=1, optimizer="sgd",
                      learning_rate=0.5)
    rows = frame(traj)
    assert rows["step"].tolist() == list(range(31))
    assert (rows["diverged_at"] == -1).all()
    path = rows["eval[train_neg_elbo]"].to_numpy()
    assert np.all(np.diff(path) < 0), path
    assert path[0] - path[-1] > 0.02
    assert (rows["variance"] == 0).all()  # exact: every draw the same
    assert rows["evals"].iloc[-1] == 30 * 256  # one evaluation per joint state per step


def test_one_sgd_step_is_the_exact_gradient_step():
    traj = trajectory("exact", {"latents": 2, "batch": 2}, steps=1, optimizer="sgd",
                      learning_rate=0.3)  # a minibatch of 2 of the 512 rows
    rows = frame(traj)
    trainer = get_suite("binary-latent").trainer(traj.settings_dict())
    rows0 = MinibatchSchedule(trainer.train_rows, trainer.batch, traj.data_seed).rows(0)
    start = trainer.initial()
    grad = bl.exact_gradient(trainer.train[rows0], start)
    moved = {k: v - 0.3 * grad[k] for k, v in start.items()}
    after = rows[rows["step"] == 1].iloc[0]
    expected = float(bl.exact_negative_elbo(trainer.train, moved))
    assert after["eval[train_neg_elbo]"] == pytest.approx(expected, rel=1e-12)


def test_minibatch_schedule_covers_every_row_once_per_epoch():
    schedule = MinibatchSchedule(10, 3, seed=4)
    seen = torch.cat([schedule.rows(step) for step in range(10)])  # 30 rows: 3 epochs
    for epoch in range(3):
        assert sorted(seen[10 * epoch:10 * (epoch + 1)].tolist()) == list(range(10))
    again = MinibatchSchedule(10, 3, seed=4)
    assert torch.equal(again.rows(7), schedule.rows(7))  # any step, in any order


def test_a_trajectory_is_a_pure_function_of_its_key():
    options = {"settings": {"batch": 4}, "hyper": {"warmup_steps": 3, "warmup_batch": 4},
               "steps": 20, "refit_every": 7, "variance_draws": 20}
    coarse = frame(trajectory("relax", eval_every=10, **options))
    again = frame(trajectory("relax", eval_every=10, **options))
    pd.testing.assert_frame_equal(coarse.drop(columns=TIMING), again.drop(columns=TIMING))
    # Evaluating more often does not move the path: the common steps agree.
    fine = frame(trajectory("relax", eval_every=5, **options))
    fine = fine[fine["step"].isin(coarse["step"])].reset_index(drop=True)
    different = ["eval_every", "trajectory_id", "trajectory_seed", *TIMING]
    pd.testing.assert_frame_equal(coarse.drop(columns=different), fine.drop(columns=different))
    assert coarse["evals"].iloc[-1] == 20 * 3 + 3 * (3 * 4 * 3)  # steps + 3 refits of 36


@pytest.fixture
def nan_estimator():
    """An estimator whose estimates turn NaN once the encoder bias has moved (i.e. after the
    first step): a diverging estimator."""
    name = "test-nan-after-first-step"

    @registry.register_estimator(name, family="test", unbiased=False)
    def estimate(problem, n):
        moved = bool(problem.params["enc_bias"].abs().sum() > 0)
        return {k: torch.full((n, *v.shape), math.nan if moved else 0.1, dtype=v.dtype)
                for k, v in problem.params.items()}

    yield name
    registry._REGISTRY.pop(name)


def test_a_diverging_trajectory_stops_and_keeps_its_rows(nan_estimator):
    rows = frame(trajectory(nan_estimator, steps=10, eval_every=1, optimizer="sgd"))
    assert rows["step"].tolist() == [0, 1]  # step 1's gradient was NaN: no step 2
    assert (rows["diverged_at"] == 1).all()
    assert np.isfinite(rows["eval[train_neg_elbo]"]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_trajectory_trains_on_cuda():
    rows = frame(trajectory("disarm", {"batch": 8}, steps=20, eval_every=10, device="cuda"))
    assert rows["step"].tolist() == [0, 10, 20] and (rows["device"] == "cuda").all()
    columns = ["objective", "variance", "variance[enc_weight]", "eval[train_neg_elbo]"]
    assert np.isfinite(rows[columns].to_numpy()).all()
