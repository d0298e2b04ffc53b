"""The VAE suites through the CLI: listed with their ELBO variants, runnable on a small grid,
and bad settings are one-line errors."""

import pandas as pd
from helpers import assert_one_line_error, invoke

from gradbench.results import store


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
