"""Figures of bench train's results: training curves against steps and seconds, gradient
variance along the trajectories, and (with --basket) every listed estimator's variance along
each trajectory. Matplotlib on Agg, the look and helpers of gradbench.app.report.figure_style; every
band is mean ± 2 SE computed in pandas (training_summaries), never re-aggregated by seaborn."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from gradbench.app.report import figure_style as figs
from gradbench.app.report.figure_style import FigureInfo, Style
from gradbench.app.report.training_summaries import (
    Metric,
    curve,
    measured_labels,
    over_seeds,
    variance_columns,
)


def _variant_styles(rows: pd.DataFrame, styles: Mapping[str, Style]
                    ) -> list[tuple[str, Style, bool]]:
    """(variant, style, unbiased) per variant: the estimator's colour, variants told apart by
    line style."""
    entries = []
    for estimator, part in rows.groupby("estimator", sort=True):
        siblings = sorted(part["variant"].unique())
        unbiased = bool(part["unbiased"].iloc[0])
        entries += [(v, figs.variant_style(styles, str(estimator), v, siblings), unbiased)
                    for v in siblings]
    return entries


def _band(ax: plt.Axes, x: np.ndarray, y: np.ndarray, se: np.ndarray, style: Style,
          floor: float | None = None) -> None:
    """A line with a ± 2 SE band (clipped at `floor` on log axes)."""
    order = np.argsort(x)
    x, y, se = x[order], y[order], np.nan_to_num(se[order])
    lower = y - 2 * se if floor is None else np.maximum(y - 2 * se, floor)
    ax.plot(x, y, color=style.color, linestyle=style.linestyle, marker=style.marker,
            markersize=3, linewidth=1.4)
    ax.fill_between(x, lower, y + 2 * se, color=style.color, alpha=0.15, linewidth=0)


def curves_figure(rows: pd.DataFrame, metrics: Sequence[Metric], styles: Mapping[str, Style],
                  path: Path, title: str) -> FigureInfo:
    """Top: each metric against steps; bottom: against training seconds (means over seeds)."""
    entries = _variant_styles(rows, styles)
    info = FigureInfo(path, f"{title}: training curves", variants=[e[0] for e in entries])
    drawn: set[str] = set()
    with plt.rc_context(figs.STYLE):
        fig, axes = plt.subplots(2, len(metrics), squeeze=False,
                                 figsize=(figs.PANEL_W * len(metrics), figs.PANEL_H * 2))
        for j, metric in enumerate(metrics):
            data = curve(rows, metric)
            for variant, style, _ in entries:
                part = data[data["variant"] == variant]
                if part["value"].notna().any():
                    drawn.add(variant)
                for i, x in enumerate(("step", "seconds")):
                    _band(axes[i][j], part[x].to_numpy(float), part["value"].to_numpy(float),
                          part["se"].to_numpy(float), style)
            axes[0][j].set_title(metric.label + (" (higher is better)" if
                                                 metric.higher_is_better else ""))
            axes[1][j].set_xlabel("training seconds (mean over seeds)")
            axes[0][j].set_xlabel("step")
        figs.figure_title(fig, f"{info.title}\nmean over seeds; band: ± 2 SE")
        fig.subplots_adjust(wspace=0.28, hspace=0.35)
        figs.figure_legend(fig, entries, drawn, lines=True)
        figs.save_figure(fig, path)
    return info


def _log_floor(values: pd.Series) -> float | None:
    positive = values[np.isfinite(values) & (values > 0)]
    return float(positive.min() / 3) if len(positive) else None


def variance_figure(rows: pd.DataFrame, styles: Mapping[str, Style], path: Path,
                    title: str) -> FigureInfo:
    """Each trajectory's own gradient variance against steps: the total and per tensor."""
    entries = _variant_styles(rows, styles)
    panels = variance_columns(rows)
    info = FigureInfo(path, f"{title}: gradient variance along the trajectories",
                      variants=[e[0] for e in entries])
    drawn: set[str] = set()
    width = min(len(panels), 3)  # at most three panels a row
    height = -(-len(panels) // width)
    with plt.rc_context(figs.STYLE):
        fig, axes = plt.subplots(height, width, squeeze=False,
                                 figsize=(figs.PANEL_W * width, (figs.PANEL_H + 0.3) * height))
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        for j, (column, se_column, label) in enumerate(panels):
            ax = axes.flat[j]
            data = over_seeds(rows, ["variant", "step"], column, se_column)
            floor = _log_floor(data["value"])
            for variant, style, _ in entries:
                part = data[data["variant"] == variant]
                keep = part["value"] > 0
                if keep.any():
                    drawn.add(variant)
                _band(ax, part.loc[keep, "step"].to_numpy(float),
                      part.loc[keep, "value"].to_numpy(float),
                      part.loc[keep, "se"].to_numpy(float), style, floor)
            if floor is not None:
                ax.set_yscale("log")
            ax.set_title(f"d/d{label}" if j else label)
            ax.set_xlabel("step")
            if j % width == 0:
                ax.set_ylabel("variance of one estimate\n(trace of the covariance)")
        figs.figure_title(fig, f"{info.title}\nmean over seeds; band: ± 2 SE; log scale")
        fig.subplots_adjust(wspace=0.3, hspace=0.45)
        figs.figure_legend(fig, entries, drawn, lines=True)
        figs.save_figure(fig, path)
    return info


def basket_figure(frame: pd.DataFrame, styles: Mapping[str, Style], path: Path,
                  title: str) -> FigureInfo | None:
    """With --basket: per trained variant (panel), every measured estimator's total variance
    at that trajectory's parameters. None when no row measures another estimator."""
    if frame["own_variance"].astype(bool).all():
        return None
    data = frame.assign(measured=measured_labels(frame))
    trained = sorted(data["variant"].unique())
    measured = sorted(data["measured"].unique())
    entries = [(m, Style(styles[m.split(" ")[0]].color, styles[m.split(" ")[0]].marker)
                if m.split(" ")[0] in styles else Style("0.3", "o"), True) for m in measured]
    info = FigureInfo(path, f"{title}: every estimator's variance along each trajectory",
                      variants=measured)
    with plt.rc_context(figs.STYLE):
        fig, axes = plt.subplots(1, len(trained), squeeze=False, sharey=True,
                                 figsize=(figs.PANEL_W * len(trained), figs.PANEL_H + 0.6))
        summary = over_seeds(data, ["variant", "measured", "step"], "variance", "variance_se")
        floor = _log_floor(summary["value"])
        for j, variant in enumerate(trained):
            ax = axes[0][j]
            for label, style, _ in entries:
                part = summary[(summary["variant"] == variant) & (summary["measured"] == label)
                               & (summary["value"] > 0)]
                _band(ax, part["step"].to_numpy(float), part["value"].to_numpy(float),
                      part["se"].to_numpy(float), style, floor)
            if floor is not None:
                ax.set_yscale("log")
            ax.set_title(f"trained with {variant}")
            ax.set_xlabel("step")
        axes[0][0].set_ylabel("total variance of one estimate")
        figs.figure_title(fig, f"{info.title}\nmean over seeds; band: ± 2 SE; log scale")
        fig.subplots_adjust(wspace=0.1)
        figs.figure_legend(fig, entries, set(measured), lines=True)
        figs.save_figure(fig, path)
    return info
