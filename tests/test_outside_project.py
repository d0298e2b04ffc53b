"""gradbench used from outside this repository: a project with its own `estimators/` and `suites/`
packages (examples/outside_project) brings an estimator and a suite through --plugin (also into
worker processes), tests them with the pytest fixture and gates them with a baseline; an installed
package's entry points show up in `bench list`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gradbench.results import store

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "outside_project"
BIN = Path(sys.executable).parent
BENCH = str(BIN / "bench")


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | env
    result = subprocess.run(args, cwd=cwd, env=environment, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("outside") / "project"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("results", "__pycache__",
                                                                    "baseline.parquet"))
    return folder


def test_plugin_estimator_runs_in_worker_processes(project: Path) -> None:
    run([BENCH, "run", "--suite", "gaussian-quadratic", "--plugin", "estimators.halved",
         "-e", "score-function-halved", "--set", "dim=1", "--set", "sigma=1", "--set", "k=0",
         "--samples", "4000", "--executor", "processes", "--workers", "2", "--out", "results"],
        project)
    (run_dir,) = store.run_dirs(project / "results")
    frame = store.read_results(run_dir)
    assert set(frame["estimator"]) == {"score-function-halved"}
    assert store.read_run_json(run_dir).get("failed") == []


def test_plugin_suite_by_path(project: Path) -> None:
    result = run([BENCH, "run", "--suite", "shifted-quadratic", "--plugin",
                  "suites/shifted_quadratic.py", "-e", "pathwise", "--samples", "500",
                  "--out", "suite-results"], project)
    assert "shifted-quadratic" in result.stdout
    frame = store.read_results(project / "suite-results")
    assert set(frame["suite"]) == {"shifted-quadratic"} and (frame["shift"] == 3.0).all()


def test_pytest_fixture_and_baseline_gate(project: Path) -> None:
    run([sys.executable, "make_baseline.py"], project)
    tests = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], project)
    assert "3 passed" in tests.stdout
    run([BENCH, "run", "--suite", "gaussian-quadratic", "--plugin", "estimators.halved",
         "-e", "score-function-halved", "--set", "dim=1", "--set", "sigma=1", "--set", "k=0",
         "--samples", "4000", "--out", "gate"], project)
    (current,) = store.run_dirs(project / "gate")
    check = run([BENCH, "check", str(current), "--baseline", "tests/baseline.parquet"], project)
    assert "passed" in check.stdout
    baseline = pd.read_parquet(project / "tests" / "baseline.parquet")
    assert set(baseline["estimator"]) == {"score-function-halved"}


def test_installed_entry_points_show_in_bench_list(tmp_path: Path) -> None:
    """An installed distribution's entry points (a dist-info folder on sys.path is what pip
    installs), one working and one broken: the working one is listed, the broken one reported."""
    (tmp_path / "gbplug").mkdir()
    (tmp_path / "gbplug" / "__init__.py").write_text(
        "from gradbench.estimators import register_estimator\n"
        "from gradbench.estimators.naive import naive\n"
        "register_estimator('entry-point-naive', family='naive', unbiased=False)(naive)\n")
    (tmp_path / "gbplug" / "broken.py").write_text("raise RuntimeError('broken on purpose')\n")
    info = tmp_path / "gbplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gbplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[gradbench.estimators]\nmine = gbplug\nbad = gbplug.broken\n")
    result = run([BENCH, "list"], tmp_path, PYTHONPATH=str(tmp_path), COLUMNS="200")
    assert "entry-point-naive" in result.stdout
    assert "gradbench.estimators:bad failed to load" in result.stderr
    assert "broken on purpose" in result.stderr
