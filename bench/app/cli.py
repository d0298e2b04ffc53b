"""The `bench` command line: parse, validate, print. The work happens in runner/store/report."""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

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
from rich.table import Table

from gradbench.app.errors import USER_ERRORS, BenchError

try:  # typer >= 0.20 carries its own copy of click's exceptions
    from typer._click import exceptions as click_errors
except ImportError:  # older typer runs on click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]
from gradbench.core.version import __version__

# Piped output (CI logs, files) gets a wide table instead of rich's 80-column default.
console = Console() if Console().is_terminal else Console(width=160)
err_console = Console(stderr=True)
class _Group(typer.core.TyperGroup):
    """Every error is one line on stderr, never a traceback or a box: BenchError and the other
    USER_ERRORS, and click's own usage errors (exit code 2); Ctrl-C exits 130 with a short note.
    """

    def invoke(self, ctx):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except USER_ERRORS as error:
            _error_line(str(error))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            # `run` explains how to resume where that applies; anywhere else there is nothing
            # to resume.
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(130) from None

    def main(self, args=None, prog_name=None, complete_var=None,  # type: ignore[override]
             standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as error:
            console.print(error.ctx.get_help() if error.ctx else str(error), highlight=False)
            code = 2
        except click_errors.UsageError as error:
            where = f"; see `{error.ctx.command_path} --help`" if error.ctx else ""
            _error_line(f"{' '.join(error.format_message().split()).rstrip('.')}{where}")
            code = 2
        except click_errors.ClickException as error:
            _error_line(" ".join(error.format_message().split()))
            code = error.exit_code
        except typer.Abort:
            err_console.print("interrupted", highlight=False)
            code = 130
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _error_line(text: str) -> None:
    err_console.print(f"[bold red]error:[/bold red] {escape(text)}", highlight=False,
                      soft_wrap=True)


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="gradbench: measure Monte Carlo gradient estimators' bias, variance and cost.",
)


def _version(value: bool) -> None:
    if value:
        console.print(f"gradbench {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """gradbench: measure Monte Carlo gradient estimators' bias, variance and cost."""


def _load_plugins(specs: list[str] | None) -> tuple[str, ...]:
    """Import each --plugin here (the workers import them again); one-line errors."""
    from gradbench.core.plugins import load_plugin

    for spec in specs or ():
        try:
            load_plugin(spec)
        except ValueError as error:
            raise BenchError(str(error)) from None
        except Exception as error:
            raise BenchError(f"--plugin {spec} failed to import: {type(error).__name__}: "
                             f"{error}") from None
    return tuple(specs or ())


PluginOption = Annotated[list[str] | None, typer.Option(
    "--plugin", help="Module name or .py path that registers estimators or suites (repeatable); "
    "imported here and in every worker.")]
class ShowFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command("list")
def list_command(plugin: PluginOption = None) -> None:
    """List estimators (family, unbiased?, what they apply to) and suites (settings, defaults)."""
    from gradbench.core.estimator import all_estimators
    from gradbench.core.plugins import failures
    from gradbench.core.suite import all_suites

    _load_plugins(plugin)

    estimators = Table(title="Estimators")
    for column in ("name", "family", "unbiased", "applies to", "evals/estimate", "hyperparameters"):
        estimators.add_column(column)
    for est in all_estimators().values():
        hypers = ", ".join(f"{h.name}={h.default}" for h in est.hyperparams.values()) or "-"
        estimators.add_row(f"{est.name} v{est.version}", est.family,
                           "yes" if est.unbiased else "[red]no[/red]",
                           est.applies_to, est.evals_text, hypers)
    console.print(estimators)
    suites = Table(title="Suites")
    for column in ("name", "description", "settings (default grid)", "offers", "samples"):
        suites.add_column(column)
    for suite in all_suites().values():
        settings = "\n".join(f"{s.name} = {', '.join(map(str, s.defaults))}"
                             for s in suite.settings.values())
        offers = "\n".join(kind.title for kind in suite.offers) or "-"
        suites.add_row(f"{suite.name} v{suite.version}", suite.description, settings, offers,
                       f"{suite.default_samples:,}")
    console.print(suites)
    for name, error in failures().items():
        err_console.print(f"[yellow]warning[/yellow] plugin {name} failed to load: {error}",
                          highlight=False, soft_wrap=True)


@app.command("run")
def run_command(
    suite: Annotated[str, typer.Option("--suite", "-s", help="Suite to run (see `bench list`).")],
    estimator: Annotated[list[str] | None, typer.Option(
        "--estimator", "-e", help="Estimator to include (repeatable); default: all that apply.")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="KEY=V1,V2,... replaces a setting's default values (repeatable; the run "
        "covers the cross product). Estimator hyperparameters too: draws=2,4 or "
        "score-function-loo.draws=2,4.")] = None,
    samples: Annotated[str | None, typer.Option(
        help="Independent gradient estimates per cell (default: the suite's); 4000 or 1e6.")
    ] = None,
    seed: Annotated[str, typer.Option(
        help="Base seed (a 64-bit integer); every cell derives its own from it.")] = "0",
    device: Annotated[list[str] | None, typer.Option(
        help="cpu or cuda (repeatable to run both).")] = None,
    dtype: Annotated[str, typer.Option(help="float64 or float32.")] = "float64",
    out: Annotated[Path, typer.Option(help="Results root folder.")] = Path("results"),
    resume: Annotated[str | None, typer.Option(
        help="Run id to complete: only its missing cells are computed.")] = None,
    threads: Annotated[int, typer.Option(
        help="torch intra-op threads (recorded with the results), at most the CPU count. 1 is "
        "fastest for cache-sized chunks and keeps timings stable on a shared machine.")] = 1,
    executor: Annotated[str, typer.Option(
        help="Where cells run: local (this process), processes (a pool of worker processes) or "
        "dask (a local Dask cluster, or the one at --scheduler; needs the dask extra: pip install "
        "dask distributed). Same numbers on each (CPU).")] = "local",
    workers: Annotated[int | None, typer.Option(
        help="Worker processes for --executor processes or dask (default: CPU cores).")] = None,
    scheduler: Annotated[str | None, typer.Option(
        help="Address of a running Dask scheduler (tcp://host:8786) for --executor dask.")
    ] = None,
    plugin: PluginOption = None,
) -> None:
    """Run a suite: every applicable estimator over its grid; write parquet; print a table."""
    from gradbench.app import planning
    from gradbench.app.executors import make_executor
    from gradbench.app.process import configure

    _check_threads(threads)
    configure(threads)
    plugins = _load_plugins(plugin)
    pool = make_executor(executor, workers=workers, threads=threads, scheduler=scheduler,
                         plugins=plugins)
    request = planning.RunRequest(
        suite=suite,
        estimators=tuple(estimator or ()),
        overrides=planning.parse_assignments(set_ or ()),
        samples=None if samples is None else _whole("--samples", samples),
        seed=_whole("--seed", seed),
        devices=tuple(device or ("cpu",)),
        dtype=dtype,
    )
    with _signals_as_interrupt() as received:
        try:
            outcome = _execute(request, out, resume, pool)
        except KeyboardInterrupt as stop:
            _interrupted(stop, received.signum)
    _report_run(outcome, suite)


def _check_threads(threads: int) -> None:
    cores = os.cpu_count() or 1
    if not 1 <= threads <= cores:
        raise BenchError(f"--threads {threads}: give 1 to {cores} (this machine's CPU count)")


def _whole(option: str, text: str) -> int:
    """An integer option written as 4000, 1e6 or 9223372036854775807 (the settings' parser)."""
    from gradbench.core.params import parse_value

    try:
        return parse_value(option, int, text)
    except ValueError as error:
        raise BenchError(str(error)) from None


def _execute(request, out: Path, resume: str | None, pool):
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
                             f"then resume: {_resume_command(stop.run_id)}") from None


class _EtaColumn(ProgressColumn):
    """Time left, from preflight.Eta (work-weighted), or '-' while unknown."""

    def render(self, task):  # type: ignore[override]
        from rich.text import Text

        from gradbench.app.preflight import duration

        eta = task.fields.get("eta")
        seconds = eta.remaining_s() if eta is not None else None
        return Text(f"ETA {duration(seconds)}" if seconds is not None else "ETA -",
                    style="progress.remaining")


def _interrupted(stop: KeyboardInterrupt, signum: int) -> None:
    """Ctrl-C or SIGTERM: say how to resume where there is a run to resume; exit 128 + signal."""
    from gradbench.app.execute import RunInterrupted

    if isinstance(stop, RunInterrupted):
        err_console.print(f"interrupted: {stop.written} of {stop.total} cells are written in "
                          f"{stop.run_dir}; to compute only the missing ones, run:\n  "
                          f"{_resume_command(stop.run_id)}", highlight=False, soft_wrap=True)
    else:
        err_console.print("interrupted before any cell was written: nothing to resume",
                          highlight=False)
    raise typer.Exit(128 + signum)


def _report_run(outcome, suite: str) -> None:
    """The table, the notes under it, what was written, and the failures (exit 1 if any)."""
    from gradbench.app.table import constants_line, summary_table
    from gradbench.results import store

    for cell_id, reason in outcome.set_aside.items():
        err_console.print(f"[yellow]recomputed[/yellow] cell {cell_id}: its file {reason}; set "
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
        console.print(f"wrote {len(frame)} rows, {outcome.written} cells{note}: "
                      f"{outcome.run_dir} (every statistic: bench show {outcome.run_dir})",
                      highlight=False, soft_wrap=True)
    if outcome.failed:
        _report_failures(outcome)


def _report_failures(outcome) -> None:
    from gradbench.results import store

    for failure in outcome.failed:
        where = f" (details: {failure['details']})" if failure.get("details") else ""
        err_console.print(f"[bold red]failed[/bold red] {failure['estimator']} "
                          f"{failure['settings']} {failure['hyperparams'] or ''} on "
                          f"{failure['device']}: {escape(failure['reason'])}{where}",
                          highlight=False, soft_wrap=True)
    err_console.print(f"{len(outcome.failed)} of {len(outcome.plan.cells)} cells failed "
                      f"(listed in {store.run_json_path(outcome.run_dir)}); the others are "
                      f"kept; after a fix, `{_resume_command(outcome.run_id)}` runs only "
                      "the failed ones", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _resume_command(run_id: str) -> str:
    """The command line that was run, with --resume RUN_ID (once)."""
    import shlex

    args = sys.argv[1:]
    if not any(a == "--resume" or a.startswith("--resume=") for a in args):
        args = [*args, "--resume", run_id]
    return shlex.join(["bench", *args])


class _signals_as_interrupt:
    """`kill PID` (SIGTERM) ends a run like Ctrl-C: finished cells kept, resume command shown;
    `signum` says which signal it was (the exit code is 128 + signum: 130 or 143)."""

    def __enter__(self) -> _signals_as_interrupt:
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


def _value(value: object) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:g}"
    return str(value)


def _print_skipped(skipped) -> None:
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


def _print_nonfinite(frame) -> None:
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


@app.command("show")
def show_command(
    results: Annotated[Path, typer.Argument(help="A results .parquet file or a results folder.")],
    format: Annotated[ShowFormat, typer.Option("--format", "-f")] = ShowFormat.table,
) -> None:
    """Show results: every statistic ± SE per cell and parameter, or every tidy row as CSV or
    JSON lines (full precision; seeds as strings)."""
    from gradbench.app.table import constants_line, full_table
    from gradbench.results import store

    frame = store.read_results(results)
    if format is ShowFormat.table:
        for suite, part in frame.groupby("suite", sort=True):
            constants = constants_line(part)
            if constants:
                console.print(constants, highlight=False)
            console.print(full_table(part, title=str(suite)))
    elif format is ShowFormat.csv:
        frame.to_csv(sys.stdout, index=False)
    else:
        for line in json_lines(frame):
            sys.stdout.write(line + "\n")


# 64-bit seeds exceed the 2^53 that JSON readers (JavaScript, jq) hold exactly.
STRING_COLUMNS = ("seed", "cell_seed")


def json_lines(frame) -> list[str]:
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


@app.command("check")
def check_command(
    current: Annotated[Path, typer.Argument(
        help="Results to check: a .parquet file or a run/results folder.")],
    baseline: Annotated[Path, typer.Option(
        "--baseline", "-b", help="Results to compare with (e.g. results/baseline).")],
    tolerance: Annotated[float | None, typer.Option(
        help="Variance ratio current/baseline that a significant increase must exceed to fail "
        "(default 1.15).")] = None,
    alpha: Annotated[float | None, typer.Option(
        help="Level of the tests: the chance that a clean run fails, Benjamini-Hochberg over "
        "all rows (default 0.005).")] = None,
    markdown: Annotated[Path | None, typer.Option(
        help="Also write a Markdown summary here (e.g. $GITHUB_STEP_SUMMARY).")] = None,
    allow_missing: Annotated[bool, typer.Option(
        help="Baseline cells absent from CURRENT are reported but do not fail.")] = False,
) -> None:
    """Statistical regression gate: exit 1 if a variance rose significantly above --tolerance,
    an unbiased estimator shows significant bias, or a baseline cell is missing; 0 if clean."""
    from gradbench.app import check, check_summary
    from gradbench.results import store

    result = check.compare(
        store.read_results(current), store.read_results(baseline),
        tolerance=check.DEFAULT_TOLERANCE if tolerance is None else tolerance,
        alpha=check.DEFAULT_ALPHA if alpha is None else alpha,
        allow_missing=allow_missing,
    )
    if markdown is not None:
        try:
            markdown.write_text(check_summary.to_markdown(result))
        except OSError as error:
            raise BenchError(f"cannot write --markdown {markdown}: {error.strerror or error}; "
                             "choose a writable file") from None
    cells = check_summary.failing_cells(result)
    if len(cells):
        table = Table(title="regressions (worst coordinate of each cell and parameter)",
                      caption="ratio: variance current/baseline; z: one-sided log-ratio test; "
                      "q: Benjamini-Hochberg adjusted", caption_justify="left")
        for column in ("suite", "settings", "estimator", "param", "verdict", "coords",
                       "ratio", "z", "q", "bias ± SE", "bias z"):
            table.add_column(column, justify="left" if column in ("settings",) else "right")
        for row in cells.head(60).itertuples(index=False):
            table.add_row(row.suite, row.settings, row.estimator, row.param,
                          f"[red]{row.verdict}[/red]", f"{row.coords}/{row.of}",
                          _num(row.ratio), _num(row.z_variance), _num(row.q_variance, 2),
                          f"{_num(row.bias_c)} ± {_num(row.bias_se_c, 2)}",
                          _num(row.z_bias))
        console.print(table)
        if len(cells) > 60:
            console.print(f"... and {len(cells) - 60} more (see --markdown)")
    for frame, title in ((result.missing, "missing from current"),
                         (result.new, "new in current (informational)"),
                         (result.changed, "not comparable: version changed (informational)")):
        if len(frame):
            listing = Table(title=f"{title}: {len(frame)} cells")
            for column in frame.columns:
                listing.add_column(column)
            for row in frame.head(30).itertuples(index=False):
                listing.add_row(*[str(v) for v in row])
            console.print(listing)
    summary = Table(title="per estimator")
    for column in ("estimator", "cells", "rows", "median ratio", "variance regr.", "bias regr."):
        summary.add_column(column, justify="left" if column == "estimator" else "right")
    for row in check_summary.per_estimator(result).itertuples(index=False):
        summary.add_row(row.estimator, str(row.cells), str(row.rows), _num(row.median_ratio),
                        str(row.variance_regressions), str(row.bias_regressions))
    console.print(summary)
    for warning in result.warnings:
        console.print(f"[yellow]warning[/yellow] {warning}", highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    *lines, status = check_summary.summary_lines(result)
    for line in lines:
        console.print(line, highlight=False)
    if result.failed:
        console.print(f"[bold red]{status}[/bold red]")
        raise typer.Exit(1)
    console.print(f"[bold green]{status}[/bold green]")


def _num(value: float, digits: int = 3) -> str:
    return "" if value is None or value != value else f"{value:.{digits}g}"


@app.command("report")
def report_command(
    results: Annotated[list[Path], typer.Argument(
        help="Result .parquet files or folders: several runs, suites and devices combine.")],
    out: Annotated[Path | None, typer.Option(
        help="Report folder (default: reports/<run id>, or reports/<timestamp> for several "
        "runs).")] = None,
) -> None:
    """Write a comparison report: PNG figures, index.html, report.md and CSV tables."""
    from gradbench.app.report.builder import build_report

    folder = build_report(results, out)
    console.print(f"wrote report: {folder / 'index.html'}")


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
