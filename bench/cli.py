"""The `bench` command line: parse, validate, print. The work happens in runner/store/report."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.errors import BenchError

# Piped output (CI logs, files) gets a wide table instead of rich's 80-column default.
console = Console() if Console().is_terminal else Console(width=160)
err_console = Console(stderr=True)
class _Group(typer.core.TyperGroup):
    """Turns BenchError into one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except BenchError as error:
            err_console.print(f"[bold red]error:[/bold red] {error}", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: finished cells are kept; rerun the same command "
                              "with --resume RUN_ID to compute only the missing ones")
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="gradbench: measure Monte Carlo gradient estimators' bias, variance and cost.",
)
class ShowFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command("list")
def list_command() -> None:
    """List estimators (family, unbiased?, what they apply to) and suites (settings, defaults)."""
    from estimators import all_estimators
    from suites import all_suites

    estimators = Table(title="Estimators")
    for column in ("name", "family", "unbiased", "applies to", "evals/estimate", "hyperparameters"):
        estimators.add_column(column)
    for est in all_estimators().values():
        hypers = ", ".join(f"{h.name}={h.default}" for h in est.hyperparams.values()) or "-"
        cost = est.evals.__doc__ or ""
        estimators.add_row(est.name, est.family, "yes" if est.unbiased else "[red]no[/red]",
                           est.applies_to, cost.strip() or _evals_text(est), hypers)
    console.print(estimators)
    suites = Table(title="Suites")
    for column in ("name", "description", "settings (default grid)", "samples"):
        suites.add_column(column)
    for suite in all_suites().values():
        settings = "\n".join(f"{s.name} = {', '.join(map(str, s.default))}"
                             for s in suite.settings.values())
        suites.add_row(suite.name, suite.description, settings, f"{suite.default_samples:,}")
    console.print(suites)


def _evals_text(est) -> str:
    try:
        return f"{float(est.evals(None)):g}"
    except Exception:  # a cost that depends on the problem or hyperparameters
        return "varies"


@app.command("run")
def run_command(
    suite: Annotated[str, typer.Option("--suite", "-s", help="Suite to run (see `bench list`).")],
    estimator: Annotated[list[str] | None, typer.Option(
        "--estimator", "-e", help="Estimator to include (repeatable); default: all that apply.")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="KEY=V1,V2,... replaces a setting's default values (repeatable; the run "
        "covers the cross product). Estimator hyperparameters too: K=2,4 or "
        "score-function-loo.K=2,4.")] = None,
    samples: Annotated[int | None, typer.Option(
        help="Independent gradient estimates per cell (default: the suite's).")] = None,
    seed: Annotated[int, typer.Option(help="Base seed; every cell derives its own from it.")] = 0,
    device: Annotated[list[str] | None, typer.Option(
        help="cpu or cuda (repeatable to run both).")] = None,
    dtype: Annotated[str, typer.Option(help="float64 or float32.")] = "float64",
    out: Annotated[Path, typer.Option(help="Results root folder.")] = Path("results"),
    resume: Annotated[str | None, typer.Option(
        help="Run id to complete: only its missing cells are computed.")] = None,
    threads: Annotated[int, typer.Option(
        help="torch intra-op threads (recorded with the results). 1 is fastest for cache-sized "
        "chunks and keeps timings stable on a shared machine.")] = 1,
) -> None:
    """Run a suite: every applicable estimator over its grid; write parquet; print a table."""
    import torch

    from bench import runner, store
    from bench.table import summary_table

    if threads < 1:
        raise BenchError(f"--threads {threads}: need at least 1")
    torch.set_num_threads(threads)
    request = runner.RunRequest(
        suite=suite,
        estimators=tuple(estimator or ()),
        overrides=runner.parse_assignments(set_ or ()),
        samples=samples,
        seed=seed,
        devices=tuple(device or ("cpu",)),
        dtype=dtype,
    )
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[cell]}"))
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(f"{suite}", total=None, cell="planning")

        def on_cell(cell: runner.Cell, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total,
                            cell=f"{cell.estimator} {dict(cell.settings)}")

        outcome = runner.execute(request, out, command=store.command_line(), run_id=resume,
                                 on_cell=on_cell)
    frame = store.read_results(outcome.run_dir)
    console.print(summary_table(frame, title=f"{suite} ({outcome.run_id})"))
    _print_skipped(outcome.plan.skipped)
    _print_nonfinite(frame)
    note = f" ({outcome.reused} cells reused)" if outcome.reused else ""
    console.print(f"wrote {len(frame)} rows, {len(outcome.plan.cells)} cells{note}: "
                  f"{outcome.run_dir}")


def _print_skipped(skipped) -> None:
    reasons: dict[tuple[str, str], int] = {}
    for skip in skipped:
        key = (skip.estimator, skip.reason)
        reasons[key] = reasons.get(key, 0) + 1
    for (name, reason), count in sorted(reasons.items()):
        console.print(f"[yellow]skipped[/yellow] {name} ({count} settings): "
                      f"not applicable: {reason}")


def _print_nonfinite(frame) -> None:
    if "nonfinite" in frame and frame["nonfinite"].sum() > 0:
        bad = frame[frame["nonfinite"] > 0].groupby("estimator")["nonfinite"].sum()
        for name, count in bad.items():
            console.print(f"[yellow]warning[/yellow] {name}: {count} non-finite estimates "
                          "(NaN/Inf) were excluded from the statistics")


@app.command("show")
def show_command(
    results: Annotated[Path, typer.Argument(help="A results .parquet file or a results folder.")],
    format: Annotated[ShowFormat, typer.Option("--format", "-f")] = ShowFormat.table,
) -> None:
    """Show results: a summary table, or every tidy row as CSV or JSON."""
    from bench import store
    from bench.table import summary_table

    frame = store.read_results(results)
    if format is ShowFormat.table:
        for suite, part in frame.groupby("suite", sort=True):
            console.print(summary_table(part, title=str(suite)))
    elif format is ShowFormat.csv:
        frame.to_csv(sys.stdout, index=False)
    else:
        sys.stdout.write(frame.to_json(orient="records", lines=True))


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
