"""The `bench` command line: parse, validate, print. The work happens in runner/store/report."""

from __future__ import annotations

import contextlib
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gradbench.app.cli_options import load_plugins, start_executor, whole_number
from gradbench.app.cli_output import (
    console,
    err_console,
    error_line,
    execute_with_progress,
    interrupted,
    json_lines,
    report_run,
    resume_command,
    signals_as_interrupt,
)
from gradbench.app.errors import USER_ERRORS
from gradbench.core.version import __version__

try:  # typer >= 0.20 carries its own copy of click's exceptions
    from typer._click import exceptions as click_errors
except ImportError:  # older typer runs on click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]


class _Group(typer.core.TyperGroup):
    """Every error is one line on stderr, never a traceback or a box: BenchError and the other
    USER_ERRORS, and click's own usage errors (exit code 2); Ctrl-C exits 130 with a short note.
    """

    def invoke(self, ctx):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except USER_ERRORS as error:
            error_line(str(error))
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
            error_line(f"{' '.join(error.format_message().split()).rstrip('.')}{where}")
            code = 2
        except click_errors.ClickException as error:
            error_line(" ".join(error.format_message().split()))
            code = error.exit_code
        except typer.Abort:
            err_console.print("interrupted", highlight=False)
            code = 130
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


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

    load_plugins(plugin)

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
        trainable = "\n(bench train)" if suite.trainable else ""
        suites.add_row(f"{suite.name} v{suite.version}{trainable}", suite.description, settings,
                       offers, f"{suite.default_samples:,}")
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
    coords: Annotated[int, typer.Option(
        help="Per-coordinate rows for the first N coordinates of each parameter (0: none); "
        "every parameter always gets a `tensor` row of aggregates (total variance, SNR, "
        "cosine to the truth, ...).")] = 1000,
    plugin: PluginOption = None,
) -> None:
    """Run a suite: every applicable estimator over its grid; write parquet; print a table."""
    from gradbench.app import planning

    pool = start_executor(executor, workers=workers, threads=threads, scheduler=scheduler,
                          plugins=plugin)
    request = planning.RunRequest(
        suite=suite,
        estimators=tuple(estimator or ()),
        overrides=planning.parse_assignments(set_ or ()),
        samples=None if samples is None else whole_number("--samples", samples),
        seed=whole_number("--seed", seed),
        devices=tuple(device or ("cpu",)),
        dtype=dtype,
        coords=coords,
    )
    with signals_as_interrupt() as received:
        try:
            outcome = execute_with_progress(request, out, resume, pool)
        except KeyboardInterrupt as stop:
            interrupted(stop, received.signum)
    report_run(outcome, suite)


@app.command("train")
def train_command(
    suite: Annotated[str, typer.Option("--suite", "-s", help="A trainable suite (see `bench "
                                       "list`).")],
    estimator: Annotated[list[str] | None, typer.Option(
        "--estimator", "-e", help="Estimator to train with (repeatable); default: the suite's "
        "choice, else every unbiased one that applies.")] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps per trajectory.")] = 1000,
    seeds: Annotated[int, typer.Option(help="Trajectories per estimator (seeds --seed, "
                                       "--seed + 1, ...).")] = 3,
    eval_every: Annotated[int, typer.Option(help="Steps between evaluation points.")] = 100,
    lr: Annotated[float | None, typer.Option(
        "--lr", help="Learning rate (default: the suite's, else 1e-3).")] = None,
    optimizer: Annotated[str | None, typer.Option(
        help="sgd or adam (default: the suite's, else adam).")] = None,
    variance_draws: Annotated[int, typer.Option(
        help="Gradient estimates per variance measurement (at each evaluation point).")] = 100,
    refit_every: Annotated[int, typer.Option(
        help="Steps between refits of an estimator's warm-up (relax's surrogate, a control "
        "variate); counted as training.")] = 500,
    basket: Annotated[bool, typer.Option(
        "--basket", help="Also measure every listed estimator's variance at each trajectory's "
        "evaluation points.")] = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="KEY=V1,V2 sets a suite setting (default: the first of its default grid) "
        "or an estimator hyperparameter, as in bench run.")] = None,
    seed: Annotated[int, typer.Option(help="First seed.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float64 or float32.")] = "float64",
    out: Annotated[Path, typer.Option(help="Results root folder.")] = Path("results"),
    resume: Annotated[str | None, typer.Option(
        help="Run id to complete: only its missing trajectories are trained.")] = None,
    threads: Annotated[int, typer.Option(help="torch intra-op threads.")] = 1,
    executor: Annotated[str, typer.Option(
        help="Where trajectories run: local, processes or dask (as bench run).")] = "local",
    workers: Annotated[int | None, typer.Option(
        help="Worker processes for --executor processes or dask.")] = None,
    scheduler: Annotated[str | None, typer.Option(
        help="Address of a running Dask scheduler for --executor dask.")] = None,
    plugin: PluginOption = None,
) -> None:
    """Train a suite's model with each estimator's gradients: objective, evaluations and gradient
    variance along the trajectories; write parquet; print the final values."""
    from gradbench.app import planning
    from gradbench.app.train_console import train
    from gradbench.app.train_plan import TrainRequest

    pool = start_executor(executor, workers=workers, threads=threads, scheduler=scheduler,
                          plugins=plugin)
    request = TrainRequest(
        suite=suite, estimators=tuple(estimator or ()),
        overrides=planning.parse_assignments(set_ or ()), steps=steps, seeds=seeds, seed=seed,
        eval_every=eval_every, refit_every=refit_every, learning_rate=lr, optimizer=optimizer,
        variance_draws=variance_draws, basket=basket, device=device, dtype=dtype)
    with signals_as_interrupt() as received:
        code = train(request, out, resume, pool, console, err_console, contextlib.nullcontext,
                     resume_command)
    if code:
        # Interrupted: 128 + the signal, as bench run (130 for Ctrl-C, 143 for SIGTERM).
        raise typer.Exit(128 + received.signum if code == 130 else code)


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
        "all rows (default 0.001).")] = None,
    markdown: Annotated[Path | None, typer.Option(
        help="Also write a Markdown summary here (e.g. $GITHUB_STEP_SUMMARY).")] = None,
    allow_missing: Annotated[bool, typer.Option(
        help="Baseline cells absent from CURRENT are reported but do not fail.")] = False,
) -> None:
    """Statistical regression gate: exit 1 if a variance rose significantly above --tolerance,
    an unbiased estimator shows significant bias, or a baseline cell is missing; 0 if clean."""
    from gradbench.app import check
    from gradbench.app.check_console import print_check, write_check_markdown
    from gradbench.results import store

    result = check.compare(
        store.read_results(current), store.read_results(baseline),
        tolerance=check.DEFAULT_TOLERANCE if tolerance is None else tolerance,
        alpha=check.DEFAULT_ALPHA if alpha is None else alpha,
        allow_missing=allow_missing,
    )
    if markdown is not None:
        write_check_markdown(result, markdown)
    print_check(result)
    if result.failed:
        raise typer.Exit(1)


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
