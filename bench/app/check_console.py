"""`bench check` at the console: the failing cells, the cells that could not be tested, the
cells missing, new or not comparable, the per-estimator summary, the warnings and notes, and
the verdict; and the optional Markdown summary (e.g. for $GITHUB_STEP_SUMMARY)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from gradbench.app import check_summary
from gradbench.app.check import CheckResult
from gradbench.app.cli_output import console
from gradbench.app.errors import BenchError

SHOWN_FAILURES = 60  # rows per table at the console; --markdown has them all
SHOWN_OTHERS = 30


def write_check_markdown(result: CheckResult, path: Path) -> None:
    try:
        path.write_text(check_summary.to_markdown(result))
    except OSError as error:
        raise BenchError(f"cannot write --markdown {path}: {error.strerror or error}; "
                         "choose a writable file") from None


def print_check(result: CheckResult) -> None:
    """Everything bench check says, the verdict last (red when it failed, green when clean)."""
    _print_failures(result)
    _print_untestable(result)
    _print_listings(result)
    _print_per_estimator(result)
    for warning in result.warnings:
        console.print(f"[yellow]warning[/yellow] {warning}", highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    *lines, status = check_summary.summary_lines(result)
    for line in lines:
        console.print(line, highlight=False)
    colour = "red" if result.failed else "green"
    console.print(f"[bold {colour}]{status}[/bold {colour}]")


def _print_failures(result: CheckResult) -> None:
    cells = check_summary.failing_cells(result)
    if not len(cells):
        return
    table = Table(title="regressions (worst coordinate of each cell and parameter)",
                  caption="ratio: variance current/baseline; z: one-sided log-ratio test; "
                  "q: Benjamini-Hochberg adjusted", caption_justify="left")
    for column in ("suite", "settings", "estimator", "param", "verdict", "coords",
                   "ratio", "z", "q", "bias ± SE", "bias z"):
        table.add_column(column, justify="left" if column in ("settings",) else "right")
    for row in cells.head(SHOWN_FAILURES).itertuples(index=False):
        table.add_row(row.suite, row.settings, row.estimator, row.param,
                      f"[red]{row.verdict}[/red]", f"{row.coords}/{row.of}",
                      _num(row.ratio), _num(row.z_variance), _num(row.q_variance, 2),
                      f"{_num(row.bias_c)} ± {_num(row.bias_se_c, 2)}",
                      _num(row.z_bias))
    console.print(table)
    if len(cells) > SHOWN_FAILURES:
        console.print(f"... and {len(cells) - SHOWN_FAILURES} more (see --markdown)")


def _print_untestable(result: CheckResult) -> None:
    untestable = check_summary.untestable_cells(result)
    for _, row in untestable.head(SHOWN_OTHERS).iterrows():
        console.print(f"[yellow]{check_summary.untestable_line(row)}[/yellow]",
                      highlight=False, soft_wrap=True)
    if len(untestable) > SHOWN_OTHERS:
        console.print(f"... and {len(untestable) - SHOWN_OTHERS} more not testable "
                      "(see --markdown)")


def _print_listings(result: CheckResult) -> None:
    for frame, title in ((result.missing, "missing from current"),
                         (result.new, "new in current (informational)"),
                         (result.changed, "not comparable: version changed (informational)")):
        if len(frame):
            listing = Table(title=f"{title}: {len(frame)} cells")
            for column in frame.columns:
                listing.add_column(column)
            for row in frame.head(SHOWN_OTHERS).itertuples(index=False):
                listing.add_row(*[str(v) for v in row])
            console.print(listing)


def _print_per_estimator(result: CheckResult) -> None:
    summary = Table(title="per estimator")
    for column in ("estimator", "cells", "rows", "median ratio", "variance regr.", "bias regr."):
        summary.add_column(column, justify="left" if column == "estimator" else "right")
    for row in check_summary.per_estimator(result).itertuples(index=False):
        summary.add_row(row.estimator, str(row.cells), str(row.rows), _num(row.median_ratio),
                        str(row.variance_regressions), str(row.bias_regressions))
    console.print(summary)


def _num(value: float, digits: int = 3) -> str:
    return "" if value is None or value != value else f"{value:.{digits}g}"
