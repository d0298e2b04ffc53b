"""The CLI end to end (typer's CliRunner): the happy path and every bad input the issue names."""

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import assert_one_line_error, invoke

from gradbench.results import store

SMALL = ["--set", "mu=1", "--set", "sigma=1", "--set", "k=0", "--set", "dim=2", "--samples", "200"]


def test_list_names_estimators_and_suites():
    result = invoke("list")
    assert result.exit_code == 0, result.output
    for name in ("pathwise", "score-function", "score-function-loo", "score-function-cv",
                 "measure-valued", "naive", "gaussian-quadratic", "gaussian-exp", "gaussian-cos"):
        assert name in result.output


def test_run_prints_table_and_writes_parquet(results_dir):
    result = invoke("run", "--suite", "gaussian-quadratic", "-e", "pathwise", "-e",
                    "score-function", *SMALL, "--seed", "7", "--out", results_dir)
    assert result.exit_code == 0, result.output
    assert "bias/SE" in result.output and "var mu" in result.output and "var sigma" in result.output
    assert "pathwise" in result.output and "score-function" in result.output
    run_dirs = store.run_dirs(results_dir)
    assert len(run_dirs) == 1 and str(run_dirs[0]) in result.output.replace("\n", "")
    frame = pd.read_parquet(run_dirs[0])
    assert set(frame["estimator"]) == {"pathwise", "score-function"}
    # estimators x params x (coordinates + the tensor row)
    assert len(frame) == 2 * 2 * (2 + 1)
    assert (frame["level"] == "tensor").sum() == 2 * 2
    meta = store.read_run_json(run_dirs[0])
    assert meta["command"].startswith("bench") and meta["torch_version"] == torch.__version__


def test_two_runs_never_share_files(results_dir):
    for _ in range(2):
        assert invoke("run", "-s", "gaussian-quadratic", "-e", "pathwise", *SMALL,
                      "--out", results_dir).exit_code == 0
    assert len(store.run_dirs(results_dir)) == 2


def test_show_formats(results_dir):
    invoke("run", "-s", "gaussian-quadratic", "-e", "pathwise", *SMALL, "--out", results_dir)
    table = invoke("show", results_dir)
    assert table.exit_code == 0 and "pathwise" in table.output
    csv = invoke("show", results_dir, "--format", "csv")
    assert csv.exit_code == 0 and csv.output.splitlines()[0].count(",") > 10
    js = invoke("show", results_dir, "--format", "json")
    rows = [json.loads(line) for line in js.output.splitlines()]
    assert len(rows) == 2 * (2 + 1) and rows[0]["estimator"] == "pathwise"


def test_hyperparameter_sweep_lands_in_its_own_column(results_dir):
    result = invoke("run", "-s", "gaussian-quadratic", "-e", "score-function-loo", *SMALL,
                    "--set", "draws=2,3", "--out", results_dir)
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(results_dir)
    assert sorted(frame["draws"].unique()) == [2, 3]
    assert sorted(frame["evals_per_estimate"].unique()) == [2.0, 3.0]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--suite", "gaussian-quadratc"], ["unknown suite", "gaussian-quadratic"]),
        (["-s", "gaussian-quadratic", "-e", "pathwse"], ["unknown estimator", "pathwise"]),
        (["-s", "gaussian-quadratic", "--set", "sigmaa=1"], ["sigma"]),
        (["-s", "gaussian-quadratic", "--set", "sigma"], ["malformed --set", "KEY=V1,V2"]),
        (["-s", "gaussian-quadratic", "--set", "sigma=1,"], ["malformed --set"]),
        (["-s", "gaussian-quadratic", "--set", "sigma=abc"], ["sigma takes a float"]),
        (["-s", "gaussian-quadratic", "--set", "sigma=0"], ["sigma=0.0", "> 0"]),
        (["-s", "gaussian-quadratic", "--set", "sigma=-1"], ["sigma=-1.0"]),
        (["-s", "gaussian-quadratic", "--set", "dim=0"], ["dim=0", ">= 1"]),
        (["-s", "gaussian-quadratic", "--set", "dim=1.5"], ["dim takes a whole number"]),
        (["-s", "gaussian-quadratic", "--samples", "1"], ["--samples 1", "at least 2"]),
        (["-s", "gaussian-quadratic", "--set", "draws=1"], ["draws=1"]),
        (["-s", "gaussian-quadratic", "--set", "pathwise.draws=3"], ["hyperparameter of pathwise"]),
        (["-s", "gaussian-quadratic", "--dtype", "float16"], ["unknown dtype", "float64"]),
        (["-s", "gaussian-exp", "--set", "k=-1", "--set", "sigma=1"], ["k"]),
        (["-s", "bernoulli-toy", "-e", "pathwise"],
         ["pathwise does not apply to suite bernoulli-toy", "has_rsample is False"]),
        (["-s", "bernoulli-coupled", "-e", "exact", "--set", "dim=200"],
         ["2^200 joint states", "fewer coordinates or an unbiased estimator"]),
        (["-s", "bernoulli-toy", "--set", "t=inf"], ["t=inf", "finite"]),
        (["-s", "categorical", "--set", "categories=1"], ["categories=1"]),
        (["-s", "bernoulli-toy", "-e", "gumbel-softmax", "--set", "tau=0"], ["tau"]),
        (["-s", "gamma", "--set", "concentration=0"], ["concentration=0"]),
    ],
)
def test_bad_run_input_is_one_line_exit_2(args, fragments, results_dir):
    result = invoke("run", *args, "--out", results_dir)
    assert_one_line_error(result, *fragments)
    assert not results_dir.exists() or not any(results_dir.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_a_clear_error(results_dir):
    result = invoke("run", "-s", "gaussian-quadratic", "--device", "cuda", "--out", results_dir)
    assert_one_line_error(result, "no CUDA GPU", "--device cpu")


def test_unwritable_out_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = invoke("run", "-s", "gaussian-quadratic", "-e", "pathwise", *SMALL,
                    "--out", blocker / "sub")
    assert_one_line_error(result, "cannot write to --out", "writable folder")


def test_show_rejects_non_gradbench_files(tmp_path):
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), other)
    assert_one_line_error(invoke("show", other), "not gradbench results", "bench run")
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    assert_one_line_error(invoke("show", junk), "not a parquet file")
    assert_one_line_error(invoke("show", tmp_path / "missing"), "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(invoke("show", empty), "no .parquet results")
