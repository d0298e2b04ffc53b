"""Figures for `bench report`. Each figure function takes one suite's rows of the summary
(gradbench.app.report.summaries.summarize), draws one PNG and returns the facts its caption
needs (what was fixed, what could not be drawn).

This module draws the forest plots, one row per setting of the suite (bias, cost-normalised
variance, timing); sweep figures (variance against one setting) live in
gradbench.app.report.sweep_figures and the shared look in gradbench.app.report.figure_style,
both re-exported here so that `figures` stays the report's one figure API."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from gradbench.app.report.figure_style import (
    PANEL_W,
    RING,
    STYLE,
    FigureInfo,
    Style,
    dodge_offsets,
    drop_minor_ticks,
    estimator_styles,
    figure_legend,
    figure_title,
    fmt_value,
    legend_entries,
    save_figure,
)
from gradbench.app.report.summaries import METRICS, SuiteColumns
from gradbench.app.report.sweep_figures import held_settings, sweep_figure

__all__ = ["FigureInfo", "Style", "bias_figure", "cost_figure", "estimator_styles",
           "held_settings", "sweep_figure", "timing_figure"]


def _combo_labels(part: pd.DataFrame, swept: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Distinct combinations of the swept settings, sorted, with readable labels."""
    if not swept:
        return pd.DataFrame(index=[0]), ["(single setting)"]
    combos = part[list(swept)].drop_duplicates().sort_values(list(swept), kind="stable")
    combos = combos.reset_index(drop=True)
    labels = [", ".join(f"{c}={fmt_value(row[c])}" for c in swept) for _, row in combos.iterrows()]
    return combos, labels


def _combo_index(part: pd.DataFrame, combos: pd.DataFrame, swept: Sequence[str]) -> np.ndarray:
    if not swept:
        return np.zeros(len(part), dtype=int)
    keyed = combos.reset_index().rename(columns={"index": "_combo"})
    merged = part[list(swept)].merge(keyed, on=list(swept), how="left")
    return merged["_combo"].to_numpy()


# ---------------------------------------------------------------- forest plots (every setting)


def _forest_height(n_combos: int, n_variants: int) -> tuple[float, float]:
    """Inches per setting row (room for every variant's point) and the figure's height: at
    least 2.4 inches of panel so a one-setting suite still has room for its legend."""
    row = max(0.4, 0.1 * n_variants)
    return row, min(40.0, 1.7 + max(2.4, row * n_combos))


def _forest_panel(ax: plt.Axes, rows: pd.DataFrame, entries: list[tuple[str, Style, bool]],
                  value: str, err: pd.Series | None, row_h: float,
                  filled: pd.Series | None = None, floor: float | None = None
                  ) -> tuple[list[str], set[str]]:
    """Points (one per variant per setting combination) with ± error bars; y: combination.
    Returns the variants with points that could not be drawn, and those drawn."""
    missing, drawn = [], set()
    log_x = floor is not None
    offsets = dodge_offsets(len(entries), width=0.7)
    for (variant, style, _), offset in zip(entries, offsets, strict=True):
        sub = rows[rows["_variant"] == variant]
        x = sub[value].to_numpy(float)
        e = err.loc[sub.index].to_numpy(float) if err is not None else np.zeros(len(sub))
        keep = np.isfinite(x) & ((x > 0) if log_x else True)
        if (~keep).any():
            missing.append(variant)
        x, e, sub = x[keep], np.nan_to_num(e[keep]), sub[keep]
        if len(sub):
            drawn.add(variant)
        y = sub["_combo"].to_numpy(float) + offset
        lower = np.minimum(e, x - floor) if log_x else e  # a log axis stops at `floor`
        face = style.color
        ax.errorbar(x, y, xerr=[lower, e], color=style.color, marker="none",
                    linestyle="none", elinewidth=1.1, capsize=1.5, zorder=2)
        if filled is not None:
            # A red ring, not fill or size alone: unmistakable whatever the marker's shape.
            flagged = filled.loc[sub.index].to_numpy(bool)
            ax.scatter(x, y, s=24, marker=style.marker, color=face, zorder=3)
            ax.scatter(x[flagged], y[flagged], s=150, marker="o", facecolors="none",
                       edgecolors=RING, linewidths=1.6, zorder=4)
        else:
            ax.scatter(x, y, s=22, marker=style.marker, color=face, zorder=3)
    return missing, drawn


def _log_floor(values: pd.Series) -> float:
    """Left edge of a log axis: a third of the smallest positive value drawn (error bars that
    reach it extend to <= 0, which a log axis cannot show)."""
    v = values.to_numpy(float)
    v = v[np.isfinite(v) & (v > 0)]
    return float(v.min() / 3) if v.size else 1e-12


def _forest_axes(ax: plt.Axes, labels: Sequence[str], first: bool) -> None:
    if first:  # the y axis is shared: label it once, hide the repeats
        ax.set_yticks(range(len(labels)), labels)
    else:
        ax.tick_params(labelleft=False)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first combination at the top
    for k in range(1, len(labels)):
        ax.axhline(k - 0.5, color="0.85", linewidth=0.6, zorder=0)
    ax.grid(axis="y", visible=False)


def bias_figure(part: pd.DataFrame, cols: SuiteColumns, styles: Mapping[str, Style],
                path: Path, platform: str) -> FigureInfo | None:
    """Relative bias along the true gradient (b.g / |g|^2) ± 2 SE per setting, one panel per
    parameter; red rings: the cell failed the bias test."""
    suite = str(part["suite"].iloc[0])
    data = part[part["rel_bias"].notna()]
    if data.empty:
        return None
    data = data.assign(_variant=data["variant"])
    combos, labels = _combo_labels(data, cols.swept)
    data = data.assign(_combo=_combo_index(data, combos, cols.swept))
    entries = legend_entries(data, styles)
    params = list(dict.fromkeys(data["param"]))
    row_h, height = _forest_height(len(labels), len(entries))
    se2 = 2 * data["rel_bias_se"]
    spread = se2[np.isfinite(se2) & (se2 > 0)]
    linthresh = 1e-3
    if len(spread):
        linthresh = float(10 ** np.clip(np.floor(np.log10(np.quantile(spread, 0.1))), -6, -1))
    info = FigureInfo(path, f"{suite}: bias relative to the true gradient",
                      variants=[e[0] for e in entries])
    drawn: set[str] = set()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(params), squeeze=False, sharey=True,
                                 figsize=(PANEL_W * len(params) + 1.5, height))
        for j, param in enumerate(params):
            ax = axes[0][j]
            rows = data[data["param"] == param]
            missing, shown = _forest_panel(ax, rows, entries, "rel_bias", se2, row_h,
                                           filled=rows["measured_biased"])
            drawn |= shown
            info.not_drawn += [f"{m} (d/d{param}: some points not finite)" for m in missing]
            ax.axvline(0, color="black", linewidth=1.0, zorder=1)
            ax.set_xscale("symlog", linthresh=linthresh, linscale=0.5)
            _pad_x(ax)
            ax.set_title(f"d/d{param}")
            ax.set_xlabel(f"bias along the true gradient g: b·g / |g|²\n"
                          f"(symlog, linear within ±{linthresh:g})")
            _forest_axes(ax, labels, j == 0)
            _thin_symlog_ticks(ax)
        marker_keys = [
            Line2D([], [], linestyle="none", marker="o", markersize=11, markerfacecolor="none",
                   markeredgecolor=RING, markeredgewidth=1.6, label="significant bias"),
        ]
        figure_title(fig, f"{info.title}\ndevice: {platform}; bars: ± 2 SE; black line: zero bias")
        fig.subplots_adjust(wspace=0.1)
        figure_legend(fig, entries, drawn, marker_keys)
        save_figure(fig, path)
    return info


def _pad_x(ax: plt.Axes, fraction: float = 0.04) -> None:
    """Room beyond the outermost points, measured in the axis' own (symlog) scale, so markers at
    the data limits are not cut by the frame."""
    transform = ax.xaxis.get_transform()
    lo, hi = transform.transform(np.array(ax.get_xlim(), float))
    pad = fraction * (hi - lo)
    ax.set_xlim(*transform.inverted().transform(np.array([lo - pad, hi + pad])))


def _thin_symlog_ticks(ax: plt.Axes) -> None:
    """Symlog axes label every decade: keep at most ~7 labelled ticks so none overlap."""
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    if len(ticks) > 7:
        step = int(np.ceil(len(ticks) / 7))
        zero = ticks.index(0.0) if 0.0 in ticks else 0
        ticks = [t for k, t in enumerate(ticks) if (k - zero) % step == 0]
        ax.set_xticks(ticks)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def timing_figure(part: pd.DataFrame, cols: SuiteColumns, styles: Mapping[str, Style],
                  path: Path) -> FigureInfo:
    """Seconds per estimate ± 2 SE per setting; one panel per device, side by side on a shared
    axis so CPU and GPU compare directly."""
    suite = str(part["suite"].iloc[0])
    cells = part.drop_duplicates(subset=[*cols.keys, "platform"]).copy()
    cells["_variant"] = cells["variant"]
    combos, labels = _combo_labels(cells, cols.swept)
    cells["_combo"] = _combo_index(cells, combos, cols.swept)
    entries = legend_entries(cells, styles)
    platforms = sorted(cells["platform"].unique(), key=lambda p: (not str(p).startswith("cpu"),
                                                                  str(p)))
    row_h, height = _forest_height(len(labels), len(entries))
    floor = _log_floor(cells["seconds_per_estimate"])
    info = FigureInfo(path, f"{suite}: wall time per gradient estimate",
                      variants=[e[0] for e in entries])
    drawn: set[str] = set()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(platforms), squeeze=False, sharey=True, sharex=True,
                                 figsize=(PANEL_W * len(platforms) + 1.5, height))
        for j, platform in enumerate(platforms):
            ax = axes[0][j]
            rows = cells[cells["platform"] == platform]
            err = 2 * rows["seconds_per_estimate_se"]
            missing, shown = _forest_panel(ax, rows, entries, "seconds_per_estimate", err,
                                           row_h, floor=floor)
            drawn |= shown
            info.not_drawn += [f"{m} ({platform}: some points without a timing)"
                               for m in missing]
            ax.set_xscale("log")
            ax.set_xlim(left=floor)
            drop_minor_ticks(ax)
            names = sorted(set(rows["device_name"].astype(str)) - {""})
            ax.set_title(f"{platform}" + (f"\n{names[0][:40]}" if len(names) == 1 else ""))
            ax.set_xlabel("seconds per estimate (log scale)")
            _forest_axes(ax, labels, j == 0)
        figure_title(fig, f"{info.title}\nbars: ± 2 SE (spread of per-chunk timings)")
        fig.subplots_adjust(wspace=0.1)
        figure_legend(fig, entries, drawn)
        save_figure(fig, path)
    return info


def cost_figure(part: pd.DataFrame, cols: SuiteColumns, styles: Mapping[str, Style],
                path: Path, platform: str) -> FigureInfo:
    """Cost-normalised variance at every setting: variance x evaluations and variance x
    seconds, ± 2 SE, one panel per (cost, parameter); lower is better."""
    suite = str(part["suite"].iloc[0])
    data = part.assign(_variant=part["variant"])
    combos, labels = _combo_labels(data, cols.swept)
    data = data.assign(_combo=_combo_index(data, combos, cols.swept))
    entries = legend_entries(data, styles)
    params = list(dict.fromkeys(data["param"]))
    panels = [(m, p) for m in METRICS[1:] for p in params]
    row_h, height = _forest_height(len(labels), len(entries))
    info = FigureInfo(path, f"{suite}: variance at a fixed budget (lower is better)",
                      variants=[e[0] for e in entries])
    drawn: set[str] = set()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(panels), squeeze=False, sharey=True,
                                 figsize=(3.3 * len(panels) + 1.5, height))
        for j, ((column, se_column, xlabel, short), param) in enumerate(panels):
            ax = axes[0][j]
            rows = data[data["param"] == param]
            floor = _log_floor(rows[column])
            missing, shown = _forest_panel(ax, rows, entries, column, 2 * rows[se_column],
                                           row_h, floor=floor)
            drawn |= shown
            info.not_drawn += [f"{m} (points with zero variance or not finite: a log axis "
                               "cannot show them)" for m in missing]
            ax.set_xscale("log")
            ax.set_xlim(left=floor)
            drop_minor_ticks(ax)
            ax.set_title(f"d/d{param}: {short}", fontsize=10)
            ax.set_xlabel(xlabel.replace("\n", " ") + "\n(log scale)")
            _forest_axes(ax, labels, j == 0)
        figure_title(fig, f"{info.title}\ndevice: {platform}; bars: ± 2 SE")
        fig.subplots_adjust(wspace=0.12)
        figure_legend(fig, entries, drawn)
        save_figure(fig, path)
    info.not_drawn = sorted(set(info.not_drawn))
    return info
