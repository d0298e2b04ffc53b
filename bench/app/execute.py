"""Running a request: plan it, then compute every cell the run folder is missing on an executor,
writing each as it arrives, so an interruption loses only the cells in flight."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradbench.app.errors import BenchError
from gradbench.app.executors import Executor, LocalExecutor
from gradbench.app.planning import Cell, Plan, RunRequest, plan
from gradbench.results import store


@dataclass
class RunOutcome:
    run_id: str
    run_dir: Path
    plan: Plan
    computed: int
    reused: int
    # Cells that failed for good: {"cell_id", "estimator", "settings", "hyperparams", "device",
    # "reason"}; their rows are absent, and `--resume` tries them again.
    failed: list[dict[str, Any]] = field(default_factory=list)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM via the CLI) during a run: finished cells are on disk; the run id says
    what to resume. A KeyboardInterrupt, so code that handles those still does."""

    def __init__(self, run_id: str, run_dir: Path, written: int, total: int) -> None:
        super().__init__(f"run {run_id} interrupted after {written} of {total} cells")
        self.run_id, self.run_dir, self.written, self.total = run_id, run_dir, written, total


def execute(request: RunRequest, out: Path | str, *, command: str = "",
            run_id: str | None = None, on_cell: Callable[[Cell, int, int], None] | None = None,
            executor: Executor | None = None,
            on_start: Callable[[str, Path, int, int], None] | None = None) -> RunOutcome:
    """Plan the request, then run every cell not already in the run folder on `executor`
    (default: in this process), writing each as it arrives.

    `on_start(run_id, run_dir, todo, total)` is called once the run folder exists;
    `on_cell(cell, done, total)` after every cell, failed ones included (for progress bars).
    Cells are written atomically one by one, so an interruption (RunInterrupted) or a killed
    process loses only the cells in flight, and `run_id=` (--resume) computes just the rest.
    """
    the_plan = plan(request)
    root = store.prepare_out(Path(out))
    record = request_to_json(request)
    if run_id is not None:
        meta = store.read_run_json(root / run_id)
        if meta.get("request") != record:
            raise BenchError(f"run {run_id} was made with different options "
                             f"({meta.get('command', '?')}); repeat those, or start a new run")
    executor = executor if executor is not None else LocalExecutor()
    # Started before a new run folder exists: a cluster that cannot start leaves nothing behind.
    with executor:
        if run_id is None:
            run_id = store.new_run_id()
            meta = store.run_metadata(run_id, command) | {"request": record}
            (root / run_id).mkdir(parents=True)
            store.write_run_json(root / run_id, meta)
        run_dir = root / run_id
        meta = meta | {"executor": executor.name}
        todo = [c for c in the_plan.cells if c.cell_id not in store.finished_cells(run_dir)]
        if on_start is not None:
            on_start(run_id, run_dir, len(todo), len(the_plan.cells))
        failed = _compute(executor, todo, run_dir, meta, on_cell, len(the_plan.cells))
    meta = {k: v for k, v in meta.items() if k not in ("interrupted_at", "cells_written")} | {
        "finished_at": _now(),
        "cells": len(the_plan.cells),
        "failed": failed,
        "skipped": [{"settings": dict(s.settings), "estimator": s.estimator, "reason": s.reason}
                    for s in the_plan.skipped],
    }
    store.write_run_json(run_dir, meta)
    return RunOutcome(run_id, run_dir, the_plan, len(todo),
                      len(the_plan.cells) - len(todo), failed)


def _compute(executor: Executor, todo: list[Cell], run_dir: Path, meta: dict[str, Any],
             on_cell: Callable[[Cell, int, int], None] | None, total: int
             ) -> list[dict[str, Any]]:
    """Run `todo` on the executor, writing each finished cell; the failures, one dict each."""
    failed: list[dict[str, Any]] = []
    done = 0
    try:
        for result in executor.run(todo):
            if result.error is None:
                store.write_cell(run_dir, result.cell.cell_id, result.rows, meta)
            else:
                failed.append(_failure(result.cell, result.error))
            done += 1
            if on_cell is not None:
                on_cell(result.cell, done, len(todo))
    except KeyboardInterrupt:
        written = len(store.finished_cells(run_dir))
        store.write_run_json(run_dir, meta | {"interrupted_at": _now(), "cells": total,
                                              "cells_written": written})
        raise RunInterrupted(run_dir.name, run_dir, written, total) from None
    return failed


def _failure(cell: Cell, reason: str) -> dict[str, Any]:
    return {"cell_id": cell.cell_id, "estimator": cell.estimator,
            "settings": cell.settings_dict(), "hyperparams": cell.hyperparams_dict(),
            "device": cell.device, "reason": reason}


def request_to_json(request: RunRequest) -> dict[str, Any]:
    return {
        "suite": request.suite,
        "estimators": list(request.estimators),
        "overrides": {k: list(v) for k, v in sorted(request.overrides.items())},
        "samples": request.samples,
        "seed": request.seed,
        "devices": list(request.devices),
        "dtype": request.dtype,
        "coords": request.coords,
    }


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
