"""Tidy results as terminal tables.

- `summary_table`: what `bench run` prints. One line per cell (setting x estimator x
  hyperparameters x device), its parameters summarised side by side, readable at 100 columns:
  the settings that vary, the estimator, the worst bias in standard errors, the variance of each
  parameter (coordinate 0) with its relative standard error, the cost. Settings that are the same
  on every line go above the table (`constants_line`), not in a column.
- `full_table`: what `bench show` prints. One line per cell and parameter, every statistic with
  its standard error.

The summary's columns are a list of `SummaryColumn`s built from a cell's rows (`CellRows`), so a
new column is one more entry (see `extra_columns`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from rich import box
from rich.table import Table

from gradbench.results import decisions
from gradbench.results.store import hyperparam_columns, setting_columns

UNRELIABLE = "[yellow]![/yellow]"  # the marker of a number not reliable at its n
MAX_PARAM_COLUMNS = 3  # parameters with a variance column in the summary; the rest: bench show
# Columns that say how a run was made rather than what it measured; shown above the table when
# they are the same on every row.
RUN_COLUMNS = ("samples", "dtype", "device", "seed")


def fmt(value: float, se: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    if se is None or math.isnan(se):
        return text
    return f"{text} ± {se:.2g}"


def compact(value: float, digits: int = 3) -> str:
    """`digits` significant digits with a short exponent: 1.15e5, 6.7e-7, 0.0405, 113."""
    text = f"{value:.{digits}g}"
    mantissa, sep, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if sep else text


def relative(value: float, se: float | None) -> str:
    """`value±p%`: three significant digits and the standard error relative to the value
    (absolute where the value is 0 or tiny beside it)."""
    if value is None or math.isnan(value):
        return "n/a"
    text = compact(value)
    if se is None or math.isnan(se):
        return text
    if se == 0:
        return f"{text}±0"
    if value == 0 or se >= abs(value) * 10:
        return f"{text}±{compact(se, 1)}"
    return f"{text}±{100 * se / abs(value):.2g}%"


def varying_columns(frame: pd.DataFrame, candidates: list[str]) -> list[str]:
    return [c for c in candidates if c in frame and frame[c].nunique(dropna=True) > 1]


def constants_line(frame: pd.DataFrame) -> str:
    """The settings (and samples, dtype, device, seed) that are the same on every row, e.g.
    `mu=12 sigma=42; samples 4,000, float64, cpu, seed 0`; empty if none."""
    settings = [c for c in setting_columns(frame)
                if c in frame and frame[c].nunique(dropna=False) == 1]
    parts = [f"{c}={_cell(frame[c].iloc[0])}" for c in settings]
    run = []
    for column in RUN_COLUMNS:
        if column in frame and frame[column].nunique(dropna=False) == 1:
            value = frame[column].iloc[0]
            run.append(f"{column} {value:,}" if column == "samples" else
                       f"{column} {value}" if column == "seed" else str(value))
    text = " ".join(parts)
    if run:
        text = f"{text}; {', '.join(run)}" if text else ", ".join(run)
    return f"same in every row: {text}" if text else ""


@dataclass(frozen=True)
class CellRows:
    """One cell of a results frame: its rows, and whether it is measurably biased."""

    rows: pd.DataFrame  # every row of the cell (all parameters and coordinates)
    biased: bool

    @property
    def first(self) -> pd.Series:
        return self.rows.iloc[0]

    def param_row(self, param: str) -> pd.Series | None:
        """The row summarising `param` in the table: its coordinate 0, or its tensor row where
        no coordinate row was written (`bench run --coords 0`)."""
        rows = self.rows[(self.rows["param"] == param) & _shown_rows(self.rows)]
        return rows.iloc[0] if len(rows) else None


@dataclass(frozen=True)
class SummaryColumn:
    header: str
    render: Callable[[CellRows], str]
    justify: str = "right"


def _bias(cell: CellRows) -> str:
    z = _max_bias_z(cell.rows)
    if z is None:
        return "n/a"
    # Beyond 99 SE the number says nothing more (a deterministic estimator's zero SE gives
    # astronomically large z's).
    text = ">99" if z > 99 else compact(z, 2)
    text = f"[red]{text}[/red]" if cell.biased else text
    unreliable = "mean_reliable" in cell.rows and (~cell.rows["mean_reliable"].fillna(True)
                                                   .astype(bool)).any()
    return text + UNRELIABLE if unreliable else text


def _max_bias_z(rows: pd.DataFrame) -> float | None:
    z = bias_z(rows)
    z = z[~np.isnan(z)]
    return float(np.max(np.abs(z))) if len(z) else None


def bias_z(frame: pd.DataFrame) -> np.ndarray:
    """decisions.bias_z of every row (NaN where untested)."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflowed rows are reported apart
        return decisions.bias_z(frame["bias"].to_numpy(np.float64),
                                frame["bias_se"].to_numpy(np.float64),
                                frame["truth"].to_numpy(np.float64),
                                frame["mean"].to_numpy(np.float64), frame["dtype"].to_numpy())


def _variance_of(param: str) -> Callable[[CellRows], str]:
    def render(cell: CellRows) -> str:
        row = cell.param_row(param)
        if row is None:
            return ""
        text = relative(row["variance"], row["variance_se"])
        return text + UNRELIABLE if _flagged(row.get("reliable")) else text

    return render


def _rate(cell: CellRows) -> str:
    seconds, se = cell.first["seconds_per_estimate"], cell.first.get("seconds_per_estimate_se")
    if seconds is None or math.isnan(seconds) or seconds <= 0:
        return "n/a"
    return relative(1.0 / seconds, se / seconds**2 if se is not None else None)


def extra_columns() -> list[SummaryColumn]:
    """Columns appended to every summary (none yet): the place for a new per-cell marker."""
    return []


def summary_columns(params: list[str]) -> list[SummaryColumn]:
    shown = params[:MAX_PARAM_COLUMNS]
    return [
        SummaryColumn("estimator", lambda c: str(c.first["estimator"]), "left"),
        SummaryColumn("bias/SE", _bias),
        *[SummaryColumn(f"var {p}", _variance_of(p)) for p in shown],
        SummaryColumn("evals", lambda c: f"{c.first['evals_per_estimate']:g}"),
        SummaryColumn("estimates/s", _rate),
        *extra_columns(),
    ]


def summary_table(frame: pd.DataFrame, title: str = "") -> Table:
    """One line per cell; see the module docstring."""
    frame = frame.assign(biased_cell=biased_cells(frame))
    keys = varying_columns(frame, ["suite", *setting_columns(frame),
                                   *hyperparam_columns(frame), "device"])
    params = list(dict.fromkeys(frame["param"]))
    columns = summary_columns(params)
    caption = ("bias/SE: |bias|/SE of the cell's worst coordinate, red where the cell is "
               "measurably biased; var: variance of one estimate (coordinate 0) ± relative SE; "
               "!: not reliable at this n (bench show / the reliability_reason column: why, and "
               "about how many estimates would do)")
    if len(params) > MAX_PARAM_COLUMNS:
        caption += f"; {len(params) - MAX_PARAM_COLUMNS} more parameters in `bench show`"
    table = Table(title=title or None, caption=caption, caption_justify="left",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for key in keys:
        table.add_column(key, justify="right", no_wrap=True)
    for column in columns:
        table.add_column(column.header, justify=column.justify, no_wrap=True)
    order = frame.sort_values([*keys, "estimator"], kind="stable")
    for _, rows in order.groupby("cell_id", sort=False):
        cell = CellRows(rows, bool(rows["biased_cell"].iloc[0]))
        table.add_row(*[_cell(cell.first[k]) for k in keys],
                      *[column.render(cell) for column in columns])
    return table


def full_table(frame: pd.DataFrame, title: str = "") -> Table:
    """Coordinate 0 of each parameter per cell, every statistic ± SE (all coordinates are in
    the parquet)."""
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
    for header in ("estimator", "param", "truth", "bias ± SE", "variance ± SE", "evals",
                   "s/estimate ± SE", "estimates/s ± SE"):
        table.add_column(header, justify="left" if header in ("estimator", "param") else "right")
    for row in first.itertuples(index=False):
        r = row._asdict()
        bias = fmt(r["bias"], r["bias_se"])
        if r["biased_cell"]:
            bias = f"[red]{bias}[/red]"
        if _flagged(r.get("mean_reliable")):
            bias += " " + UNRELIABLE
        variance = fmt(r["variance"], r["variance_se"])
        if _flagged(r.get("reliable")):
            variance += " " + UNRELIABLE
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
    tested coordinates, each z adjusted for its draws' skewness; cells keyed by cell_id)."""
    z = bias_z(frame)
    if "skewness" in frame and "n" in frame:  # skewed draws: decisions.skew_adjusted_z
        z = decisions.skew_adjusted_z(z, frame["skewness"].to_numpy(np.float64),
                                      frame["n"].to_numpy(np.float64))
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
