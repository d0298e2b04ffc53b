"""The VAE suites through the CLI: listed with their ELBO variants, runnable on a small grid,
and bad settings are one-line errors."""

import pandas as pd
import torch
from helpers import assert_one_line_error, invoke

from gradbench.estimators import get_estimator
from gradbench.results import store
from gradbench.suites import get_suite


def test_list_shows_the_suites_and_the_elbo_variants():
    result = invoke("list")
    assert result.exit_code == 0, result.output
    for name in ("vae-gaussian", "vae-bernoulli", "pathwise-analytic-kl", "pathwise-stl",
                 "negative ELBO", "block-separable cost"):
        assert name in result.output


def test_run_vae_gaussian(results_dir):
    result = invoke("run", "--suite", "vae-gaussian", "--set", "latents=2", "--set",
                    "encoder=1", "--set", "batch=4", "-e", "pathwise", "-e", "pathwise-stl",
                    "-e", "pathwise-analytic-kl", "--samples", "200", "--out", results_dir)
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(store.run_dirs(results_dir)[0])
    variance = frame.groupby("estimator")["variance"].max()
    assert variance["pathwise-stl"] < 1e-25 < 0.01 < variance["pathwise"]
    assert variance["pathwise-analytic-kl"] > 0.01
    assert set(frame["truth_method"]) == {"analytic"}


def test_run_vae_bernoulli(results_dir):
    result = invoke("run", "--suite", "vae-bernoulli", "--set", "latents=3", "--set",
                    "point=init,10", "--set", "batch=2", "-e", "disarm", "-e", "exact",
                    "--samples", "200", "--out", results_dir)
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(store.run_dirs(results_dir)[0])
    assert set(frame["point"]) == {"init", "10"}
    assert set(frame["truth_method"]) == {"enumeration"}
    exact = frame[frame["estimator"] == "exact"]
    assert (exact["bias"].abs() <= 1e-12 * exact["truth"].abs().clip(lower=1)).all()
    assert (frame["param"].isin(["enc_w", "enc_b"])).all()


def test_bad_settings_are_one_line_errors(results_dir):
    for suite, setting, fragment in (
            ("vae-bernoulli", "latents=100", "between 1 and 64"),
            ("vae-bernoulli", "batch=2000", "at most 1500"),
            ("vae-gaussian", "encoder=2", "between 0 and 1"),
            ("vae-gaussian", "latents=40", "between 1 and 32")):
        result = invoke("run", "--suite", suite, "--set", setting, "--samples", "10",
                        "--out", results_dir)
        assert_one_line_error(result, fragment)


def test_bench_train_runs_both_suites(results_dir):
    """A short `bench train` per suite (vae-gaussian with the suite's default estimators and
    learning rate); the first evaluation metric (bench train's target) is the exact training
    objective."""
    for suite, args, estimators in (
            ("vae-gaussian", ["--set", "batch=4"],
             {"pathwise", "pathwise-analytic-kl", "pathwise-stl"}),
            # Explicit -e: bench train resolves --set ESTIMATOR.KEY only against -e names.
            ("vae-bernoulli", ["--set", "latents=3", "--set", "batch=4", "-e", "disarm",
                               "-e", "score-function-loo", "-e", "relax",
                               "--set", "relax.warmup_steps=2"],
             {"disarm", "score-function-loo", "relax"})):
        result = invoke("train", "--suite", suite, *args, "--steps", "20", "--seeds", "1",
                        "--eval-every", "10", "--variance-draws", "5", "--out", results_dir)
        assert result.exit_code == 0, result.output
        assert "target: train_negative_elbo" in result.output.replace("\n", " ")
        frame = store.read_training(results_dir)
        frame = frame[frame["suite"] == suite]
        assert set(frame["estimator"]) == estimators
        assert frame["eval[train_negative_elbo]"].notna().all()


def test_the_trainers_default_estimators_apply():
    for suite, settings in (("vae-gaussian", {"latents": 2, "batch": 4, "encoder": 0.0}),
                            ("vae-bernoulli", {"latents": 3, "batch": 4, "point": "init",
                                               "nonlinear": False})):
        trainer = get_suite(suite).trainer(settings)
        problem = trainer.problem(trainer.initial(), torch.arange(4))
        assert len(trainer.estimators) == 3
        for name in trainer.estimators:
            assert get_estimator(name).unbiased
            assert get_estimator(name).applicability(problem) is None
        assert trainer.optimizer == "adam" and trainer.learning_rate > 0
