"""Executors: the same command gives the same numbers in-process, in a process pool and on a Dask
LocalCluster; a killed worker's cells are retried; a cell that fails for good is reported while
the others are kept; bad executor options are one-line errors that write nothing."""

import multiprocessing
import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from gradbench.app import execute, measure, planning
from gradbench.app.cli import app
from gradbench.app.executors import (
    DaskExecutor,
    LocalExecutor,
    ProcessExecutor,
    compute_cell,
    make_executor,
)
from gradbench.core import estimator as estimator_registry
from gradbench.core.problem import Problem
from gradbench.results import store

REQUEST = planning.RunRequest(
    suite="gaussian-quadratic",
    estimators=("pathwise", "score-function"),
    overrides={"dim": ["1", "3"], "sigma": ["1"], "k": ["0"]},
    samples=3000,
)
# Everything a cell computes (metadata and timings differ between runs by design).
STATISTICS = ["n", "nonfinite", "mean", "mean_se", "variance", "variance_se", "std", "bias",
              "bias_se", "snr", "snr_se", "mse", "mse_se", "truth", "chunks", "chunk_size",
              "variance_lo", "variance_hi", "tail_index", "reliable", "reliability_reason",
              "grad_snr", "cosine", "relative_mse_se", "groups"]


def statistics(frame: pd.DataFrame) -> pd.DataFrame:
    keys = ["cell_id", "param", "level", "coord"]
    return frame.sort_values(keys).reset_index(drop=True)[keys + STATISTICS]


def run(executor, out):
    outcome = execute.execute(REQUEST, out, executor=executor)
    assert outcome.failed == []
    return statistics(store.read_results(outcome.run_dir))


@pytest.fixture(scope="module")
def local_results(tmp_path_factory):
    return run(LocalExecutor(), tmp_path_factory.mktemp("local"))


def test_process_pool_gives_identical_numbers_and_retries_killed_workers(local_results,
                                                                         tmp_path):
    killed = []

    def kill_workers_once(cell, done, total):
        # After the first result the pool is busy with the next cells: SIGKILL every worker.
        # The pool breaks; the cells it was running must be resubmitted to a fresh one.
        if not killed:
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGKILL)
                killed.append(child.pid)

    outcome = execute.execute(REQUEST, tmp_path, executor=ProcessExecutor(workers=2),
                             on_cell=kill_workers_once)
    assert killed and outcome.failed == []
    assert outcome.computed == len(outcome.plan.cells) == 4
    got = statistics(store.read_results(outcome.run_dir))
    pd.testing.assert_frame_equal(got, local_results)  # bit for bit, not approximately
    assert not multiprocessing.active_children()  # the pool is gone after the run


def test_dask_local_cluster_gives_identical_numbers_and_survives_a_killed_worker(
        local_results, tmp_path):
    pytest.importorskip("distributed")
    executor = DaskExecutor(workers=2)
    killed = []

    def kill_a_worker_once(cell, done, total):
        # SIGKILL one worker process mid-run: Dask reschedules the task it held (its nanny
        # restarts it); every cell must still arrive, with the same numbers.
        if not killed:
            pids = executor._client.run(os.getpid)
            victim = sorted(pids.values())[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    outcome = execute.execute(REQUEST, tmp_path, executor=executor, on_cell=kill_a_worker_once)
    assert killed and outcome.failed == []
    pd.testing.assert_frame_equal(statistics(store.read_results(outcome.run_dir)),
                                  local_results)


def test_a_failing_cell_is_reported_not_fatal_in_a_worker():
    cells = planning.plan(REQUEST).cells[:1]
    bad = planning.Cell("gaussian-quadratic", cells[0].settings, "no-such-estimator", (), "cpu",
                      "float64", 100, 0)
    with ProcessExecutor(workers=1) as pool:
        results = {r.cell.estimator: r for r in pool.run([bad, *cells])}
    assert results["no-such-estimator"].rows is None
    assert "unknown estimator 'no-such-estimator'" in results["no-such-estimator"].error
    assert "\n" not in results["no-such-estimator"].error
    good = results[cells[0].estimator]
    assert good.error is None
    here = measure.run_cell(cells[0])
    for column in STATISTICS:  # NaN == NaN here (tensor rows have no per-coordinate SNR)
        np.testing.assert_array_equal(good.rows[column], here[column], err_msg=column)


def _explodes_for_dim_3(problem: Problem, n: int) -> dict:
    if problem.params["mu"].numel() == 3:
        raise FloatingPointError("the test estimator blew up\nsecond line")
    return {name: torch.zeros(n, *v.shape, dtype=v.dtype) for name, v in problem.params.items()}


def test_failed_cell_is_reported_and_others_kept(results_dir, monkeypatch):
    name = "test-explodes"
    monkeypatch.setitem(estimator_registry._REGISTRY, name, estimator_registry.Estimator(
        name=name, fn=_explodes_for_dim_3, family="test", unbiased=False, requires=(),
        hyperparams={}, evals=lambda problem, **_: 1.0))
    args = ["run", "-s", "gaussian-quadratic", "-e", name, "-e", "pathwise", "--set", "dim=1,3",
            "--set", "sigma=1", "--set", "k=0", "--samples", "200", "--out", str(results_dir)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "failed test-explodes {'mu': 1.0, 'sigma': 1.0, 'k': 0.0, 'dim': 3}" in result.output
    assert "FloatingPointError: the test estimator blew up" in result.output
    assert "second line" not in result.output
    (run_dir,) = store.run_dirs(results_dir)
    meta = store.read_run_json(run_dir)
    (failure,) = meta["failed"]
    assert failure["estimator"] == name and failure["settings"]["dim"] == 3
    assert failure["reason"] == "FloatingPointError: the test estimator blew up"
    frame = store.read_results(run_dir)
    assert len(store.finished_cells(run_dir)) == 3  # the three other cells are kept
    assert set(frame.loc[frame["estimator"] == name, "dim"]) == {1}


@pytest.mark.parametrize(("args", "fragment"), [
    (["--workers", "0", "--executor", "processes"], "--workers 0: need at least 1"),
    (["--executor", "threads"], "unknown executor 'threads'"),
    (["--scheduler", "tcp://127.0.0.1:9"], "--scheduler ADDRESS needs --executor dask"),
    (["--executor", "dask", "--scheduler", "tcp://127.0.0.1:9"],
     "cannot reach a Dask scheduler at tcp://127.0.0.1:9 within 5 s"),
])
def test_bad_executor_options_are_one_line_errors_writing_nothing(args, fragment, results_dir):
    if "dask" in args:
        pytest.importorskip("distributed")
    base = ["run", "-s", "gaussian-quadratic", "-e", "pathwise", "--samples", "100", "--out",
            str(results_dir)]
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output
    assert not results_dir.exists() or not any(results_dir.iterdir())


def test_missing_dask_is_a_clear_error(results_dir, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "distributed", None)  # import fails
    result = CliRunner().invoke(app, ["run", "-s", "gaussian-quadratic", "-e", "pathwise",
                                      "--samples", "100", "--executor", "dask", "--out",
                                      str(results_dir)])
    assert result.exit_code == 2, result.output
    assert "needs Dask's distributed scheduler, which is not installed: pip install dask " \
        "distributed" in result.output
    assert not results_dir.exists() or not any(results_dir.iterdir())


def test_resume_keeps_what_a_bad_executor_option_would_have_lost(results_dir):
    first = execute.execute(REQUEST, results_dir)
    before = {p.name: p.read_bytes() for p in first.run_dir.iterdir()}
    result = CliRunner().invoke(app, ["run", "-s", "gaussian-quadratic", "-e", "pathwise",
                                      "-e", "score-function", "--set", "dim=1,3", "--set",
                                      "sigma=1", "--set", "k=0", "--samples", "3000",
                                      "--resume", first.run_id, "--workers", "0",
                                      "--executor", "processes", "--out", str(results_dir)])
    assert result.exit_code == 2
    after = {p.name: p.read_bytes() for p in first.run_dir.iterdir()}
    assert after == before


def test_task_returns_plain_values_and_sets_threads():
    cell = planning.plan(REQUEST).cells[0]
    before = torch.get_num_threads()
    try:
        result = compute_cell(cell, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for column, values in result.rows.items():
        assert isinstance(values, list), column
        assert all(isinstance(v, (int, float, str, bool, type(None))) for v in values), column
    assert np.isfinite(result.rows["mean"]).all()


def test_make_executor_defaults():
    assert make_executor("local").name == "local"
    pool = make_executor("processes", threads=1)
    assert pool.workers >= 1 and pool.threads == 1
