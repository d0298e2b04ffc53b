"""What the CLI prints, beyond the tables: its consoles and one-line errors, and everything
`bench run` says while and after it runs (progress with an ETA, the estimated time, how to
resume after an interruption, the table and the notes under it, the failures), and the JSON
lines of `bench show -f json`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from gradbench.app.errors import BenchError

if TYPE_CHECKING:
    import pandas as pd

    from gradbench.app.execute import RunOutcome
    from gradbench.app.executors import Executor
    from gradbench.app.planning import RunRequest, Skip

# Piped output (CI logs, files) gets a wide table instead of rich's 80-column default.
console = Console() if Console().is_terminal else Console(width=160)
err_console = Console(stderr=True)


def error_line(text: str) -> None:
    err_console.print(f"[bold red]error:[/bold red] {escape(text)}", highlight=False,
                      soft_wrap=True)


def execute_with_progress(request: RunRequest, out: Path, resume: str | None,
                          pool: Executor) -> RunOutcome:
    """Plan, estimate the time, then run with a progress bar (cells, elapsed, ETA)."""
    from gradbench.app import execute as runner
    from gradbench.app import planning, preflight
    from gradbench.results import store

    the_plan = planning.plan(request)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), _EtaColumn(), TextColumn("{task.fields[cell]}"))
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(request.suite, total=None, cell="planning", eta=None)

        def on_start(run_id: str, run_dir: Path, todo: int, total: int) -> None:
            # First, so that even a killed run (no chance to say more) has told its run id.
            reused = f", {total - todo} already done" if todo < total else ""
            err_console.print(f"run {run_id}: {todo} of {total} cells to compute{reused} "
                              f"({pool.name} executor) -> {run_dir}", highlight=False,
                              soft_wrap=True)
            finished = store.finished_cells(run_dir)
            cells = [c for c in the_plan.cells if c.cell_id not in finished]
            estimate = preflight.estimate(the_plan, cells, getattr(pool, "workers", 1))
            if estimate is not None:
                err_console.print(estimate.text(getattr(pool, "workers", 1)), highlight=False)
            progress.update(task, eta=preflight.Eta(the_plan, cells, estimate), cell="")

        def on_cell(cell: planning.Cell, done: int, total: int) -> None:
            eta = progress.tasks[0].fields.get("eta")
            if eta is not None:
                eta.finished(cell)
            progress.update(task, completed=done, total=total,
                            cell=f"{cell.estimator} {dict(cell.settings)}")

        try:
            return runner.execute(request, out, command=store.command_line(), run_id=resume,
                                  on_cell=on_cell, executor=pool, on_start=on_start,
                                  planned=the_plan)
        except runner.RunStopped as stop:
            raise BenchError(f"{stop}; {stop.written} of {stop.total} cells are written; "
                             f"then resume: {resume_command(stop.run_id)}") from None


class _EtaColumn(ProgressColumn):
    """Time left, from preflight.Eta (work-weighted), or '-' while unknown."""

    def render(self, task):  # type: ignore[override]
        from rich.text import Text

        from gradbench.app.preflight import duration

        eta = task.fields.get("eta")
        seconds = eta.remaining_s() if eta is not None else None
        return Text(f"ETA {duration(seconds)}" if seconds is not None else "ETA -",
                    style="progress.remaining")


def interrupted(stop: KeyboardInterrupt, signum: int) -> None:
    """Ctrl-C or SIGTERM: say how to resume where there is a run to resume; exit 128 + signal."""
    from gradbench.app.execute import RunInterrupted

    if isinstance(stop, RunInterrupted):
        err_console.print(f"interrupted: {stop.written} of {stop.total} cells are written in "
                          f"{stop.run_dir}; to compute only the missing ones, run:\n  "
                          f"{resume_command(stop.run_id)}", highlight=False, soft_wrap=True)
    else:
        err_console.print("interrupted before any cell was written: nothing to resume",
                          highlight=False)
    raise typer.Exit(128 + signum)


def report_run(outcome: RunOutcome, suite: str) -> None:
    """The table, the notes under it, what was written, and the failures (exit 1 if any)."""
    from gradbench.app.table import constants_line, summary_table
    from gradbench.results import store

    for cell_id, reason in outcome.set_aside.items():
        err_console.print(f"[yellow]recomputed[/yellow] cell {cell_id}: its file "
                          f"{escape(reason)}; set "
                          f"aside in {store.run_files_dir(outcome.run_dir) / 'corrupt'}",
                          highlight=False, soft_wrap=True)
    note = f" ({outcome.reused} reused)" if outcome.reused else ""
    if outcome.written:
        frame = store.read_results(outcome.run_dir)
        constants = constants_line(frame)
        if constants:
            console.print(constants, highlight=False)
        console.print(summary_table(frame, title=f"{suite} ({outcome.run_id})"))
        _print_skipped(outcome.plan.skipped)
        _print_nonfinite(frame)
        _print_unreliable(frame)
        console.print(f"wrote {len(frame)} rows, {outcome.written} cells{note}: "
                      f"{outcome.run_dir} (every statistic: bench show {outcome.run_dir})",
                      highlight=False, soft_wrap=True)
    if outcome.failed:
        _report_failures(outcome)


def _report_failures(outcome: RunOutcome) -> None:
    from gradbench.results import store

    for failure in outcome.failed:
        where = f" (details: {failure['details']})" if failure.get("details") else ""
        err_console.print(f"[bold red]failed[/bold red] {failure['estimator']} "
                          f"{failure['settings']} {failure['hyperparams'] or ''} on "
                          f"{failure['device']}: {escape(failure['reason'])}{where}",
                          highlight=False, soft_wrap=True)
    err_console.print(f"{len(outcome.failed)} of {len(outcome.plan.cells)} cells failed "
                      f"(listed in {store.run_json_path(outcome.run_dir)}); the others are "
                      f"kept; after a fix, `{resume_command(outcome.run_id)}` runs only "
                      "the failed ones", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def resume_command(run_id: str) -> str:
    """The command line that was run, with --resume RUN_ID (once)."""
    import shlex

    args = sys.argv[1:]
    if not any(a == "--resume" or a.startswith("--resume=") for a in args):
        args = [*args, "--resume", run_id]
    return shlex.join(["bench", *args])


class signals_as_interrupt:
    """`kill PID` (SIGTERM) ends a run like Ctrl-C: finished cells kept, resume command shown;
    `signum` says which signal it was (the exit code is 128 + signum: 130 or 143)."""

    def __enter__(self) -> signals_as_interrupt:
        import signal

        self.signum = signal.SIGINT

        def interrupt(signum: int, frame: object) -> None:
            self.signum = signum
            raise KeyboardInterrupt

        try:
            self._old = signal.signal(signal.SIGTERM, interrupt)
        except ValueError:  # not the main thread (e.g. called from a thread): leave it alone
            self._old = None
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _print_skipped(skipped: list[Skip]) -> None:
    """One line per reason: the estimators it excludes, and on how many settings each."""
    by_reason: dict[str, dict[str, int]] = {}
    for skip in skipped:
        counts = by_reason.setdefault(skip.reason, {})
        counts[skip.estimator] = counts.get(skip.estimator, 0) + 1
    for reason, counts in sorted(by_reason.items()):
        if len(set(counts.values())) == 1:  # the usual case: excluded on the same settings
            count = next(iter(counts.values()))
            each = " each" if len(counts) > 1 else ""
            names = f"{', '.join(sorted(counts))} ({count} setting{'s' * (count > 1)}{each})"
        else:
            names = ", ".join(f"{name} ({n} settings)" for name, n in sorted(counts.items()))
        console.print(f"[yellow]skipped[/yellow] {names}: not applicable: {reason}",
                      highlight=False)


def _print_nonfinite(frame: pd.DataFrame) -> None:
    if "level" in frame:  # a tensor row counts its coordinates' again
        frame = frame[frame["level"] != "tensor"]
    if "nonfinite" in frame and frame["nonfinite"].sum() > 0:
        bad = frame[frame["nonfinite"] > 0].groupby("estimator")["nonfinite"].sum()
        for name, count in bad.items():
            console.print(f"[yellow]warning[/yellow] {name}: {count} non-finite estimates "
                          "(NaN/Inf) were excluded from the statistics")
    if "overflow" in frame:
        over = frame[frame["overflow"].fillna("") != ""]
        for name, part in over.groupby("estimator"):
            names = sorted({n for text in part["overflow"] for n in text.split(",")})
            console.print(f"[yellow]warning[/yellow] {name}: {', '.join(names)} overflowed "
                          f"float64 in {len(part)} rows (estimates too large to square); those "
                          "statistics are NaN or Inf", highlight=False)


def _print_unreliable(frame: pd.DataFrame) -> None:
    """One line per cell with numbers not reliable at its n (marked ! in the table): the reason
    of its row that needs the most estimates."""
    if "reliable" not in frame:
        return
    flagged = frame[~frame["reliable"].fillna(True).astype(bool)]
    for (estimator, settings), part in flagged.groupby(["estimator", "settings"], sort=True):
        worst = part.sort_values("samples_needed", ascending=False).iloc[0]
        console.print(f"[yellow]not reliable at this n[/yellow] {estimator} {settings} "
                      f"{worst['param']}: {escape(str(worst['reliability_reason']))}",
                      highlight=False, soft_wrap=True)


# 64-bit seeds exceed the 2^53 that JSON readers (JavaScript, jq) hold exactly.
STRING_COLUMNS = ("seed", "cell_seed")


def json_lines(frame: pd.DataFrame) -> list[str]:
    """One JSON object per row, floats in full (shortest round-trip) precision, NaN as null,
    infinities as the strings "inf"/"-inf", seeds as decimal strings."""
    import json
    import math

    import pandas as pd

    lines = []
    for record in frame.to_dict(orient="records"):
        row = {}
        for key, value in record.items():
            if value is pd.NA:
                value = None
            elif hasattr(value, "item"):  # a numpy scalar
                value = value.item()
            if isinstance(value, float) and not math.isfinite(value):
                value = None if math.isnan(value) else ("inf" if value > 0 else "-inf")
            elif key in STRING_COLUMNS and value is not None:
                value = str(value)
            row[key] = value
        lines.append(json.dumps(row, default=str, allow_nan=False))
    return lines
