"""Lossless runs: an interrupted sweep (Ctrl-C, SIGTERM or SIGKILL) keeps every finished cell, says
how to resume, and `--resume RUN_ID` computes only the missing cells, ending with statistics
identical to an uninterrupted run; concurrent runs on one results folder never clobber each
other."""

import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from gradbench.app import execute, planning
from gradbench.results import store

SWEEP = ["-s", "gaussian-quadratic", "-e", "score-function", "-e", "measure-valued",
         "--set", "sigma=0.5,1,2,4", "--set", "k=0,10", "--set", "dim=1,5",
         "--samples", "60000"]
REQUEST = planning.RunRequest(
    suite="gaussian-quadratic",
    estimators=("score-function", "measure-valued"),
    overrides={"sigma": ["0.5", "1", "2", "4"], "k": ["0", "10"], "dim": ["1", "5"]},
    samples=60000,
)
CELLS = 32
STATISTICS = ["n", "nonfinite", "mean", "mean_se", "variance", "variance_se", "std", "bias",
              "bias_se", "snr", "snr_se", "mse", "mse_se", "truth", "chunks", "chunk_size",
              "variance_lo", "variance_hi", "tail_index", "reliable", "grad_snr", "cosine"]
BENCH = [sys.executable, "-m", "gradbench.app.cli"]


def statistics(run_dir: Path) -> pd.DataFrame:
    keys = ["cell_id", "param", "level", "coord"]
    frame = store.read_results(run_dir)
    return frame.sort_values(keys).reset_index(drop=True)[keys + STATISTICS]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    """The uninterrupted run, in this process with the CLI's default of one torch thread (two
    threads may split reductions differently: equal statistically, not bit for bit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcome = execute.execute(REQUEST, tmp_path_factory.mktemp("reference"))
    finally:
        torch.set_num_threads(threads)
    assert len(outcome.plan.cells) == CELLS
    return statistics(outcome.run_dir)


def start(out: Path, *extra: str, sweep: list[str] = SWEEP) -> subprocess.Popen:
    return subprocess.Popen([*BENCH, "run", *sweep, "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_dir_after_cells(out: Path, process: subprocess.Popen, cells: int) -> Path:
    """Wait until the running `bench run` has written at least `cells` cells."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        dirs = store.run_dirs(out)
        if dirs and len(store.finished_cells(dirs[0])) >= cells:
            return dirs[0]
        time.sleep(0.02)
    raise AssertionError("the run wrote no cells in 120 s")


def resume_command(stderr: str) -> list[str]:
    lines = stderr.splitlines()
    at = next(i for i, line in enumerate(lines) if "to compute only the missing ones" in line)
    command = shlex.split(lines[at + 1])
    assert command[:2] == ["bench", "run"]
    return [*BENCH, *command[1:]]


def test_keyboard_interrupt_in_process_then_resume(reference, tmp_path):
    def stop_after_three(cell, done, total):
        if done == 3:
            raise KeyboardInterrupt

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(execute.RunInterrupted) as caught:
            execute.execute(REQUEST, tmp_path, on_cell=stop_after_three)
        stop = caught.value
        assert stop.written == 3 and stop.total == CELLS
        meta = store.read_run_json(stop.run_dir)
        assert "interrupted_at" in meta and "finished_at" not in meta
        resumed = execute.execute(REQUEST, tmp_path, run_id=stop.run_id)
    finally:
        torch.set_num_threads(threads)
    assert (resumed.computed, resumed.reused) == (CELLS - 3, 3)
    assert "interrupted_at" not in store.read_run_json(stop.run_dir)
    pd.testing.assert_frame_equal(statistics(resumed.run_dir), reference)


def test_ctrl_c_on_a_process_pool_says_how_to_resume(reference, tmp_path):
    process = start(tmp_path, "--executor", "processes", "--workers", "2")
    run_dir = run_dir_after_cells(tmp_path, process, 2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    written = len(store.finished_cells(run_dir))
    assert 2 <= written < CELLS
    command = resume_command(stderr)
    assert command[-2:] == ["--resume", run_dir.name]
    assert command[len(BENCH) + 1:-2] == [*SWEEP, "--out", str(tmp_path), "--executor",
                                          "processes", "--workers", "2"]
    # Resumed here, in-process (the subprocess resume is tested below): the executor is not
    # part of the request, and a cell's numbers do not depend on it.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = execute.execute(REQUEST, tmp_path, run_id=run_dir.name)
    finally:
        torch.set_num_threads(threads)
    assert (resumed.computed, resumed.reused) == (CELLS - written, written)
    pd.testing.assert_frame_equal(statistics(run_dir), reference)


def test_sigkill_loses_only_cells_in_flight_and_concurrent_resumes_agree(reference, tmp_path):
    process = start(tmp_path)
    run_dir = run_dir_after_cells(tmp_path, process, 2)
    process.kill()  # SIGKILL: no handler runs; whatever was written stays
    process.communicate(timeout=60)
    written = store.finished_cells(run_dir)
    assert 2 <= len(written) < CELLS
    assert not list(run_dir.glob(".*.tmp"))  # no half-written cell left behind
    # Two resumes of the same run at once: they write the same cells (atomically, with the
    # same bytes of statistics), and neither clobbers the other.
    both = [start(tmp_path, "--resume", run_dir.name) for _ in range(2)]
    for resume in both:
        _, stderr = resume.communicate(timeout=120)
        assert resume.returncode == 0, stderr
        # Each computes what was missing when it started (the other may have added some).
        todo, done = map(int, re.search(rf"(\d+) of {CELLS} cells to compute, (\d+) already "
                                        "done", stderr).groups())
        assert todo + done == CELLS and done >= len(written)
    pd.testing.assert_frame_equal(statistics(run_dir), reference)


def test_concurrent_runs_on_one_folder_never_clobber(reference, tmp_path):
    # The sweep's dim=1, k=0 part (a key given twice to --set is refused, not replaced).
    part_sweep = [{"dim=1,5": "dim=1", "k=0,10": "k=0"}.get(arg, arg) for arg in SWEEP]
    runs = [start(tmp_path, sweep=part_sweep) for _ in range(2)]
    for process in runs:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    run_dirs = store.run_dirs(tmp_path)
    assert len(run_dirs) == 2
    first, second = (statistics(d) for d in run_dirs)
    assert len(first) > 0
    pd.testing.assert_frame_equal(first, second)
    # Same cells as the full sweep's dim=1, k=0 part (cell ids follow from the cell keys only).
    part = reference[reference["cell_id"].isin(first["cell_id"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, part)
    for run_dir in run_dirs:
        meta = store.read_run_json(run_dir)
        assert meta["run_id"] == run_dir.name and meta["cells"] == 8
