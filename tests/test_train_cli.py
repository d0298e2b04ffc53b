"""`bench train` end to end: a killed run resumes to the rows of an uninterrupted one, every
executor gives the same rows, bad input is a one-line error, training files live beside cells
files without confusing either reader, and `bench report` draws the training figures."""

from __future__ import annotations

import inspect
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import assert_one_line_error, invoke
from PIL import Image

from gradbench.app import cli, train_execute, train_plan
from gradbench.app.executors import DaskExecutor, LocalExecutor, ProcessExecutor
from gradbench.core import estimator as registry
from gradbench.core.schema import RESERVED, TRAINING_COLUMNS, declared_columns
from gradbench.results import store
from gradbench.results.schema import role_of

BENCH = [sys.executable, "-m", "gradbench.app.cli"]
ARGS = ["--suite", "binary-latent", "-e", "disarm", "-e", "score-function-loo", "--seeds", "2",
        "--eval-every", "100", "--variance-draws", "20"]
REQUEST = dict(suite="binary-latent", estimators=("disarm", "score-function-loo"), seeds=2,
               eval_every=100, variance_draws=20)
# What differs between two computations of the same rows by design: wall times and the run.
VOLATILE = ["seconds", "estimator_seconds", "problem_seconds", "run_id", "started_at",
            "command", "threads"]


def rows(run_dir: Path) -> pd.DataFrame:
    frame = store.read_training(run_dir)
    keys = ["trajectory_id", "step", "variance_of"]
    return frame.drop(columns=VOLATILE).sort_values(keys).reset_index(drop=True)


def uninterrupted(out: Path, steps: int, executor=None) -> pd.DataFrame:
    request = train_plan.TrainRequest(**REQUEST, steps=steps)
    outcome = train_execute.execute_training(request, out, executor=executor)
    assert outcome.failed == []
    return rows(outcome.run_dir)


def wait_for_files(out: Path, process: subprocess.Popen, count: int) -> Path:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        dirs = store.run_dirs(out)
        if dirs and len(store.finished_trajectories(dirs[0])) >= count:
            return dirs[0]
        time.sleep(0.02)
    raise AssertionError("no trajectory written in 180 s")


def test_a_killed_run_resumes_to_the_uninterrupted_rows(tmp_path):
    steps = ["--steps", "120"]
    process = subprocess.Popen([*BENCH, "train", *ARGS, *steps, "--out", str(tmp_path / "k")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = wait_for_files(tmp_path / "k", process, 1)
    process.send_signal(signal.SIGKILL)  # no chance to clean up or say anything
    process.communicate()
    kept = store.finished_trajectories(run_dir)
    assert 1 <= len(kept) < 4  # killed mid-run
    resumed = subprocess.run([*BENCH, "train", *ARGS, *steps, "--out", str(tmp_path / "k"),
                              "--resume", run_dir.name], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{4 - len(kept)} of 4 trajectories to train, {len(kept)} already done" in (
        resumed.stderr)
    pd.testing.assert_frame_equal(rows(run_dir), uninterrupted(tmp_path / "u", 120))


def test_sigterm_stops_cleanly_and_prints_the_resume_command(tmp_path):
    process = subprocess.Popen([*BENCH, "train", *ARGS, "--steps", "3000", "--out",
                                str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    run_dir = wait_for_files(tmp_path, process, 0)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr  # 128 + SIGTERM, as bench run
    assert "trajectories are written" in stderr and f"--resume {run_dir.name}" in stderr
    assert "Traceback" not in stderr
    meta = store.read_run_json(run_dir)
    assert meta["kind"] == "train" and "interrupted_at" in meta


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory) -> pd.DataFrame:
    return uninterrupted(tmp_path_factory.mktemp("local"), 30, LocalExecutor())


def test_a_process_pool_gives_the_same_rows(local_rows, tmp_path):
    pool = uninterrupted(tmp_path, 30, ProcessExecutor(workers=2))
    pd.testing.assert_frame_equal(pool, local_rows)


@pytest.mark.slow  # a Dask LocalCluster takes ~10 s to start on 2 busy cores
def test_a_dask_cluster_gives_the_same_rows(local_rows, tmp_path):
    dask = uninterrupted(tmp_path, 30, DaskExecutor(workers=2))
    pd.testing.assert_frame_equal(dask, local_rows)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(("args", "fragments"), [
    (["--suite", "binary-latnt"], ["unknown suite 'binary-latnt'", "Did you mean "
                                   "'binary-latent'"]),
    (["--suite", "gaussian-quadratic"], ["cannot be trained", "binary-latent"]),
    (["--suite", "binary-latent", "-e", "disarn"], ["Did you mean 'disarm'"]),
    (["--suite", "binary-latent", "-e", "pathwise"], ["pathwise does not apply"]),
    (["--suite", "binary-latent", "--steps", "0"], ["--steps 0: need at least 1"]),
    (["--suite", "binary-latent", "--seeds", "0"], ["--seeds 0"]),
    (["--suite", "binary-latent", "--eval-every", "0"], ["--eval-every 0"]),
    (["--suite", "binary-latent", "--variance-draws", "1"], ["--variance-draws 1: need at "
                                                            "least 2"]),
    (["--suite", "binary-latent", "--lr", "-1"], ["--lr -1.0: need a finite learning rate"]),
    (["--suite", "binary-latent", "--lr", "nan"], ["--lr nan"]),
    (["--suite", "binary-latent", "--optimizer", "adm"], ["Did you mean 'adam'"]),
    (["--suite", "binary-latent", "--set", "latents=99"], ["latents=99", "between 1 and 12"]),
    (["--suite", "binary-latent", "--set", "batch=600"], ["exceeds train_rows=512"]),
    (["--suite", "binary-latent", "--set", "latent=3"], ["Did you mean 'latents'"]),
    (["--suite", "binary-latent", "--dtype", "float16"], ["unknown dtype"]),
    (["--suite", "binary-latent", "--device", "tpu"], ["unknown device 'tpu'"]),
    (["--suite", "binary-latent", "--executor", "nope"], ["unknown executor 'nope'"]),
    (["--suite", "binary-latent", "--threads", "0"], ["--threads 0"]),
])
def test_bad_input_is_a_one_line_error(tmp_path, args, fragments):
    result = invoke("train", *args, "--out", tmp_path)
    assert_one_line_error(result, *fragments)
    assert not any(store.run_dirs(tmp_path))  # nothing written


def test_resume_refuses_other_runs_and_other_options(tmp_path):
    result = invoke("train", "--suite", "binary-latent", "--resume", "20990101-000000-abcdef",
                    "--out", tmp_path)
    assert_one_line_error(result, "is not a gradbench run")
    cells = invoke("run", "--suite", "bernoulli-toy", "-e", "score-function", "--samples", "10",
                   "--set", "dim=1", "--set", "theta=0", "--set", "t=0.45", "--out", tmp_path)
    assert cells.exit_code == 0, cells.output
    cell_run = store.run_dirs(tmp_path)[0].name
    result = invoke("train", "--suite", "binary-latent", "--resume", cell_run, "--out", tmp_path)
    assert_one_line_error(result, "made by `bench run`, not `bench train`")
    first = invoke("train", *ARGS, "--steps", "2", "--out", tmp_path / "t")
    assert first.exit_code == 0, first.output
    run_id = store.run_dirs(tmp_path / "t")[0].name
    result = invoke("train", *ARGS, "--steps", "3", "--resume", run_id, "--out", tmp_path / "t")
    assert_one_line_error(result, "different options")


@pytest.fixture
def failing_estimator():
    """An estimator that raises once training has moved the parameters."""
    name = "test-raises-after-first-step"

    @registry.register_estimator(name, family="test", unbiased=True)
    def estimate(problem, n):
        if bool(problem.params["enc_bias"].abs().sum() > 0):
            raise RuntimeError("estimator broke")
        return {k: torch.full((n, *v.shape), 0.1, dtype=v.dtype)
                for k, v in problem.params.items()}

    yield name
    registry._REGISTRY.pop(name)


def test_a_failing_trajectory_is_reported_and_the_others_kept(tmp_path, failing_estimator):
    result = invoke("train", "--suite", "binary-latent", "-e", failing_estimator, "-e", "disarm",
                    "--seeds", "1", "--steps", "5", "--eval-every", "5", "--out", tmp_path)
    assert result.exit_code == 1, result.output
    assert f"failed {failing_estimator} seed 0" in result.stderr
    assert "RuntimeError: estimator broke" in result.stderr and "--resume" in result.stderr
    run_dir = store.run_dirs(tmp_path)[0]
    assert set(store.read_training(run_dir)["estimator"]) == {"disarm"}
    assert [f["estimator"] for f in store.read_run_json(run_dir)["failed"]] == [
        failing_estimator]


def test_cli_defaults_are_the_planning_defaults():
    params = inspect.signature(cli.train_command).parameters
    assert params["steps"].default == train_plan.STEPS
    assert params["seeds"].default == train_plan.SEEDS
    assert params["eval_every"].default == train_plan.EVAL_EVERY
    assert params["refit_every"].default == train_plan.REFIT_EVERY
    assert params["variance_draws"].default == train_plan.VARIANCE_DRAWS


# ---------------------------------------------------------------- schema and store


def test_training_columns_are_declared_and_cannot_collide():
    names = {c.name.lower() for c in TRAINING_COLUMNS}
    assert names <= RESERVED
    assert not names & {name.lower() for name in declared_columns()}
    assert role_of("learning_rate") == "key" and role_of("objective") == "metric"
    assert role_of("eval[test_nll]") == "metric" and role_of("variance_se[dec_bias]") == "metric"


def test_cells_and_trajectories_share_a_results_root(tmp_path):
    train = invoke("train", *ARGS, "--steps", "20", "--eval-every", "10", "--out", tmp_path)
    assert train.exit_code == 0, train.output
    with pytest.raises(store.ResultsError, match="only training trajectories"):
        store.read_results(tmp_path)
    cells = invoke("run", "--suite", "bernoulli-toy", "-e", "score-function", "--samples", "10",
                   "--set", "dim=1", "--set", "theta=0", "--set", "t=0.45", "--out", tmp_path)
    assert cells.exit_code == 0, cells.output
    assert set(store.read_results(tmp_path)["suite"]) == {"bernoulli-toy"}
    training = store.read_training(tmp_path)
    assert set(training["suite"]) == {"binary-latent"}
    assert len(training) == 4 * 3  # 4 trajectories x steps 0, 10, 20
    meta = store.read_run_json(Path(store.training_files(tmp_path)[0]).parent)
    assert meta["kind"] == "train" and meta["trajectories"] == 4


# ---------------------------------------------------------------- report


def colours(path: Path) -> int:
    with Image.open(path) as image:
        assert image.width > 600 and image.height > 250
        return len(image.convert("RGB").getcolors(maxcolors=1 << 16) or [])


def test_report_draws_the_training_figures(tmp_path):
    train = invoke("train", *ARGS, "--steps", "30", "--eval-every", "15", "--basket",
                   "--out", tmp_path / "results")
    assert train.exit_code == 0, train.output
    assert invoke("report", tmp_path / "results", "--out", tmp_path / "only").exit_code == 0
    figures = sorted(p.name for p in (tmp_path / "only").glob("*.png"))
    assert [name.rsplit("-", 1)[1] for name in figures] == ["basket.png", "curves.png",
                                                            "variance.png"]
    for name in figures:
        assert colours(tmp_path / "only" / name) > 20  # lines, bands and text, not blank
    page = (tmp_path / "only" / "index.html").read_text()
    assert all(name in page for name in figures) and "steps to target" in page
    assert "Training: binary-latent" in (tmp_path / "only" / "report.md").read_text()
    # Beside cells of bench run: both parts in one report.
    cells = invoke("run", "--suite", "bernoulli-toy", "-e", "score-function", "--samples", "100",
                   "--set", "dim=1", "--set", "theta=0", "--out", tmp_path / "results")
    assert cells.exit_code == 0, cells.output
    assert invoke("report", tmp_path / "results", "--out", tmp_path / "both").exit_code == 0
    page = (tmp_path / "both" / "index.html").read_text()
    assert "Suite bernoulli-toy" in page and "Training: binary-latent" in page
    assert set(figures) <= {p.name for p in (tmp_path / "both").glob("*.png")}
    # Cells and trajectories in separate folders, each named on the command line.
    cells = invoke("run", "--suite", "bernoulli-toy", "-e", "score-function", "--samples", "100",
                   "--set", "dim=1", "--set", "theta=0", "--out", tmp_path / "cells")
    assert cells.exit_code == 0, cells.output
    apart = invoke("report", tmp_path / "cells", tmp_path / "results", "--out", tmp_path / "apart")
    assert apart.exit_code == 0, apart.output
    page = (tmp_path / "apart" / "index.html").read_text()
    assert "Suite bernoulli-toy" in page and "Training: binary-latent" in page


def test_hyperparameters_apply_to_the_suites_default_estimators(tmp_path):
    """Without -e the estimators are the trainer's choice; a hyperparameter set for one of them
    (or for all that have it) must apply, and a key none has is still refused."""
    result = invoke("train", "--suite", "binary-latent", "--set", "relax.warmup_steps=5",
                    "--set", "draws=3", "--steps", "4", "--seeds", "1", "--eval-every", "2",
                    "--variance-draws", "4", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    frame = store.read_training(tmp_path)
    assert set(frame.loc[frame["estimator"] == "relax", "warmup_steps"]) == {5}
    assert set(frame.loc[frame["estimator"] == "score-function-loo", "draws"]) == {3}
    assert_one_line_error(invoke("train", "--suite", "binary-latent", "--set", "bogus=1",
                                 "--steps", "2", "--out", tmp_path), "bogus")
