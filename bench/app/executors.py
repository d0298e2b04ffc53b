"""Executors: where a run's cells are computed. In this process (`local`), in a pool of worker
processes (`processes`), or on a Dask cluster (`dask`: a LocalCluster, or an existing one at
--scheduler ADDRESS).

Every executor runs the same task, `compute_cell`: a pure function of the cell (its key fixes
every seed) that returns plain Python values, never tensors, so the same command gives the same
numbers on every executor (CPU; with the same torch thread count). `bench train` passes its own
task (gradbench.app.train_execute.compute_trajectory) with the same contract: any item with a
`task_id`, a result with rows or a one-line error. The parent process receives
the results as they finish and writes them (gradbench.app.execute), so a cell is either written
whole or not at all, whatever happens to a worker.

Failures: an exception inside a cell (an estimator raising, say) is caught in the task and
comes back as a one-line reason: the cell fails for good, the others go on. A worker that dies
(killed, out of memory, a crash in native code) takes only the cells it was running; those are
resubmitted, up to MAX_ATTEMPTS times each.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import secrets
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from gradbench.app.errors import BenchError
from gradbench.app.measure import run_cell
from gradbench.app.planning import Cell
from gradbench.app.process import configure
from gradbench.core.plugins import load_plugins

EXECUTORS = ("local", "processes", "dask")
MAX_ATTEMPTS = 3  # a cell whose worker died this many times is reported as failed
DASK_RETRIES = MAX_ATTEMPTS - 1
CONNECT_TIMEOUT_S = 5  # an unreachable --scheduler fails fast rather than after Dask's 30 s


@dataclass(frozen=True)
class CellResult:
    """A finished task: rows (columns of plain values) or a one-line reason it failed. `cell`:
    the task's item (a Cell; a Trajectory for bench train)."""

    cell: Any
    rows: dict[str, list] | None = None
    error: str | None = None


def one_line(error: BaseException) -> str:
    """`Type: message` on one line (the first line of the message), for summaries and JSON."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def compute_cell(cell: Cell, threads: int | None = 1, plugins: tuple[str, ...] = ()
                 ) -> CellResult:
    """The task every executor runs: a cell's rows, or why it failed.

    Sets torch's intra-op threads in the worker itself (a pool or cluster worker does not inherit
    the parent's setting); None leaves them alone (the in-process executor: the CLI set them).
    Imports the run's --plugin modules first (once per process): a worker must know the plugin's
    estimators and suites to run their cells.
    """
    if threads is not None:
        configure(threads)
    try:
        load_plugins(plugins)
        return CellResult(cell, rows=run_cell(cell))
    except Exception as error:  # any failure of this cell is reported; the others go on
        return CellResult(cell, error=one_line(error))


Task = Callable[..., CellResult]  # (item, threads, plugins) -> CellResult


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Executor:
    """Base: a context manager that starts its resources, and `run(cells)` that yields a
    CellResult per cell as each finishes (in any order)."""

    name = "local"

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, cells: Sequence[Cell], task: Task = compute_cell) -> Iterator[CellResult]:
        """`task(item, threads, plugins)` for each item (a module-level function, so that it
        pickles for worker processes)."""
        raise NotImplementedError


class LocalExecutor(Executor):
    """In this process, one cell after another, with the thread count already set here."""

    name = "local"

    def __init__(self, threads: int | None = None, plugins: Sequence[str] = ()) -> None:
        self.threads = threads
        self.plugins = tuple(plugins)

    def run(self, cells: Sequence[Cell], task: Task = compute_cell) -> Iterator[CellResult]:
        for cell in cells:
            yield task(cell, self.threads, self.plugins)


def _worker_init(threads: int, plugins: tuple[str, ...]) -> None:
    # Ctrl-C reaches the whole process group: the parent handles it (and ends the workers), so
    # workers ignore it instead of printing tracebacks from inside a task.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A parent killed outright (SIGKILL, OOM killer) cannot end its workers, and they would wait
    # on their task queue forever: each watches for being re-parented and exits.
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="gradbench-parent-watch", daemon=True).start()
    configure(threads)
    # Import the plugins now, so that a broken one fails the pool's start, not every cell.
    load_plugins(plugins)


class ProcessExecutor(Executor):
    """A pool of `workers` processes started with spawn (forking a parent that already runs
    torch's thread pools is unsafe), each running torch with `threads` threads.

    At most `workers` cells are in flight, so a pool that breaks (a worker killed) takes down
    only the cells that were running; they go to the back of the queue of a fresh pool.
    """

    name = "processes"

    def __init__(self, workers: int | None = None, threads: int = 1,
                 plugins: Sequence[str] = ()) -> None:
        self.workers = workers or default_workers()
        self.threads = threads
        self.plugins = tuple(plugins)
        self._pool: ProcessPoolExecutor | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init,
                                   initargs=(self.threads, self.plugins))

    def __exit__(self, *exc: object) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # Workers may be mid-cell (after Ctrl-C): end them now rather than wait for the cell.
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            with contextlib.suppress(Exception):
                process.terminate()
        for process in processes:
            with contextlib.suppress(Exception):
                process.join(timeout=5)

    def run(self, cells: Sequence[Cell], task: Task = compute_cell) -> Iterator[CellResult]:
        queue = deque(cells)
        attempts: dict[str, int] = {}
        while queue:
            self._shutdown()
            self._pool = pool = self._new_pool()
            in_flight: dict[Future, Cell] = {}
            broken = False
            while (queue and not broken) or in_flight:
                while queue and not broken and len(in_flight) < self.workers:
                    cell = queue.popleft()
                    try:
                        in_flight[pool.submit(task, cell, self.threads, self.plugins)] = cell
                    except BrokenProcessPool:
                        queue.appendleft(cell)
                        broken = True
                if not in_flight:
                    break
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    cell = in_flight.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        broken = True
                        tries = attempts[cell.task_id] = attempts.get(cell.task_id, 0) + 1
                        if tries < MAX_ATTEMPTS:
                            queue.append(cell)
                            continue
                        result = CellResult(cell, error=f"worker process died {tries} times "
                                            "running this cell (killed, out of memory or "
                                            "crashed)")
                    except Exception as error:  # e.g. a result that failed to unpickle
                        result = CellResult(cell, error=one_line(error))
                    yield result
        self._shutdown()


class DaskExecutor(Executor):
    """Cells as Dask tasks: on a LocalCluster of `workers` single-threaded worker processes, or
    on the cluster whose scheduler is at `scheduler` (its workers need gradbench installed).

    Each task gets its own key (cell id + a token per run): Dask would otherwise merge
    identical pure calls. A worker that dies has its tasks rescheduled by Dask; `retries`
    resubmits a task that still ends in error (e.g. KilledWorker).
    """

    name = "dask"

    def __init__(self, workers: int | None = None, threads: int = 1,
                 scheduler: str | None = None, plugins: Sequence[str] = ()) -> None:
        self.workers = workers or default_workers()
        self.threads = threads
        self.scheduler = scheduler
        self.plugins = tuple(plugins)
        self._client: Any = None
        self._cluster: Any = None

    def __enter__(self) -> DaskExecutor:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise BenchError("--executor dask needs Dask's distributed scheduler, which is not "
                             "installed: pip install dask distributed (the dask extra of "
                             "gradbench)") from None
        if self.scheduler:
            try:
                self._client = Client(self.scheduler, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError, ValueError) as error:
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise BenchError(f"cannot reach a Dask scheduler at {self.scheduler} within "
                                 f"{CONNECT_TIMEOUT_S} s ({reason}); start one (`dask scheduler`"
                                 ") or leave out --scheduler for a local cluster") from None
        else:
            self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                         processes=True, dashboard_address=None,
                                         silence_logs=logging.ERROR)
            self._client = Client(self._cluster)
        return self

    def __exit__(self, *exc: object) -> None:
        client, cluster = self._client, self._cluster
        self._client = self._cluster = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()

    def run(self, cells: Sequence[Cell], task: Task = compute_cell) -> Iterator[CellResult]:
        from distributed import as_completed

        if self._client is None:
            raise RuntimeError("DaskExecutor.run outside `with`: the cluster is not started")
        token = secrets.token_hex(4)
        futures = {
            self._client.submit(task, cell, self.threads, self.plugins, pure=False,
                                key=f"gradbench-task-{cell.task_id}-{token}",
                                retries=DASK_RETRIES): cell
            for cell in cells
        }
        try:
            for future in as_completed(futures):
                cell = futures[future]
                try:
                    result = future.result()
                except Exception as error:  # e.g. KilledWorker: its worker died every retry
                    result = CellResult(cell, error=f"Dask task failed after {DASK_RETRIES} "
                                        f"retries: {one_line(error)}")
                future.release()
                yield result
        finally:
            with contextlib.suppress(Exception):
                self._client.cancel(list(futures))


def make_executor(name: str, workers: int | None = None, threads: int = 1,
                  scheduler: str | None = None, plugins: Sequence[str] = ()) -> Executor:
    """Validate the CLI's executor options (one-line BenchErrors) and build the executor."""
    if name not in EXECUTORS:
        raise BenchError(f"unknown executor '{name}'. Valid: {', '.join(EXECUTORS)}.")
    if workers is not None and workers < 1:
        raise BenchError(f"--workers {workers}: need at least 1 worker")
    if scheduler and name != "dask":
        raise BenchError("--scheduler ADDRESS needs --executor dask")
    if name == "local":
        if workers is not None and workers != 1:
            raise BenchError("--workers applies to --executor processes or dask; the local "
                             "executor runs one cell at a time in this process")
        return LocalExecutor(plugins=plugins)
    if name == "processes":
        return ProcessExecutor(workers, threads, plugins)
    return DaskExecutor(workers, threads, scheduler, plugins)
