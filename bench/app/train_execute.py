"""Running a `bench train` request: plan it, then compute every trajectory the run folder is
missing on an executor (a trajectory is a task), writing each as it arrives, so an interruption
loses only the trajectories in flight and `--resume RUN_ID` computes just the rest."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradbench.app.errors import BenchError
from gradbench.app.execute import RunInterrupted, _now
from gradbench.app.executors import Executor, LocalExecutor
from gradbench.app.process import configure
from gradbench.app.tasks import CellResult, one_line
from gradbench.app.train_plan import TrainPlan, TrainRequest, Trajectory, plan_training
from gradbench.app.train_run import run_trajectory
from gradbench.core.plugins import load_plugins
from gradbench.results import store

KIND = "train"  # the run metadata's `kind`: bench run's runs have none


@dataclass
class TrainOutcome:
    run_id: str
    run_dir: Path
    plan: TrainPlan
    computed: int
    reused: int
    # Trajectories that failed for good: {"trajectory_id", "estimator", "hyperparams", "seed",
    # "settings", "reason"}; their rows are absent, and `--resume` tries them again.
    failed: list[dict[str, Any]] = field(default_factory=list)


def compute_trajectory(traj: Trajectory, threads: int | None = 1,
                       plugins: tuple[str, ...] = ()) -> CellResult:
    """The task every executor runs for bench train (as compute_cell for bench run): the
    trajectory's rows, or why it failed."""
    if threads is not None:
        configure(threads)
    try:
        load_plugins(plugins)
        return CellResult(traj, rows=run_trajectory(traj))
    except KeyboardInterrupt:  # Ctrl-C keeps its meaning: stop the run, keep what is written
        raise
    except BaseException as error:  # SystemExit too: this trajectory fails, the others go on
        return CellResult(traj, error=one_line(error), details=traceback.format_exc())


def execute_training(request: TrainRequest, out: Path | str, *, command: str = "",
                     run_id: str | None = None, executor: Executor | None = None,
                     on_start: Callable[[str, Path, list[Trajectory], int], None] | None = None,
                     on_done: Callable[[Trajectory, bool], None] | None = None
                     ) -> TrainOutcome:
    """Plan the request, then train every trajectory not already in the run folder.

    `on_start(run_id, run_dir, todo, total)` once the run folder exists; `on_done(trajectory,
    ok)` after each one (for progress bars). Raises RunInterrupted on Ctrl-C, with the finished
    trajectories on disk.
    """
    the_plan = plan_training(request)
    root = store.prepare_out(Path(out))
    record = request_to_json(request)
    if run_id is not None:
        meta = store.read_run_json(root / run_id)
        if meta.get("kind") != KIND:
            raise BenchError(f"run {run_id} was made by `bench run`, not `bench train`; resume "
                             "it with bench run, or start a new training run")
        if meta.get("request") != record:
            raise BenchError(f"run {run_id} was made with different options "
                             f"({meta.get('command', '?')}); repeat those, or start a new run")
    executor = executor if executor is not None else LocalExecutor()
    total = len(the_plan.trajectories)
    with executor:
        if run_id is None:
            run_id = store.new_run_id()
            meta = store.run_metadata(run_id, command) | {"kind": KIND, "request": record}
            (root / run_id).mkdir(parents=True)
            store.write_run_json(root / run_id, meta)
        run_dir = root / run_id
        meta = meta | {"executor": executor.name}
        done = store.finished_trajectories(run_dir)
        todo = [t for t in the_plan.trajectories if t.trajectory_id not in done]
        if on_start is not None:
            on_start(run_id, run_dir, todo, total)
        failed = _compute(executor, todo, run_dir, meta, on_done, total)
    meta = {k: v for k, v in meta.items() if k not in ("interrupted_at", "written")} | {
        "finished_at": _now(), "trajectories": total, "failed": failed,
        "skipped": [{"settings": dict(s.settings), "estimator": s.estimator, "reason": s.reason}
                    for s in the_plan.skipped],
    }
    store.write_run_json(run_dir, meta)
    return TrainOutcome(run_id, run_dir, the_plan, len(todo), total - len(todo), failed)


def _compute(executor: Executor, todo: list[Trajectory], run_dir: Path, meta: dict[str, Any],
             on_done: Callable[[Trajectory, bool], None] | None, total: int
             ) -> list[dict[str, Any]]:
    failed: list[dict[str, Any]] = []
    try:
        for result in executor.run(todo, task=compute_trajectory):
            traj = result.cell
            if result.error is None:
                store.write_trajectory(run_dir, traj.trajectory_id, result.rows, meta)
            else:
                failed.append(_failure(traj, result.error))
            if on_done is not None:
                on_done(traj, result.error is None)
    except KeyboardInterrupt:
        written = len(store.finished_trajectories(run_dir))
        store.write_run_json(run_dir, meta | {"interrupted_at": _now(), "trajectories": total,
                                              "written": written})
        raise RunInterrupted(run_dir.name, run_dir, written, total) from None
    return failed


def _failure(traj: Trajectory, reason: str) -> dict[str, Any]:
    return {"trajectory_id": traj.trajectory_id, "estimator": traj.estimator,
            "hyperparams": traj.hyperparams_dict(), "seed": traj.seed,
            "settings": traj.settings_dict(), "reason": reason}


def request_to_json(request: TrainRequest) -> dict[str, Any]:
    return {
        "suite": request.suite,
        "estimators": list(request.estimators),
        "overrides": {k: list(v) for k, v in sorted(request.overrides.items())},
        "steps": request.steps, "seeds": request.seeds, "seed": request.seed,
        "eval_every": request.eval_every, "refit_every": request.refit_every,
        "learning_rate": request.learning_rate, "optimizer": request.optimizer,
        "variance_draws": request.variance_draws, "basket": request.basket,
        "device": request.device, "dtype": request.dtype,
    }
