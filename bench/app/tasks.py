"""The task every executor runs (`compute_cell`), and the same task alone in a fresh process
(`run_alone`), which is how a cell suspected of crashing its worker is tried again.

Why a fresh process: when a worker process dies (a segfault in native code, `os._exit`, the OOM
killer), every cell it or its pool was running looks the same from outside. Running each of
them again alone, in a subprocess of its own, tells the culprit (its process dies again, and the
exit status names the signal) from the bystanders (they finish), so only the culprit is charged.

    python -m gradbench.app.tasks TASK.pickle RESULT.pickle     (what run_alone starts)
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gradbench.app.measure import run_cell
from gradbench.app.planning import Cell
from gradbench.app.process import configure
from gradbench.core.plugins import load_plugins

# stderr kept from a crashed process (faulthandler's Python stack is a few KiB).
STDERR_TAIL = 20_000


@dataclass(frozen=True)
class CellResult:
    """A finished task: rows (columns of plain values), or a one-line reason it failed with the
    full story (`details`: a traceback, or a crashed process's signal and stderr). `cell`: the
    task's item (a Cell; a Trajectory for bench train)."""

    cell: Any
    rows: dict[str, list] | None = None
    error: str | None = None
    details: str | None = None


def one_line(error: BaseException) -> str:
    """`Type: message` on one line (the first line of the message), for summaries and JSON."""
    if isinstance(error, SystemExit):
        return f"SystemExit({error.code!r}): the cell called sys.exit()"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def compute_cell(cell: Cell, threads: int | None = 1, plugins: tuple[str, ...] = ()
                 ) -> CellResult:
    """A cell's rows, or why it failed.

    Sets torch's intra-op threads in the worker itself (a pool or cluster worker does not inherit
    the parent's setting); None leaves them alone (the in-process executor: the CLI set them).
    The rows record the thread count actually used. Imports the run's --plugin modules first
    (once per process): a worker must know the plugin's estimators and suites.
    """
    if threads is not None:
        configure(threads)
    try:
        load_plugins(plugins)
        rows = run_cell(cell)
    except KeyboardInterrupt:  # Ctrl-C keeps its meaning: stop the run, keep what is written
        raise
    except BaseException as error:  # SystemExit too: this cell fails, the run goes on
        return CellResult(cell, error=one_line(error), details=traceback.format_exc())
    rows["threads"] = [torch.get_num_threads()] * len(rows["param"])
    return CellResult(cell, rows=rows)


def watch_parent() -> None:
    """Exit when re-parented: a parent killed outright (SIGKILL, the OOM killer) cannot end its
    children, and they would otherwise compute or wait forever."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="gradbench-parent-watch", daemon=True).start()


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def crash_reason(returncode: int) -> str:
    """Why a process running one cell alone ended without a result, on one line."""
    if returncode < 0:
        number = -returncode
        return (f"crashed its process, alone: killed by signal {number} "
                f"({signal_name(number)})")
    return (f"crashed its process, alone: it exited with status {returncode} without a result "
            "(os._exit or a fatal error in native code)")


def describe(item: Any) -> str:
    """A task's item on one line: its kind and id, estimator, settings and device."""
    kind = type(item).__name__.lower()
    hyper = dict(getattr(item, "hyperparams", ()) or ())
    return (f"{kind} {item.task_id} ({getattr(item, 'estimator', '?')} "
            f"{dict(getattr(item, 'settings', ()) or ())} {hyper or ''} on "
            f"{getattr(item, 'device', '?')})")


def run_alone(cell: Any, threads: int = 1, plugins: tuple[str, ...] = (),
              task: Callable[..., CellResult] | None = None) -> CellResult:
    """Run `task(cell, threads, plugins)` (default compute_cell) in a fresh Python process of its
    own, and return its result; if that process dies, a failed CellResult naming the signal or
    exit status, with its stderr as details.

    The child gets its own process group, so a Ctrl-C in the terminal reaches only the parent
    (which ends the child), and it exits by itself if its parent disappears.
    """
    with tempfile.TemporaryDirectory(prefix="gradbench-alone-") as folder:
        order, result = Path(folder) / "task.pickle", Path(folder) / "result.pickle"
        order.write_bytes(pickle.dumps((task or compute_cell, cell, threads, tuple(plugins))))
        done = subprocess.run([sys.executable, "-m", "gradbench.app.tasks", str(order),
                               str(result)], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              process_group=0, check=False)
        if done.returncode == 0 and result.exists():
            return pickle.loads(result.read_bytes())
    stderr = done.stderr.decode(errors="replace")[-STDERR_TAIL:]
    reason = crash_reason(done.returncode)
    details = (f"{describe(cell)} {reason}.\n"
               f"Its stderr (the Python stack at the crash, if faulthandler could write it):\n"
               f"{stderr}")
    return CellResult(cell, error=reason, details=details)


def _main(argv: list[str]) -> int:
    # Ignored, and in its own process group anyway: the parent decides what Ctrl-C means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.enable()  # a crash in native code writes the Python stack to stderr
    watch_parent()
    task, cell, threads, plugins = pickle.loads(Path(argv[1]).read_bytes())
    result = task(cell, threads, plugins)
    out = Path(argv[2])
    partial = out.with_suffix(".partial")
    partial.write_bytes(pickle.dumps(result))
    partial.replace(out)
    return 0


if __name__ == "__main__":
    # Through the module's own name, not __main__: the pickled result must name classes that
    # the parent can import (gradbench.app.tasks.CellResult, not __main__.CellResult).
    from gradbench.app.tasks import _main as main

    sys.exit(main(sys.argv))
