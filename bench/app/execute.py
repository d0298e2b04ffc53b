"""Running a request: plan it, then compute every cell the run folder is missing on an executor,
writing each as it arrives, so an interruption loses only the cells in flight.

Order of writes: the run's metadata (results/_runs/<run_id>.json) first, then the run folder,
then the cells. A run that cannot even write its metadata leaves nothing behind; once the
metadata exists, the run can always be resumed."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradbench.app.errors import BenchError
from gradbench.app.executors import Executor, LocalExecutor
from gradbench.app.planning import Cell, Plan, RunRequest, plan
from gradbench.results import store

# What a run id looks like (store.new_run_id); --resume takes nothing else, so it cannot name a
# folder outside --out.
RUN_ID = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{6}")


@dataclass
class RunOutcome:
    run_id: str
    run_dir: Path
    plan: Plan
    computed: int
    reused: int
    # Cells that failed for good: {"cell_id", "estimator", "settings", "hyperparams", "device",
    # "reason", "details"}; their rows are absent, and `--resume` tries them again.
    failed: list[dict[str, Any]] = field(default_factory=list)
    # Cell files that did not read back on --resume: {cell_id: reason}; set aside and recomputed.
    set_aside: dict[str, str] = field(default_factory=dict)

    @property
    def written(self) -> int:
        """Cells of the plan whose rows are in the run folder now."""
        return len(self.plan.cells) - len(self.failed)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM via the CLI) during a run: finished cells are on disk; the run id says
    what to resume. A KeyboardInterrupt, so code that handles those still does."""

    def __init__(self, run_id: str, run_dir: Path, written: int, total: int) -> None:
        super().__init__(f"run {run_id} interrupted after {written} of {total} cells")
        self.run_id, self.run_dir, self.written, self.total = run_id, run_dir, written, total


class RunStopped(BenchError):
    """A run that cannot go on (the disk is full): finished cells are kept; `--resume` goes on
    once the cause is fixed. A BenchError: one line, exit code 2."""

    def __init__(self, message: str, run_id: str, run_dir: Path, written: int,
                 total: int) -> None:
        super().__init__(message)
        self.run_id, self.run_dir, self.written, self.total = run_id, run_dir, written, total


def execute(request: RunRequest, out: Path | str, *, command: str = "",
            run_id: str | None = None, on_cell: Callable[[Cell, int, int], None] | None = None,
            executor: Executor | None = None,
            on_start: Callable[[str, Path, int, int], None] | None = None,
            planned: Plan | None = None) -> RunOutcome:
    """Plan the request, then run every cell not already in the run folder on `executor`
    (default: in this process), writing each as it arrives.

    `on_start(run_id, run_dir, todo, total)` is called once the run folder exists;
    `on_cell(cell, done, total)` after every cell, failed ones included (for progress bars).
    Cells are written atomically one by one, so an interruption (RunInterrupted), a full disk
    (RunStopped) or a killed process loses only the cells in flight, and `run_id=` (--resume)
    computes just the rest. On resume, cell files that do not read back are set aside
    (results/_runs/<run_id>/corrupt/) and computed again. `planned`: the request's plan, if the
    caller made it already.
    """
    the_plan = planned if planned is not None else plan(request)
    root = store.prepare_out(Path(out))
    executor = executor if executor is not None else LocalExecutor()
    set_aside: dict[str, str] = {}
    if run_id is not None:
        meta = _resumable(root, run_id, request, the_plan)
    # Started before a new run folder exists: a cluster that cannot start leaves nothing behind.
    with executor:
        if run_id is None:
            run_id, meta = _new_run(root, request, the_plan, command)
        else:
            meta = _record_resume(meta, command, executor)
            set_aside = _set_aside_unreadable(root / run_id)
            store.write_run_json(root / run_id, meta)
        run_dir = root / run_id
        meta = meta | {"executor": executor.name}
        finished = store.finished_cells(run_dir)
        todo = [c for c in the_plan.cells if c.cell_id not in finished]
        total = len(the_plan.cells)
        try:
            if on_start is not None:
                on_start(run_id, run_dir, len(todo), total)
            failed = _compute(executor, todo, run_dir, meta, on_cell)
        except KeyboardInterrupt:
            written = _note_stop(run_dir, meta, total, "interrupted_at")
            raise RunInterrupted(run_id, run_dir, written, total) from None
        except store.ResultsError as error:  # a cell that cannot be written: a full disk, ...
            written = _note_stop(run_dir, meta, total, "stopped_at")
            raise RunStopped(str(error), run_id, run_dir, written, total) from None
    _finish(run_dir, meta, the_plan, failed)
    return RunOutcome(run_id, run_dir, the_plan, len(todo), total - len(todo), failed,
                      set_aside)


def _finish(run_dir: Path, meta: dict[str, Any], the_plan: Plan,
            failed: list[dict[str, Any]]) -> None:
    """The run's final metadata: finished, with its failures and skipped pairs."""
    meta = {k: v for k, v in meta.items()
            if k not in ("interrupted_at", "stopped_at", "cells_written")} | {
        "finished_at": _now(),
        "cells": len(the_plan.cells),
        "failed": failed,
        "skipped": [{"settings": dict(s.settings), "estimator": s.estimator, "reason": s.reason}
                    for s in the_plan.skipped],
    }
    store.write_run_json(run_dir, meta)


def _new_run(root: Path, request: RunRequest, the_plan: Plan, command: str
             ) -> tuple[str, dict[str, Any]]:
    """A new run id, its metadata written first, then its (empty) folder."""
    run_id = store.new_run_id()
    meta = store.run_metadata(run_id, command) | {
        "request": request_to_json(request), "normalized_request": the_plan.request}
    store.write_run_json(root / run_id, meta)  # first: a run with a folder can be resumed
    try:
        (root / run_id).mkdir(parents=True)
    except OSError as error:
        raise store.writing(root / run_id, error) from None
    return run_id, meta


def _resumable(root: Path, run_id: str, request: RunRequest, the_plan: Plan) -> dict[str, Any]:
    """The metadata of run `run_id` under `root`, if it exists and was made with this request
    (compared in canonical form)."""
    if not RUN_ID.fullmatch(run_id):
        raise BenchError(f"--resume {run_id!r} is not a run id: give the id `bench run` printed "
                         "(YYYYmmdd-HHMMSS-xxxxxx), of a run under --out (here "
                         f"{root})")
    if not (root / run_id).is_dir() and not store.run_json_path(root / run_id).is_file():
        raise BenchError(f"no run {run_id} under --out {root}; give the --out it was run with")
    meta = store.read_run_json(root / run_id)
    made = meta.get("normalized_request")
    if made is None:  # a run of an older gradbench: normalise what it recorded
        made = _normalized_from(meta.get("request"))
    if made != the_plan.request:
        raise BenchError(f"run {run_id} was made with different options "
                         f"({meta.get('command', '?')}); repeat those, or start a new run")
    (root / run_id).mkdir(exist_ok=True)  # its metadata was written, its folder not yet
    return meta


def _normalized_from(record: Any) -> dict[str, Any] | None:
    try:
        return plan(RunRequest(**record)).request
    except (TypeError, ValueError, BenchError):
        return None


def _record_resume(meta: dict[str, Any], command: str, executor: Executor) -> dict[str, Any]:
    """Each resume is recorded: when, how, and with how many torch threads (rows record the
    threads each cell used)."""
    entry = {"at": _now(), "command": command, "executor": executor.name,
             "threads": getattr(executor, "threads", None) or torch.get_num_threads()}
    return meta | {"resumed": [*meta.get("resumed", []), entry]}


def _set_aside_unreadable(run_dir: Path) -> dict[str, str]:
    _, bad = store.checked_cells(run_dir)
    for cell_id in bad:
        store.set_aside(run_dir, cell_id)
    return bad


def _compute(executor: Executor, todo: list[Cell], run_dir: Path, meta: dict[str, Any],
             on_cell: Callable[[Cell, int, int], None] | None) -> list[dict[str, Any]]:
    """Run `todo` on the executor, writing each finished cell; the failures, one dict each."""
    failed: list[dict[str, Any]] = []
    for done, result in enumerate(executor.run(todo), start=1):
        if result.error is None:
            store.write_cell(run_dir, result.cell.cell_id, result.rows, meta)
        else:
            failed.append(_failure(run_dir, result.cell, result.error, result.details))
        if on_cell is not None:
            on_cell(result.cell, done, len(todo))
    return failed


def _note_stop(run_dir: Path, meta: dict[str, Any], total: int, key: str) -> int:
    """Record in the run's metadata that it stopped early (if that can still be written)."""
    written = len(store.finished_cells(run_dir))
    # On a full disk this write fails too: the metadata written at the start stands.
    with contextlib.suppress(store.ResultsError):
        store.write_run_json(run_dir, meta | {key: _now(), "cells": total,
                                              "cells_written": written})
    return written


def _failure(run_dir: Path, cell: Cell, reason: str, details: str | None) -> dict[str, Any]:
    path = store.write_error(run_dir, cell.cell_id, details or reason)
    return {"cell_id": cell.cell_id, "estimator": cell.estimator,
            "settings": cell.settings_dict(), "hyperparams": cell.hyperparams_dict(),
            "device": cell.device, "reason": reason, "details": str(path) if path else None}


def request_to_json(request: RunRequest) -> dict[str, Any]:
    """The request as given (raw --set text): what the run's metadata records as `request`."""
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
