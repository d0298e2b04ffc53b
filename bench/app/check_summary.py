"""Summaries of a `bench check` result: the failing cells, a per-estimator table, plain
sentences, and Markdown for CI job pages (the CLI and the pytest plugin print these)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gradbench.app.check import (
    BIAS,
    NONFINITE_ROSE,
    NOT_FINITE,
    NOT_TESTABLE,
    VALUE_CHANGED,
    VARIANCE,
    VARIANCE_AND_BIAS,
    VARIANCE_APPEARED,
    CheckResult,
)


def failing_cells(result: CheckResult) -> pd.DataFrame:
    """Regressions grouped by (cell, param): the worst row of each (largest |z|, exact verdicts
    first), with how many coordinates regressed."""
    reg = result.regressions
    columns = ["suite", "settings", "estimator", "device", "dtype", "param", "verdict",
               "coords", "of", "coord", "ratio", "z_variance", "q_variance", "bias_c",
               "bias_se_c", "z_bias", "q_bias"]
    if len(reg) == 0:
        return pd.DataFrame(columns=columns)
    totals = result.rows.groupby(["_cell", "param"]).size().rename("of")
    ranked = reg.assign(
        _rank=np.where(reg["exact"] != "", np.inf,
                       np.fmax(reg["z_variance"].fillna(-np.inf), reg["z_bias"].fillna(-np.inf))))
    ranked = ranked.sort_values("_rank", ascending=False, kind="stable")
    worst = ranked.groupby(["_cell", "param"], sort=False).head(1).set_index(["_cell", "param"])
    worst["coords"] = reg.groupby(["_cell", "param"]).size()
    worst = worst.join(totals).reset_index()
    return worst[columns].reset_index(drop=True)


def untestable_cells(result: CheckResult) -> pd.DataFrame:
    """Rows with a test skipped because a number is not reliable at its n, grouped by (cell,
    param): the reason of the row needing the most estimates, and that number."""
    columns = ["suite", "settings", "estimator", "device", "dtype", "param", "rows", "reason",
               "samples_needed"]
    rows = result.untestable
    if len(rows) == 0:
        return pd.DataFrame(columns=columns)
    needed = rows["samples_needed_c"].fillna(rows.get("samples_needed_b")).fillna(0.0)
    ranked = rows.assign(_needed=needed).sort_values("_needed", ascending=False, kind="stable")
    worst = ranked.groupby(["_cell", "param"], sort=False).head(1).set_index(["_cell", "param"])
    worst["rows"] = rows.groupby(["_cell", "param"]).size()
    worst = worst.reset_index().rename(columns={"untestable": "reason",
                                                "_needed": "samples_needed"})
    worst["samples_needed"] = worst["samples_needed"].where(worst["samples_needed"] > 0)
    return worst[columns].reset_index(drop=True)


def untestable_line(row: pd.Series) -> str:
    """One not-testable (cell, param) as the gate reports it."""
    return (f"{row['suite']} {row['settings']} {row['estimator']} {row['param']}: "
            f"{NOT_TESTABLE} ({row['reason']}; {row['rows']} row(s))")


def per_estimator(result: CheckResult) -> pd.DataFrame:
    """Per estimator: cells and rows compared, median variance ratio, regressions."""
    rows = result.rows
    grouped = rows.groupby("estimator", sort=True)
    out = pd.DataFrame({
        "cells": grouped["_cell"].nunique(),
        "rows": grouped.size(),
        "median_ratio": grouped["ratio"].median(),
        "variance_regressions": grouped["verdict"].apply(
            lambda v: int(v.isin([VARIANCE, VARIANCE_AND_BIAS, VARIANCE_APPEARED,
                                  VALUE_CHANGED, NOT_FINITE, NONFINITE_ROSE]).sum())),
        "bias_regressions": grouped["verdict"].apply(
            lambda v: int(v.isin([BIAS, VARIANCE_AND_BIAS]).sum())),
        "not_testable": grouped["untestable"].apply(lambda v: int((v != "").sum())),
    })
    return out.reset_index()


def summary_lines(result: CheckResult) -> list[str]:
    """The check's outcome in a few plain sentences (shared by the terminal and Markdown)."""
    matched = result.matched
    reg = result.regressions
    cells = failing_cells(result)
    lines = [
        f"compared {matched['_cell'].nunique()} cells ({len(matched)} rows) with the baseline; "
        f"{result.tests} tests, Benjamini-Hochberg per estimator and test at total "
        f"alpha={result.alpha:g}, variance "
        f"tolerance {result.tolerance:g}x",
        f"regressions: {len(reg)} rows in {len(cells)} (cell, param) pairs"
        + (f" ({', '.join(f'{k}: {v}' for k, v in reg['verdict'].value_counts().items())})"
           if len(reg) else ""),
    ]
    untestable = untestable_cells(result)
    if len(untestable):
        lines.append(f"{NOT_TESTABLE}: {len(result.untestable)} rows in {len(untestable)} "
                     "(cell, param) pairs, neither passed nor failed (listed with the reason)")
    if len(result.missing):
        lines.append(f"missing from current: {len(result.missing)} cells"
                     + (" (allowed)" if result.allow_missing else " (fails the check; "
                        "--allow-missing to accept)"))
    if len(result.new):
        lines.append(f"new in current (not in the baseline): {len(result.new)} cells")
    if len(result.changed):
        reasons = sorted(set(result.changed["reason"]))
        lines.append(f"not comparable (version changed; refresh the baseline): "
                     f"{len(result.changed)} cells ({'; '.join(reasons[:3])}"
                     f"{', ...' if len(reasons) > 3 else ''})")
    lines.append("FAILED" if result.failed else "passed")
    return lines


def _md_table(frame: pd.DataFrame) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.4g}"
        return str(value).replace("|", "\\|")

    head = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def to_markdown(result: CheckResult, limit: int = 50) -> str:
    """A Markdown summary for CI job summaries ($GITHUB_STEP_SUMMARY)."""
    status = "FAILED" if result.failed else "passed"
    parts = [f"## gradbench check: {status}", ""]
    parts += [f"- {line}" for line in summary_lines(result)[:-1]]
    for warning in result.warnings:
        parts.append(f"- warning: {warning}")
    for note in result.notes:
        parts.append(f"- note: {note}")
    cells = failing_cells(result)
    if len(cells):
        parts += ["", "### Regressions", "", _md_table(cells.head(limit))]
        if len(cells) > limit:
            parts.append(f"\n... and {len(cells) - limit} more")
    untestable = untestable_cells(result)
    if len(untestable):
        parts += ["", f"### {NOT_TESTABLE.capitalize()}", "",
                  _md_table(untestable.head(limit))]
        if len(untestable) > limit:
            parts.append(f"\n... and {len(untestable) - limit} more")
    if len(result.missing):
        parts += ["", "### Missing from current", "", _md_table(result.missing.head(limit))]
    if len(result.new):
        parts += ["", "### New in current", "", _md_table(result.new.head(limit))]
    if len(result.changed):
        parts += ["", "### Not comparable (version changed)", "",
                  _md_table(result.changed.head(limit))]
    parts += ["", "### Per estimator", "", _md_table(per_estimator(result))]
    return "\n".join(parts) + "\n"
