"""Bad input and broken output (issue 9): one-line errors with exit code 2 for every bad input
(threads, run metadata, results of the wrong types, giant requests, usage mistakes, resume
paths), and no silently wrong numbers (p below float resolution, overflowing statistics,
non-finite estimates passing the gate, corrupt cell files counted as finished)."""

import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import assert_one_line_error, invoke

from gradbench.app import check_tests, execute, planning, preflight
from gradbench.app.measure import overflowed
from gradbench.core import estimator as registry
from gradbench.results import store

QUADRATIC = ["-s", "gaussian-quadratic", "--set", "sigma=1", "--set", "k=0", "--samples", "200"]


def run(results_dir, *args):
    result = invoke("run", *args, "--out", results_dir)
    assert result.exit_code == 0, result.output
    return store.run_dirs(results_dir)[-1]


# ---------------------------------------------------------------- case 2: the gate and NaN


def _noisy_truth(problem, n):
    return {name: problem.exact_gradient[name].expand(n, *v.shape)
            + torch.randn(n, *v.shape, dtype=v.dtype) for name, v in problem.params.items()}


def _half_nan(problem, n):
    out = _noisy_truth(problem, n)
    for value in out.values():
        value[::2] = float("nan")
    return out


def _register(monkeypatch, fn, unbiased=True):
    monkeypatch.setitem(registry._REGISTRY, "test-estimator", registry.Estimator(
        name="test-estimator", fn=fn, family="test", unbiased=unbiased, requires=(),
        hyperparams={}, evals=lambda problem, **_: 1.0))


def test_the_gate_fails_when_half_the_estimates_turn_nan(monkeypatch, tmp_path):
    args = [*QUADRATIC, "--set", "dim=2", "-e", "test-estimator"]
    _register(monkeypatch, _noisy_truth)
    baseline = run(tmp_path / "baseline", *args)
    _register(monkeypatch, _half_nan)
    current = run(tmp_path / "current", *args, "--seed", "1")
    result = invoke("check", current, "--baseline", baseline)
    assert result.exit_code == 1, result.output
    assert "non-finite estimates rose" in result.output


def _rows(nonfinite_c, nonfinite_b, n=4000):
    return pd.DataFrame({"matched": [True], "nonfinite_c": [nonfinite_c],
                         "nonfinite_b": [nonfinite_b], "n_c": [n - nonfinite_c],
                         "n_b": [n - nonfinite_b]})


def test_nonfinite_rule_by_hand():
    assert check_tests.nonfinite_rose(_rows(1, 0), 0.005)[0]  # from zero: any is a regression
    assert not check_tests.nonfinite_rose(_rows(0, 5), 0.005)[0]  # fewer: fine
    # 40 vs 30 of 4000: z = (0.01 - 0.0075) / sqrt(p (1 - p) 2 / 4000), p = 0.00875: z = 1.2
    assert not check_tests.nonfinite_rose(_rows(40, 30), 0.005)[0]
    # 100 vs 30: z = 6.2, p ~ 3e-10 < 0.005
    assert check_tests.nonfinite_rose(_rows(100, 30), 0.005)[0]


# ---------------------------------------------------------------- case 3: p below resolution


def test_probabilities_below_float_resolution_are_refused(results_dir):
    result = invoke("run", "--suite", "bernoulli-probs", "-e", "exact", "--set", "p=1e-17",
                    "--set", "dim=1", "--set", "t=0", "--out", results_dir)
    assert_one_line_error(result, "p=1e-17", "torch clamps probabilities", "2.22e-16")
    assert not results_dir.exists() or not any(results_dir.iterdir())
    # float32 resolves less: 1e-9 is fine in float64, refused in float32.
    result = invoke("run", "--suite", "bernoulli-probs", "-e", "exact", "--set", "p=1e-9",
                    "--set", "dim=1", "--set", "t=0", "--dtype", "float32", "--out",
                    results_dir)
    assert_one_line_error(result, "p=1e-09", "float32")


def test_exact_is_right_just_above_float_resolution(results_dir):
    # d/dp E[(b - 0)^2] = d/dp p = 1 at any p, however small.
    run_dir = run(results_dir, "--suite", "bernoulli-probs", "-e", "exact", "--set", "p=3e-16",
                  "--set", "dim=1", "--set", "t=0", "--samples", "10")
    frame = store.read_results(run_dir)
    frame = frame[frame["level"] == "coord"]
    assert frame["truth"].tolist() == [1.0]
    assert frame["mean"].tolist() == [pytest.approx(1.0, rel=1e-12)]  # 1 up to rounding, not 0


# ---------------------------------------------------------------- case 4: overflow


def test_variance_overflow_is_reported(results_dir):
    result = invoke("run", "-s", "gaussian-quadratic", "--samples", "200", "--set", "k=0",
                    "--set", "sigma=1e300", "--set", "dim=1", "-e", "pathwise", "--out",
                    results_dir)
    assert result.exit_code == 0, result.output
    frame = store.read_results(results_dir)
    assert frame["variance"].isna().all() or np.isinf(frame["variance"]).all()
    assert all("variance" in text.split(",") for text in frame["overflow"])
    assert "pathwise: " in result.output and "overflowed float64" in result.output


def test_overflowed_flags_only_statistics_that_should_be_finite():
    summary = {"n": np.array([10, 10, 1]), "mean": np.array([1.0, 1.0, 1.0]),
               "mean_se": np.array([0.1, np.nan, np.nan]), "variance": np.array([1.0, np.inf,
                                                                                np.nan]),
               "variance_se": np.array([0.1, np.nan, np.nan]), "std": np.array([1.0, np.inf,
                                                                               np.nan]),
               "bias": np.array([np.nan, 0.0, 0.0]), "bias_se": np.array([np.nan, np.nan,
                                                                          np.nan]),
               "mse": np.array([np.nan, np.inf, np.nan]), "mse_se": np.array([np.nan] * 3)}
    # coord 0: no truth (bias NaN by design); coord 2: one estimate (variance NaN by design).
    assert overflowed(summary, np.array([np.nan, 1.0, 1.0])) == [
        "", "mean_se,variance,variance_se,std,bias_se,mse,mse_se", ""]


# ---------------------------------------------------------------- case 5: corrupt cell files


def test_a_truncated_cell_file_is_recomputed_on_resume(results_dir):
    run_dir = run(results_dir, *QUADRATIC, "--set", "dim=1,2", "-e", "pathwise")
    before = store.read_results(run_dir).sort_values(["cell_id", "param", "coord"])
    victim = sorted(run_dir.glob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:100])  # a truncated copy, as a full disk leaves
    assert_one_line_error(invoke("show", run_dir), str(victim), f"--resume {run_dir.name}")
    result = invoke("run", *QUADRATIC, "--set", "dim=1,2", "-e", "pathwise", "--out",
                    results_dir, "--resume", run_dir.name)
    assert result.exit_code == 0, result.output
    assert "1 of 2 cells to compute, 1 already done" in result.stderr
    assert f"recomputed cell {victim.stem}" in result.stderr
    assert (results_dir / "_runs" / run_dir.name / "corrupt" / victim.name).is_file()
    after = store.read_results(run_dir).sort_values(["cell_id", "param", "coord"])
    columns = ["cell_id", "param", "coord", "mean", "variance", "variance_se"]
    pd.testing.assert_frame_equal(after[columns].reset_index(drop=True),
                                  before[columns].reset_index(drop=True))


# ---------------------------------------------------------------- case 7: seeds


def test_a_seed_outside_int64_is_refused_before_any_work(results_dir):
    result = invoke("run", *QUADRATIC, "--set", "dim=1", "-e", "pathwise", "--seed",
                    str(2**63), "--out", results_dir)
    assert_one_line_error(result, "--seed", "64-bit")
    assert not results_dir.exists() or not any(results_dir.iterdir())


# ---------------------------------------------------------------- case 9: tracebacks


def test_threads_beyond_the_cpu_count_are_refused(results_dir):
    result = invoke("run", *QUADRATIC, "-e", "pathwise", "--threads", "100000", "--out",
                    results_dir)
    assert_one_line_error(result, "--threads 100000", "CPU count")


def test_run_metadata_that_is_not_an_object(results_dir, tmp_path):
    run_dir = run(results_dir, *QUADRATIC, "--set", "dim=1", "-e", "pathwise")
    path = store.run_json_path(run_dir)
    path.write_text("[]")
    result = invoke("run", *QUADRATIC, "--set", "dim=1", "-e", "pathwise", "--out",
                    results_dir, "--resume", run_dir.name)
    assert_one_line_error(result, "holds list", "not a run's metadata")
    path.write_text('"hello"')
    result = invoke("report", run_dir, "--out", tmp_path / "report")
    assert_one_line_error(result, "holds str", "not a run's metadata")


@pytest.mark.parametrize("command", ["show", "report", "check"])
def test_results_with_gradbench_names_but_other_types(tmp_path, command):
    columns = {name: pa.array(["x"]) for name in store.REQUIRED_COLUMNS}
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table(columns), bad)
    args = {"show": ["show", bad], "report": ["report", bad, "--out", tmp_path / "r"],
            "check": ["check", bad, "--baseline", bad]}[command]
    assert_one_line_error(invoke(*args), str(bad), "column 'coord' holds string")


# ---------------------------------------------------------------- case 12: giant requests


@pytest.mark.parametrize(("args", "fragments"), [
    (["-s", "gaussian-quadratic", "-e", "score-function-loo", "--set", "draws=1e9"],
     ["score-function-loo", "draws=1000000000", "GiB", "of memory available"]),
    (["-s", "bernoulli-toy", "-e", "gumbel-rao", "--set", "m=1e9"],
     ["gumbel-rao", "m=1000000000", "of memory available"]),
])
def test_requests_that_cannot_fit_in_memory_are_refused(args, fragments, results_dir):
    assert_one_line_error(invoke("run", *args, "--out", results_dir), *fragments)
    assert not results_dir.exists() or not any(results_dir.iterdir())


def test_long_runs_print_their_estimated_time_before_starting(monkeypatch, results_dir):
    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # instead of computing for days

    monkeypatch.setattr(execute, "_compute", stop)
    result = invoke("run", *QUADRATIC[:-2], "--set", "dim=1", "-e", "pathwise", "-e",
                    "score-function-cv", "--set", "pilot=1e10", "--samples", "1e12", "--out",
                    results_dir)
    assert result.exit_code == 130, result.output
    line = next(x for x in result.stderr.splitlines() if x.startswith("estimated time"))
    assert "at least" in line and "timed probe of pathwise" in line
    # At least the work at 1e9 coordinate-evaluations/s: (1e12 + 1e10) x 2 x 2 cells = 4e3 s.
    assert any(f" {unit} " in line for unit in ("min", "h", "days", "years"))


def test_time_estimates_and_eta_by_hand():
    request = planning.RunRequest("gaussian-quadratic", ("pathwise",),
                                  {"dim": ["1"], "sigma": ["1"], "k": ["0"]}, samples=10**12)
    plan = planning.plan(request)
    (cell,) = plan.cells
    assert plan.work[cell.cell_id] == 10**12 * 1 * 2  # samples x evals x coordinates
    estimate = preflight.estimate(plan, plan.cells)
    assert estimate is not None and not estimate.at_least and estimate.probed == ("pathwise",)
    assert estimate.seconds > preflight.lower_bound_s(plan, plan.cells)
    short = planning.plan(planning.RunRequest("gaussian-quadratic", ("pathwise",),
                                              {"dim": ["1"]}, samples=1000))
    assert preflight.estimate(short, short.cells) is None
    eta = preflight.Eta(short, short.cells, None)
    assert eta.remaining_s() is None
    eta.finished(short.cells[0])
    remaining = eta.remaining_s()
    assert remaining is not None and remaining >= 0
    assert preflight.duration(90) == "90 s" and preflight.duration(3 * 86400) == "3 days"


# ---------------------------------------------------------------- case 14: parsing


def test_hyperparameters_and_settings_parse_alike(results_dir):
    run_dir = run(results_dir, *QUADRATIC[:-2], "--samples", "2e2", "--set", "dim=1e0", "-e",
                  "score-function-loo", "--set", "draws=3e0")
    frame = store.read_results(run_dir)
    assert frame["draws"].unique().tolist() == [3] and frame["dim"].unique().tolist() == [1]
    assert frame["samples"].unique().tolist() == [200]
    for bad in (["--set", "draws=1_000"], ["--set", "dim=1_000"], ["--samples", "1_000"]):
        assert_one_line_error(invoke("run", *QUADRATIC, "-e", "score-function-loo", *bad,
                                     "--out", results_dir), "1_000")


def test_a_repeated_set_key_is_refused(results_dir):
    assert_one_line_error(invoke("run", *QUADRATIC, "--set", "dim=1", "--set", "dim=2", "--out",
                                 results_dir), "--set dim is given twice", "dim=1,2")


@pytest.mark.parametrize(("args", "fragments"), [
    (["run", "--sed", "1"], ["No such option: --sed", "run --help"]),
    (["run"], ["Missing option '--suite'"]),
    (["run", "-s", "gaussian-quadratic", "--threads", "two"], ["--threads"]),
    (["shw"], ["No such command 'shw'", "show"]),
    (["show", "x", "-f", "xml"], ["'xml' is not one of"]),
])
def test_usage_errors_are_one_line(args, fragments):
    assert_one_line_error(invoke(*args), *fragments)


# ---------------------------------------------------------------- case 15: resume checks


def test_resume_compares_normalised_requests_and_records_threads(results_dir):
    base = ["-s", "gaussian-quadratic", "--set", "sigma=1"]
    first = [*base, "--samples", "200", "-e", "pathwise", "-e", "score-function", "--set", "k=0",
             "--set", "dim=1"]
    run_dir = run(results_dir, *first)
    same = [*base, "--samples", "2e2", "-e", "score-function", "-e", "pathwise", "--set",
            "k=0.0", "--set", "dim=1e0"]
    result = invoke("run", *same, "--out", results_dir, "--resume", run_dir.name, "--threads",
                    "2")
    if result.exit_code == 2 and "CPU count" in result.output:
        pytest.skip("one CPU: --threads 2 is refused here")
    assert result.exit_code == 0, result.output
    assert "0 of 2 cells to compute, 2 already done" in result.stderr
    victim = sorted(run_dir.glob("*.parquet"))[0]
    victim.unlink()  # one cell to compute again, now with 2 threads
    result = invoke("run", *same, "--out", results_dir, "--resume", run_dir.name, "--threads",
                    "2")
    assert result.exit_code == 0, result.output
    frame = store.read_results(run_dir)
    threads = frame.groupby("cell_id")["threads"].first()
    assert threads[victim.stem] == 2 and set(threads.drop(victim.stem)) == {1}
    resumes = store.read_run_json(run_dir)["resumed"]
    assert [r["threads"] for r in resumes] == [2, 2]
    different = invoke("run", *first[:-1], "dim=2", "--out", results_dir, "--resume",
                       run_dir.name)
    assert_one_line_error(different, "different options")


@pytest.mark.parametrize("run_id", ["../other/20261130-000000-abcdef", "/tmp", "..", "x"])
def test_resume_cannot_name_a_folder_outside_out(run_id, results_dir):
    assert_one_line_error(invoke("run", *QUADRATIC, "-e", "pathwise", "--out", results_dir,
                                 "--resume", run_id), "is not a run id")


# ---------------------------------------------------------------- show, table, citation


def test_show_json_keeps_full_precision_and_seeds_as_strings(results_dir):
    seed = 2**62 + 1  # beyond 2^53: a JSON number would round it
    run_dir = run(results_dir, *QUADRATIC, "--set", "dim=1", "-e", "pathwise", "--seed",
                  str(seed))
    rows = [json.loads(line) for line in invoke("show", run_dir, "-f", "json").stdout
            .splitlines()]
    frame = store.read_results(run_dir)
    assert [r["seed"] for r in rows] == [str(seed)] * len(frame)
    assert [r["cell_seed"] for r in rows] == [str(v) for v in frame["cell_seed"]]
    assert [r["mean"] for r in rows] == frame["mean"].tolist()  # exactly, not to 10 digits
    assert [r["variance_se"] for r in rows] == frame["variance_se"].tolist()


def test_the_run_table_fits_100_columns_one_line_per_cell(results_dir):
    from rich.console import Console

    from gradbench.app.table import constants_line, summary_table

    # The widest values: dim 1000, k 10, sigma 0.1, the longest estimator name.
    run_dir = run(results_dir, "-s", "gaussian-quadratic", "--set", "mu=12", "--set",
                  "dim=1,1000", "--set", "k=0,10", "--set", "sigma=0.1,10", "--samples", "40",
                  "-e", "score-function-loo", "-e", "pathwise", "-e", "naive", "-e",
                  "measure-valued")
    frame = store.read_results(run_dir)
    console = Console(width=100, record=True, file=io.StringIO())
    console.print(summary_table(frame))
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= 100 and not any("…" in line for line in lines)
    cells = frame["cell_id"].nunique()
    body = [line for line in lines if any(e in line for e in set(frame["estimator"]))]
    assert len(body) == cells  # one line per cell, every parameter on it
    assert constants_line(frame).startswith("same in every row: mu=12")
    result = invoke("show", run_dir)
    assert "mu=12" in result.stdout and "variance ± SE" in result.stdout


def test_citation_file_names_the_project():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "CITATION.cff").read_text()
    assert text.startswith("cff-version: 1.2.0") and "title: gradbench" in text
    assert "license: MIT" in text
