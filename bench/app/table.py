"""Rendering tidy results as a terminal table: one line per (setting, estimator, param)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from rich.table import Table

from gradbench.results import decisions
from gradbench.results.store import hyperparam_columns, setting_columns

UNRELIABLE = " [yellow]![/yellow]"  # the marker of a number not reliable at its n


def fmt(value: float, se: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    if se is None or math.isnan(se):
        return text
    return f"{text} ± {se:.2g}"


def varying_columns(frame: pd.DataFrame, candidates: list[str]) -> list[str]:
    return [c for c in candidates if c in frame and frame[c].nunique(dropna=True) > 1]


def summary_table(frame: pd.DataFrame, title: str = "") -> Table:
    """Coordinate 0 of each parameter per cell (all coordinates are in the parquet)."""
    frame = frame.assign(biased_cell=biased_cells(frame))
    first = frame[_shown_rows(frame)]
    keys = varying_columns(first, ["suite", *setting_columns(first),
                                   *hyperparam_columns(first), "device"])
    first = first.sort_values([*keys, "estimator", "param"], kind="stable")
    table = Table(title=title or None, caption="coordinate 0 of each parameter (or, written "
                  "without coordinate rows, its tensor row: total variance, worst coordinate's "
                  "bias); ± one standard error; bias in red where the cell is measurably "
                  "biased (some coordinate beyond max(4, Bonferroni) SE and rounding); ! after "
                  "a number: not reliable "
                  "at this n (heavy tail or rare states; the results' reliability_reason says "
                  "why and about how many estimates would do); time is the estimator's alone, "
                  "per cell", caption_justify="left")
    for key in keys:
        table.add_column(key, justify="right")
    table.add_column("estimator")
    table.add_column("param")
    table.add_column("truth", justify="right")
    table.add_column("bias ± SE", justify="right")
    table.add_column("variance ± SE", justify="right")
    table.add_column("evals", justify="right")
    table.add_column("s/estimate ± SE", justify="right")
    table.add_column("estimates/s ± SE", justify="right")
    for row in first.itertuples(index=False):
        r = row._asdict()
        bias = fmt(r["bias"], r["bias_se"])
        if r["biased_cell"]:
            bias = f"[red]{bias}[/red]"
        if _flagged(r.get("mean_reliable")):
            bias += UNRELIABLE
        variance = fmt(r["variance"], r["variance_se"])
        if _flagged(r.get("reliable")):
            variance += UNRELIABLE
        if r.get("nonfinite", 0):
            variance += f" [yellow]({r['nonfinite']} non-finite dropped)[/yellow]"
        table.add_row(
            *[_cell(r[k]) for k in keys],
            r["estimator"], r["param"], fmt(r["truth"]), bias, variance,
            f"{r['evals_per_estimate']:g}",
            fmt(r["seconds_per_estimate"], r.get("seconds_per_estimate_se")),
            rate(r["seconds_per_estimate"], r.get("seconds_per_estimate_se")),
        )
    return table


def _shown_rows(frame: pd.DataFrame) -> np.ndarray:
    """Coordinate 0 of each parameter, or its tensor row where no coordinate row was written
    (`bench run --coords 0`)."""
    if "level" not in frame:
        return (frame["coord"] == 0).to_numpy()
    tensor = (frame["level"] == "tensor").to_numpy()
    listed = frame.loc[~tensor, ["cell_id", "param"]].drop_duplicates()
    keys = pd.MultiIndex.from_frame(frame[["cell_id", "param"]])
    has_coords = keys.isin(pd.MultiIndex.from_frame(listed))
    return ((frame["coord"] == 0).to_numpy() & ~tensor) | (tensor & ~has_coords)


def biased_cells(frame: pd.DataFrame) -> np.ndarray:
    """Per row: whether its cell is measurably biased (decisions.bias_threshold over the cell's
    tested coordinates; cells keyed by cell_id)."""
    z = decisions.bias_z(frame["bias"].to_numpy(np.float64), frame["bias_se"].to_numpy(np.float64),
                         frame["truth"].to_numpy(np.float64), frame["mean"].to_numpy(np.float64),
                         frame["dtype"].to_numpy())
    work = pd.DataFrame({"cell": frame["cell_id"].to_numpy(), "z": z, "tested": ~np.isnan(z)})
    grouped = work.groupby("cell", sort=False)
    worst = grouped["z"].transform("max").to_numpy()
    tests = grouped["tested"].transform("sum").to_numpy()
    threshold = np.array([decisions.bias_threshold(int(m)) for m in tests])
    return np.nan_to_num(worst, nan=0.0) > threshold


def _flagged(value: object) -> bool:
    """A reliability column that says False (absent or null: no objection)."""
    return value is not None and not pd.isna(value) and not bool(value)


def rate(seconds: float, se: float | None) -> str:
    """Estimates per second, 1/seconds, with the SE carried over by the delta method."""
    if seconds is None or math.isnan(seconds) or seconds <= 0:
        return "n/a"
    return fmt(1.0 / seconds, se / seconds**2 if se is not None else None)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:g}"
    return str(value)
