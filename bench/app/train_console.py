"""`bench train` at the console: progress bar with an ETA, the run id first (so a killed run has
said what to resume), a closing table per suite setting, one-line errors (via the CLI)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from gradbench.app import train_execute
from gradbench.app.execute import RunInterrupted
from gradbench.app.executors import Executor
from gradbench.app.report.training_summaries import final_table, load_training, own_rows
from gradbench.app.train_plan import TrainRequest, Trajectory
from gradbench.app.train_run import progress_hook
from gradbench.results import store


class _StepProgress:
    """Steps done over all trajectories: finer ticks from in-process trajectories (the progress
    hook), whole trajectories from worker processes."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("planning", total=None, now="")
        self.done: dict[str, int] = {}

    def start(self, todo: list[Trajectory]) -> None:
        self.progress.update(self.task, total=sum(t.steps for t in todo), completed=0,
                             description="training")

    def step(self, trajectory_id: str, steps: int) -> None:
        self.done[trajectory_id] = steps
        self.progress.update(self.task, completed=sum(self.done.values()))

    def finished(self, traj: Trajectory, ok: bool) -> None:
        self.step(traj.trajectory_id, traj.steps)
        self.progress.update(self.task, now=f"{traj.estimator} seed {traj.seed}"
                             + ("" if ok else " [failed]"))


def train(request: TrainRequest, out: Path, resume: str | None, executor: Executor,
          console: Console, err_console: Console, interrupt: Callable[[], Any],
          resume_command: Callable[[str], str]) -> int:
    """Run the request with a progress bar; print the run id at the start and a summary (or
    what failed, or how to resume) at the end; return the exit code: 0, 1 when trajectories
    failed, 130 when interrupted. `interrupt()`: a context manager turning SIGTERM into
    KeyboardInterrupt; `resume_command(run_id)`: the command line that resumes the run."""
    try:
        outcome = _run(request, out, resume, executor, console, err_console, interrupt)
    except RunInterrupted as stop:
        err_console.print(f"interrupted: {stop.written} of {stop.total} trajectories are "
                          f"written in {stop.run_dir}; to train only the missing ones, run:\n  "
                          f"{resume_command(stop.run_id)}", highlight=False, soft_wrap=True)
        return 130
    for failure in outcome.failed:
        err_console.print(f"[bold red]failed[/bold red] {failure['estimator']} seed "
                          f"{failure['seed']} {failure['settings']}: {failure['reason']}",
                          highlight=False, soft_wrap=True)
    if outcome.failed:
        err_console.print(f"{len(outcome.failed)} of {len(outcome.plan.trajectories)} "
                          f"trajectories failed; after a fix, `{resume_command(outcome.run_id)}`"
                          " trains only those", highlight=False, soft_wrap=True)
        return 1
    return 0


def _run(request: TrainRequest, out: Path, resume: str | None, executor: Executor,
         console: Console, err_console: Console,
         interrupt: Callable[[], Any]) -> train_execute.TrainOutcome:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("steps"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn(), TextColumn("{task.fields[now]}"))
    with Progress(*columns, console=err_console, transient=True) as progress:
        steps = _StepProgress(progress)

        def on_start(run_id: str, run_dir: Path, todo: list[Trajectory], total: int) -> None:
            reused = f", {total - len(todo)} already done" if len(todo) < total else ""
            err_console.print(f"run {run_id}: {len(todo)} of {total} trajectories to train"
                              f"{reused} ({executor.name} executor) -> {run_dir}",
                              highlight=False, soft_wrap=True)
            steps.start(todo)

        with interrupt(), progress_hook(steps.step):
            outcome = train_execute.execute_training(
                request, out, command=store.command_line(), run_id=resume, executor=executor,
                on_start=on_start, on_done=steps.finished)
    frame = load_training([outcome.run_dir])
    if frame is not None:
        for _, table in summary_tables(frame):
            console.print(table, highlight=False)
        note = f" ({outcome.reused} reused)" if outcome.reused else ""
        console.print(f"wrote {len(frame)} rows, {len(outcome.plan.trajectories)} "
                      f"trajectories{note}: {outcome.run_dir}", highlight=False)
    for skip in outcome.plan.skipped:
        console.print(f"[yellow]skipped[/yellow] {skip.estimator} at {dict(skip.settings)}: "
                      f"not applicable: {skip.reason}", highlight=False)
    return outcome


def summary_tables(frame: pd.DataFrame) -> list[tuple[str, Table]]:
    """One rich table per suite setting: the final values (mean ± SE over seeds)."""
    out = []
    for (suite, settings), part in frame.groupby(["suite", "settings"], sort=True):
        table = final_table(own_rows(part))
        title = f"{suite} {settings}: final values, mean ± SE over seeds"
        rich = Table(title=title, caption=f"objective: {part['objective_name'].iloc[0]}; "
                     f"target: {table.attrs['target_metric']} = {table.attrs['target']:.6g} "
                     "(90% of the worst variant's mean improvement)", caption_justify="left")
        labels = [c for c in table.columns if f"{c} SE" in table.columns
                  and c not in ("target steps", "target seconds")]
        for column in ("estimator", "seeds", *labels, "evals", "steps to target"):
            rich.add_column(column, justify="left" if column == "estimator" else "right")
        for _, row in table.iterrows():
            reach = (f"{_fmt(row['target steps'], row['target steps_se'])} "
                     f"({int(row['target reached'])}/{int(row['seeds'])})")
            rich.add_row(str(row["variant"]), str(row["seeds"]),
                         *[_fmt(row[c], row[f"{c} SE"]) for c in labels],
                         f"{row['evals']:.3g}", reach)
        out.append((title, rich))
    return out


def _fmt(value: float, se: float = float("nan")) -> str:
    """Five significant digits (training curves differ in the third), ± the SE's two."""
    if value != value:
        return "n/a"
    return f"{value:.5g}" + ("" if se != se else f" ± {se:.2g}")
