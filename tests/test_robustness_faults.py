"""Faults during a run (issue 9): a crash is charged only to the cell that crashed, sys.exit()
in an estimator fails its cell, a full disk stops with the resume command, Ctrl-C never prints
worker tracebacks nor resume advice that does not apply, SIGTERM exits 143, and a failed cell's
full story is kept. Fault-injecting estimators come from tests/fault_plugin.py (--plugin) in
subprocesses, or are registered for one test in process."""

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import invoke

from gradbench.core import estimator as registry
from gradbench.results import store

PLUGIN = str(Path(__file__).with_name("fault_plugin.py"))
BENCH = [sys.executable, "-m", "gradbench.app.cli"]
FIXED = ["-s", "gaussian-quadratic", "--set", "sigma=1", "--set", "k=0", "--samples", "200"]
TWO_CELLS = [*FIXED, "--set", "dim=1,3"]
THREE_CELLS = [*FIXED, "--set", "dim=1,3,5"]


def bench(tmp_path: Path, *args: str, timeout: float = 300, **env: str
          ) -> subprocess.CompletedProcess:
    """`bench ARGS` in a subprocess with the fault plugin and FAULT_DIR set."""
    faults = tmp_path / "faults"
    faults.mkdir(exist_ok=True)
    return subprocess.run([*BENCH, *args, "--plugin", PLUGIN], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "FAULT_DIR": str(faults), **env})


def start(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen:
    """`bench ARGS` in its own session (so a signal can reach its whole process group, as a
    terminal's Ctrl-C does)."""
    faults = tmp_path / "faults"
    faults.mkdir(exist_ok=True)
    return subprocess.Popen([*BENCH, *args, "--plugin", PLUGIN], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "FAULT_DIR": str(faults), **env})


def wait_for_cells(out: Path, process: subprocess.Popen, cells: int) -> Path:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        dirs = store.run_dirs(out)
        if dirs and len(store.finished_cells(dirs[0])) >= cells:
            return dirs[0]
        time.sleep(0.05)
    raise AssertionError(f"no {cells} cells written in 180 s")


def assert_only_the_crashing_cell_failed(done: subprocess.CompletedProcess, out: Path) -> None:
    assert done.returncode == 1, done.stderr
    (run_dir,) = store.run_dirs(out)
    meta = store.read_run_json(run_dir)
    (failure,) = meta["failed"]  # the healthy neighbour is not charged
    assert failure["settings"]["dim"] == 3
    assert "SIGSEGV" in failure["reason"] and "alone" in failure["reason"]
    frame = store.read_results(run_dir)
    assert set(frame["dim"]) == {1}  # the healthy cell is written
    details = Path(failure["details"])
    assert details.is_relative_to(out / "_runs" / run_dir.name / "errors")
    assert failure["cell_id"] in details.name and "SIGSEGV" in details.read_text()
    assert "failed test-segv" in done.stderr and str(details) in done.stderr
    assert "wrote 4 rows, 1 cells" in done.stdout  # 1 written (2 coordinate + 2 tensor rows), not 2


def test_a_segfault_on_a_process_pool_fails_only_its_own_cell(tmp_path):
    out = tmp_path / "results"
    done = bench(tmp_path, "run", *TWO_CELLS, "-e", "test-segv", "--executor", "processes",
                 "--workers", "2", "--out", str(out))
    assert_only_the_crashing_cell_failed(done, out)


@pytest.mark.slow
def test_a_segfault_on_dask_fails_only_its_own_cell(tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "results"
    done = bench(tmp_path, "run", *TWO_CELLS, "-e", "test-segv", "--executor", "dask",
                 "--workers", "2", "--out", str(out))
    assert_only_the_crashing_cell_failed(done, out)
    assert "Traceback" not in done.stderr and "distributed" not in done.stderr


@pytest.mark.slow  # two fresh interpreters importing torch
def test_a_cell_run_alone_reports_how_its_process_ended(tmp_path, monkeypatch):
    from gradbench.app.planning import Cell
    from gradbench.app.tasks import run_alone

    monkeypatch.setenv("FAULT_DIR", str(tmp_path))
    settings = (("mu", 1.0), ("sigma", 1.0), ("k", 0.0))
    dying = Cell("gaussian-quadratic", (*settings, ("dim", 3)), "test-os-exit", (), "cpu",
                 "float64", 100, 0)
    result = run_alone(dying, 1, (PLUGIN,))
    assert result.rows is None
    assert result.error == ("crashed its process, alone: it exited with status 7 without a "
                            "result (os._exit or a fatal error in native code)")
    assert dying.cell_id in result.details
    healthy = Cell("gaussian-quadratic", (*settings, ("dim", 1)), "test-os-exit", (), "cpu",
                   "float64", 100, 0)
    result = run_alone(healthy, 1, (PLUGIN,))
    assert result.error is None and result.rows["n"] == [100, 100]


def _register(monkeypatch, name: str, fn) -> None:
    monkeypatch.setitem(registry._REGISTRY, name, registry.Estimator(
        name=name, fn=fn, family="test", unbiased=False, requires=(), hyperparams={},
        evals=lambda problem, **_: 1.0))


def _zeros(problem, n):
    return {k: torch.zeros(n, *v.shape, dtype=v.dtype) for k, v in problem.params.items()}


def _exit_at_dim_3(problem, n):
    if problem.params["mu"].numel() == 3:
        sys.exit(3)
    return _zeros(problem, n)


def test_sys_exit_in_an_estimator_fails_its_cell_and_the_run_goes_on(monkeypatch, results_dir):
    _register(monkeypatch, "test-exit-here", _exit_at_dim_3)
    result = invoke("run", *THREE_CELLS, "-e", "test-exit-here",
                    "--out", results_dir)
    assert result.exit_code == 1, result.output
    (run_dir,) = store.run_dirs(results_dir)
    meta = store.read_run_json(run_dir)
    assert "finished_at" in meta and meta["cells"] == 3
    (failure,) = meta["failed"]
    assert failure["reason"] == "SystemExit(3): the cell called sys.exit()"
    assert set(store.read_results(run_dir)["dim"]) == {1, 5}
    assert "wrote 16 rows, 2 cells" in result.stdout  # 12 coordinate + 4 tensor rows


@pytest.mark.slow
def test_sys_exit_on_dask_blames_no_other_cell(tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "results"
    done = bench(tmp_path, "run", *THREE_CELLS, "-e", "test-exit",
                 "--executor", "dask", "--workers", "2", "--out", str(out))
    assert done.returncode == 1, done.stderr
    (failure,) = store.read_run_json(store.run_dirs(out)[0])["failed"]
    assert failure["settings"]["dim"] == 3 and failure["reason"].startswith("SystemExit(3)")


def _explodes_at_dim_3(problem, n):
    if problem.params["mu"].numel() == 3:
        raise FloatingPointError("the test estimator blew up\nsecond line of the message")
    return _zeros(problem, n)


def test_a_failed_cell_keeps_its_full_traceback_and_the_count_is_right(monkeypatch,
                                                                       results_dir):
    _register(monkeypatch, "test-explodes-here", _explodes_at_dim_3)
    result = invoke("run", *THREE_CELLS, "-e", "test-explodes-here",
                    "--out", results_dir)
    assert result.exit_code == 1
    (run_dir,) = store.run_dirs(results_dir)
    (failure,) = store.read_run_json(run_dir)["failed"]
    path = results_dir / "_runs" / run_dir.name / "errors" / f"{failure['cell_id']}.txt"
    assert failure["details"] == str(path)
    text = path.read_text()
    assert "Traceback" in text and "second line of the message" in text
    assert "_explodes_at_dim_3" in text  # the frame that raised
    assert str(path) in result.stderr.replace("\n", "")
    # 2 written of the 3 planned: 12 coordinate + 4 tensor rows
    assert "wrote 16 rows, 2 cells" in result.stdout


def _full_disk(monkeypatch, after: int) -> None:
    """store's writes fail with ENOSPC once `after` cell files have been written."""
    real = store.atomic_write_bytes
    written = []

    def write(path, data):
        if len(written) >= after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)
        if path.suffix == ".parquet":
            written.append(path)

    monkeypatch.setattr(store, "atomic_write_bytes", write)


def test_a_disk_that_fills_mid_run_stops_with_the_resume_command(monkeypatch, results_dir):
    _full_disk(monkeypatch, after=1)
    result = invoke("run", *TWO_CELLS, "-e", "pathwise", "--out", results_dir)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    (run_dir,) = store.run_dirs(results_dir)
    assert "No space left on device" in line and "1 of 2 cells are written" in line
    assert line.endswith(f"--resume {run_dir.name}")
    assert len(store.finished_cells(run_dir)) == 1  # the cell written before is kept
    monkeypatch.undo()
    resumed = invoke("run", *TWO_CELLS, "-e", "pathwise", "--out", results_dir, "--resume",
                     run_dir.name)
    assert resumed.exit_code == 0, resumed.output
    assert "1 of 2 cells to compute, 1 already done" in resumed.stderr
    assert len(store.finished_cells(run_dir)) == 2


def test_a_disk_full_at_start_leaves_nothing_behind(monkeypatch, results_dir):
    _full_disk(monkeypatch, after=0)
    result = invoke("run", *TWO_CELLS, "-e", "pathwise", "--out", results_dir)
    assert result.exit_code == 2, result.output
    (line,) = [x for x in result.stderr.splitlines() if x.strip()]
    assert "No space left on device" in line and "Traceback" not in result.output
    assert store.run_dirs(results_dir) == []  # no run folder without its metadata


def test_ctrl_c_outside_a_run_gives_no_resume_advice(monkeypatch, tmp_path):
    from gradbench.app import planning
    from gradbench.app.report import builder

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(planning, "plan", interrupted)
    result = invoke("run", *TWO_CELLS, "-e", "pathwise", "--out", tmp_path / "results")
    assert result.exit_code == 130
    assert "--resume" not in result.output and "nothing to resume" in result.output
    assert store.run_dirs(tmp_path / "results") == []
    monkeypatch.setattr(builder, "build_report", interrupted)
    result = invoke("report", tmp_path, "--out", tmp_path / "report")
    assert result.exit_code == 130
    assert "--resume" not in result.output and "interrupted" in result.output


def test_sigterm_exits_143_with_the_resume_command(tmp_path):
    out = tmp_path / "results"
    process = start(tmp_path, "run", "-s", "gaussian-quadratic", "-e", "test-slow", "--set",
                    "dim=1,2,3,4,5,6", "--set", "sigma=1", "--set", "k=0", "--samples", "8",
                    "--out", str(out), FAULT_SLEEP="0.2")
    run_dir = wait_for_cells(out, process, 1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert re.search(rf"--resume {run_dir.name}\s*$", stderr)


@pytest.mark.parametrize("executor", ["processes", pytest.param("dask", marks=pytest.mark.slow)])
def test_ctrl_c_to_the_process_group_while_workers_start_prints_no_traceback(tmp_path,
                                                                             executor):
    if executor == "dask":
        pytest.importorskip("distributed")
    out = tmp_path / "results"
    process = start(tmp_path, "run", "-s", "gaussian-quadratic", "-e", "test-slow", "--set",
                    "dim=1,2,3,4", "--set", "sigma=1", "--set", "k=0", "--samples", "8",
                    "--executor", executor, "--workers", "2", "--out", str(out))
    deadline = time.monotonic() + 120
    while not store.run_dirs(out) and time.monotonic() < deadline:  # the pool starts now
        time.sleep(0.02)
    time.sleep(0.5)  # workers are importing torch
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "--resume" in stderr
