"""Executors: where a run's cells are computed. In this process (`local`), in a pool of worker
processes (`processes`), or on a Dask cluster (`dask`: a LocalCluster, or an existing one at
--scheduler ADDRESS).

Every executor runs the same task, `compute_cell` (gradbench.app.tasks): a pure function of the
cell (its key fixes every seed) that returns plain Python values, never tensors, so the same
command gives the same numbers on every executor (CPU; with the same torch thread count).
`bench train` passes its own task (gradbench.app.train_execute.compute_trajectory) with the same
contract: any item with a `task_id`, a result with rows or a one-line error. The parent process
receives the results as they finish and writes them (gradbench.app.execute), so a cell is either
written whole or not at all, whatever happens to a worker.

Failures:
- An exception inside a cell (an estimator raising, or calling sys.exit) is caught in the task
  and comes back as a one-line reason plus its traceback: the cell fails, the others go on.
- A worker process that dies (a segfault, os._exit, the OOM killer, a kill from outside) takes
  down every cell its pool or worker was running, and from outside they all look alike. None of
  them is charged for it: each is run again alone, in a fresh subprocess of its own
  (tasks.run_alone). A cell whose own process dies there is the culprit, reported with the
  signal; the others finish. A worker killed from outside while a cell ran alone is retried up
  to MAX_ATTEMPTS times.
- Workers ignore SIGINT (a Ctrl-C in the terminal reaches the whole process group): the parent
  handles it and ends them, so they never print tracebacks of their own.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import secrets
import signal
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from gradbench.app.errors import BenchError
from gradbench.app.planning import Cell
from gradbench.app.process import configure
from gradbench.app.tasks import CellResult, compute_cell, one_line, run_alone, watch_parent
from gradbench.core.plugins import load_plugins

__all__ = ["EXECUTORS", "CellResult", "DaskExecutor", "Executor", "LocalExecutor",
           "ProcessExecutor", "compute_cell", "make_executor", "one_line"]

Task = Callable[..., CellResult]  # (item, threads, plugins) -> CellResult, module-level

EXECUTORS = ("local", "processes", "dask")
MAX_ATTEMPTS = 3  # a cell running alone whose worker was killed from outside this often fails
CONNECT_TIMEOUT_S = 5  # an unreachable --scheduler fails fast rather than after Dask's 30 s


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread while worker processes (or threads that will start them)
    are created: they inherit the blocked mask, so a Ctrl-C that reaches the whole process group
    while they start up (importing torch, before they could ignore it) stays pending there
    instead of raising KeyboardInterrupt inside them. Here it is delivered on unblocking."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: nothing to inherit
        yield
        return
    # multiprocessing's resource tracker unblocks SIGINT in the thread that first starts it
    # (which would undo the block in a cluster's event-loop thread): start it now.
    with contextlib.suppress(Exception):
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ignore_sigint() -> None:
    """In a worker: ignore SIGINT (a pending one is discarded) and unblock it again."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


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
    ignore_sigint()
    # A parent killed outright cannot end its workers, and they would wait on their task queue
    # forever: each watches for being re-parented and exits.
    watch_parent()
    configure(threads)
    # Import the plugins now, so that a broken one fails the pool's start, not every cell.
    load_plugins(plugins)


class ProcessExecutor(Executor):
    """A pool of `workers` processes started with spawn (forking a parent that already runs
    torch's thread pools is unsafe), each running torch with `threads` threads.

    At most `workers` cells are in flight, so a pool that breaks (a worker killed) takes down
    only the cells that were running; each of them is then run alone (see the module docstring)
    on a fresh pool, and only a cell whose own process dies is charged.
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
        # (cell, alone): alone = suspected of killing a worker, to be run in a subprocess of its
        # own (tasks.run_alone) inside a pool worker, where its crash cannot break the pool.
        queue: deque[tuple[Cell, bool]] = deque((cell, False) for cell in cells)
        killed: dict[str, int] = {}
        while queue:
            self._shutdown()
            self._pool = pool = self._new_pool()
            in_flight: dict[Future, tuple[Cell, bool]] = {}
            broken = False
            from_outside: bool | None = None  # decided when the first future reports the break
            while (queue and not broken) or in_flight:
                while queue and not broken and len(in_flight) < self.workers:
                    cell, alone = queue.popleft()
                    try:
                        with sigint_blocked():  # workers start here, on demand
                            future = (pool.submit(run_alone, cell, self.threads,
                                                  self.plugins, task) if alone else
                                      pool.submit(task, cell, self.threads, self.plugins))
                    except BrokenProcessPool:
                        queue.appendleft((cell, alone))
                        broken = True
                    else:
                        in_flight[future] = (cell, alone)
                if not in_flight:
                    break
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                running = list(in_flight.values())
                for future in done:
                    cell, alone = in_flight.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        broken = True
                        if from_outside is None:
                            # Cells running alone cannot break the pool themselves: if nothing
                            # else was running, it was killed from outside.
                            from_outside = all(a for _, a in running)
                        result = self._after_broken_pool(cell, alone, from_outside, killed,
                                                         queue)
                        if result is None:
                            continue
                    except Exception as error:  # e.g. a result that failed to unpickle
                        result = CellResult(cell, error=one_line(error),
                                            details=traceback.format_exc())
                    yield result
        self._shutdown()

    @staticmethod
    def _after_broken_pool(cell: Cell, alone: bool, from_outside: bool,
                           killed: dict[str, int], queue: deque[tuple[Cell, bool]]
                           ) -> CellResult | None:
        """A cell whose pool broke: queued again alone (None), or failed for good."""
        if not alone or not from_outside:  # a cell in flight crashed, maybe not this one
            queue.append((cell, True))
            return None
        # Only cells running alone were in flight: a worker was killed from outside (another
        # process, the OOM killer). Retry, within limits.
        tries = killed[cell.task_id] = killed.get(cell.task_id, 0) + 1
        if tries < MAX_ATTEMPTS:
            queue.append((cell, True))
            return None
        return CellResult(cell, error=f"the worker process running this cell was killed {tries} "
                          "times from outside the cell (another process, or out of memory)")


class DaskExecutor(Executor):
    """Cells as Dask tasks: on a LocalCluster of `workers` single-threaded worker processes, or
    on the cluster whose scheduler is at `scheduler` (its workers need gradbench installed).

    Each task gets its own key (cell id + a token per run + a submission count): Dask would
    otherwise merge identical pure calls. A task that comes back as an error of Dask's own (a
    KilledWorker: its worker died) is not charged to its cell: the cell runs again alone, in a
    subprocess of its own on a worker (tasks.run_alone), so that only a cell whose own process
    dies fails. The LocalCluster's scheduler declares a task dead at its first worker death
    (allowed-failures 0) rather than rescheduling a crashing cell onto worker after worker.
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
            import dask

            # Blocked while the cluster's threads start: the worker processes they spawn, now
            # and on restarts, inherit the mask, so a Ctrl-C stays with this process.
            with sigint_blocked(), dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                             processes=True, dashboard_address=None,
                                             silence_logs=logging.CRITICAL)
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
        pending: dict[Any, tuple[Cell, bool]] = {}

        def submit(cell: Cell, alone: bool) -> Any:
            args = (run_alone, cell, self.threads, self.plugins, task) if alone else (
                task, cell, self.threads, self.plugins)
            future = self._client.submit(
                *args, pure=False, retries=0,
                key=f"gradbench-{'alone' if alone else 'task'}-{cell.task_id}-{token}-"
                    f"{len(pending)}")
            pending[future] = (cell, alone)
            return future

        stream = as_completed([submit(cell, False) for cell in cells])
        killed: dict[str, int] = {}
        try:
            for future in stream:
                cell, alone = pending[future]
                try:
                    result = future.result()
                except Exception as error:  # Dask's own: KilledWorker, a lost connection, ...
                    result = self._after_lost_task(cell, alone, error, killed)
                    if result is None:
                        stream.add(submit(cell, True))
                future.release()
                if result is not None:
                    yield result
        finally:
            with contextlib.suppress(Exception):
                self._client.cancel([f for f in pending if not f.done()])

    @staticmethod
    def _after_lost_task(cell: Cell, alone: bool, error: Exception, killed: dict[str, int]
                         ) -> CellResult | None:
        """A task lost to a worker's death: run it again alone (None) or fail it for good."""
        if not alone:  # it may have been a bystander of another cell's crash
            return None
        # Its own crash would have ended only its subprocess: the worker died of something else.
        tries = killed[cell.task_id] = killed.get(cell.task_id, 0) + 1
        if tries < MAX_ATTEMPTS:
            return None
        return CellResult(cell, error=f"the Dask worker running this cell alone died {tries} "
                          f"times from outside the cell: {one_line(error)}")


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
