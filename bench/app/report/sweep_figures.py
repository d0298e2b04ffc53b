"""Sweep figures of `bench report`: the variance of one gradient estimate (and the variance at a
fixed budget) against one swept setting or hyperparameter, the other swept settings held fixed.
Every band is computed in pandas (value ± 2 SE) and drawn as it is, never re-aggregated by
seaborn (whose log axes would aggregate in log space)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from gradbench.app.report.figure_style import (
    LOG_SPAN,
    PANEL_H,
    PANEL_W,
    STYLE,
    FigureInfo,
    Style,
    dodge_offsets,
    drop_minor_ticks,
    figure_legend,
    figure_title,
    fmt_value,
    legend_entries,
    save_figure,
)
from gradbench.app.report.summaries import METRICS, SuiteColumns, variant_label


def reference_value(values: Iterable[Any]) -> Any:
    """The value other settings are held at in a sweep: the middle of the sorted values."""
    ordered = sorted(pd.unique(pd.Series(list(values)).dropna()))
    return ordered[(len(ordered) - 1) // 2]


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _log_span(values: np.ndarray) -> bool:
    positive = values[np.isfinite(values) & (values > 0)]
    return positive.size > 1 and positive.max() / positive.min() > LOG_SPAN


def _variants(part: pd.DataFrame, cols: SuiteColumns, exclude: Sequence[str] = ()) -> pd.Series:
    if not exclude:
        return part["variant"]
    return pd.Series([variant_label(row, cols, exclude) for _, row in part.iterrows()],
                     index=part.index, dtype=object)


def held_settings(part: pd.DataFrame, swept: Sequence[str], x: str) -> dict[str, Any]:
    """Values to hold the other swept settings at while `x` varies: their middle values when
    that combination has the most distinct x values (a full grid), else the combination that
    has the most (results of several runs need not form a full grid)."""
    others = [c for c in swept if c != x]
    if not others:
        return {}
    data = part[part[x].notna()]
    counts = data.groupby(others, sort=True)[x].nunique()
    if len(others) == 1:  # a plain index of values, not of 1-tuples
        counts.index = pd.MultiIndex.from_arrays([counts.index])
    middle = tuple(reference_value(data[c]) for c in others)
    key = middle if counts.get(middle, 0) == counts.max() else counts.idxmax()
    return dict(zip(others, key, strict=True))


@dataclass(frozen=True)
class _SweepAxis:
    """The x axis of a sweep: the swept values, drawn as lines when numeric (log scale when they
    span more than LOG_SPAN) or as dodged points at category positions otherwise."""

    name: str
    values: list[Any]
    numeric: bool
    log: bool

    @classmethod
    def of(cls, data: pd.DataFrame, x: str) -> _SweepAxis:
        values = sorted(pd.unique(data[x]))
        numeric = _is_numeric(data[x])
        log = numeric and bool(np.all(np.asarray(values, float) > 0)) and _log_span(
            np.asarray(values, float))
        return cls(x, values, numeric, log)


@dataclass
class _Omissions:
    """Points a sweep could not draw (why, and how many of how many per variant), and the
    variants it drew at least once: the caption names the first, the legend shows the second."""

    reasons: dict[str, set[str]] = field(default_factory=dict)
    counts: dict[str, list[int]] = field(default_factory=dict)  # variant -> [not drawn, points]
    drawn: set[str] = field(default_factory=set)

    def count(self, variant: str, left_out: pd.Series, points: int) -> None:
        count = self.counts.setdefault(variant, [0, 0])
        count[0] += len(left_out)
        count[1] += points
        for value in left_out:
            self.reasons.setdefault(variant, set()).add(
                "zero variance: a log axis cannot show it" if value == 0 else "not finite")

    def caption_items(self) -> list[str]:
        return [f"{v} ({'all' if self.counts[v][0] == self.counts[v][1] else self.counts[v][0]}"
                f" of {self.counts[v][1]} points: {', '.join(sorted(why))})"
                for v, why in sorted(self.reasons.items())]


def sweep_figure(part: pd.DataFrame, cols: SuiteColumns, x: str, styles: Mapping[str, Style],
                 path: Path, platform: str) -> FigureInfo | None:
    """Rows: variance, variance x evaluations, variance x seconds; columns: parameters; x: one
    swept setting (or hyperparameter); the other swept settings held fixed (held_settings).
    None (nothing drawn) when fewer than two values of x remain."""
    suite = str(part["suite"].iloc[0])
    fixed = held_settings(part, cols.swept, x)
    data = part[part[x].notna()]
    for column, value in fixed.items():
        data = data[data[column] == value]
    if data[x].nunique() < 2:
        return None
    data = data.assign(_variant=_variants(data, cols, exclude=[x]))
    params = list(dict.fromkeys(data["param"]))
    axis = _SweepAxis.of(data, x)
    entries = legend_entries(data, styles)
    info = FigureInfo(path, f"{suite}: variance against {x}", fixed=fixed,
                      variants=[e[0] for e in entries])
    omitted = _Omissions()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(METRICS), len(params), squeeze=False, sharex=True,
                                 figsize=(PANEL_W * len(params), PANEL_H * len(METRICS)))
        for j, param in enumerate(params):
            panel = data[data["param"] == param]
            for i, (column, se_column, ylabel, _) in enumerate(METRICS):
                ax = axes[i][j]
                _sweep_panel(ax, panel, column, se_column, entries, axis, omitted)
                if i == 0:
                    ax.set_title(f"d/d{param}")
                if j == 0:
                    ax.set_ylabel(ylabel)
                if i == len(METRICS) - 1:
                    ax.set_xlabel(x + (" (log scale)" if axis.log else ""))
        held = ", ".join(f"{c} = {fmt_value(v)}" for c, v in fixed.items())
        subtitle = f"other settings held at: {held}; " if held else ""
        figure_title(fig, f"{info.title}\n{subtitle}device: {platform}; band: ± 2 SE")
        fig.subplots_adjust(wspace=0.28, hspace=0.1)
        figure_legend(fig, entries, omitted.drawn, lines=axis.numeric)
        save_figure(fig, path)
    info.not_drawn = omitted.caption_items()
    return info


def _sweep_panel(ax: plt.Axes, panel: pd.DataFrame, column: str, se_column: str,
                 entries: list[tuple[str, Style, bool]], axis: _SweepAxis,
                 omitted: _Omissions) -> None:
    """One metric of one parameter: a line with a ± 2 SE band (numeric x) or points with
    ± 2 SE bars (categorical x) per variant; a log y axis when the values span more than
    LOG_SPAN, on which zero and non-finite points cannot be drawn (they are counted)."""
    values = panel[column].to_numpy(float)
    log_y = _log_span(values)
    positive = values[np.isfinite(values) & (values > 0)]
    floor = positive.min() / 3 if log_y and positive.size else 0.0
    offsets = dodge_offsets(len(entries)) if not axis.numeric else np.zeros(len(entries))
    band_alpha = 0.18 if len(entries) <= 6 else 0.1  # many overlapping bands: lighter
    for (variant, style, _), offset in zip(entries, offsets, strict=True):
        rows = panel[panel["_variant"] == variant].sort_values(axis.name)
        y = rows[column].to_numpy(float)
        se = rows[se_column].to_numpy(float)
        keep = np.isfinite(y) & ((y > 0) if log_y else True)
        omitted.count(variant, rows.loc[~keep, column], len(keep))
        rows, y, se = rows[keep], y[keep], se[keep]
        if not len(rows):
            continue
        omitted.drawn.add(variant)
        lower = np.maximum(y - 2 * se, floor)
        upper = y + 2 * se
        if axis.numeric:
            xv = rows[axis.name].to_numpy(float)
            ax.plot(xv, y, color=style.color, marker=style.marker, markersize=4,
                    linestyle=style.linestyle, linewidth=1.5)
            ax.fill_between(xv, lower, upper, color=style.color, alpha=band_alpha, linewidth=0)
        else:
            xv = np.array([axis.values.index(v) for v in rows[axis.name]], float) + offset
            ax.errorbar(xv, y, yerr=[y - lower, upper - y], color=style.color,
                        marker=style.marker, markersize=5, linestyle="none", capsize=2)
    _sweep_scales(ax, axis, log_y, floor)


def _sweep_scales(ax: plt.Axes, axis: _SweepAxis, log_y: bool, floor: float) -> None:
    """Scales, limits and x ticks of a sweep panel: every swept value labelled when there are
    few (categories always), rotated when the labels are long."""
    if log_y:
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
    else:
        ax.set_ylim(bottom=0)
    if axis.log:
        ax.set_xscale("log")
    labels = [fmt_value(v) for v in axis.values]
    if not axis.numeric:
        ax.set_xticks(range(len(axis.values)), labels,
                      rotation=30 if max(len(label) for label in labels) > 6 else 0,
                      ha="right" if len(axis.values) > 3 else "center")
    elif len(axis.values) <= 8:
        ax.set_xticks(np.asarray(axis.values, float), labels)
    drop_minor_ticks(ax)
