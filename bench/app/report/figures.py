"""Figures for `bench report`: matplotlib on the headless Agg backend, seaborn only for the look
and the palette. Every interval is computed in pandas (value ± 2 SE) and drawn as it is, never
re-aggregated by seaborn (whose log axes would aggregate in log space).

Each function takes one suite's rows of the summary (gradbench.app.report.summaries.summarize),
draws one PNG and returns the facts its caption needs (what was fixed, what could not be
drawn)."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display needed, same output everywhere

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from PIL import Image

from gradbench.app.report.summaries import METRICS, SuiteColumns, variant_label

DPI = 100
RING = "#d00000"  # marks cells that fail the bias test
# Kelly's 20 colours of maximum contrast (no white/black), ordered so that similar hues are far
# apart in the list (colours i and i + 12 share a marker).
KELLY = ("#0067A5", "#F38400", "#008856", "#BE0032", "#875692", "#A1CAF1", "#882D17", "#E68FAC",
         "#848482", "#8DB600", "#2B3D26", "#604E97", "#F99379", "#B3446C", "#DCD300", "#654522",
         "#C2B280", "#E25822", "#F6A600", "#F3C300")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
LINESTYLES = ("-", "--", ":", "-.")
VARIANT_MARKERS = ("X", "*", "h", "P")
LOG_SPAN = 30.0  # use a log axis when positive values span more than this factor
PANEL_W, PANEL_H = 4.0, 2.9  # inches per panel of a line figure
STYLE = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85),
         "axes.titleweight": "bold", "figure.titleweight": "bold", "figure.titlesize": 12}


@dataclass(frozen=True)
class Style:
    color: Any
    marker: str
    linestyle: str = "-"


def estimator_styles(names: Iterable[str]) -> dict[str, Style]:
    """One colour and marker per estimator, keyed by sorted name: the same everywhere in a
    report whatever subset a figure shows."""
    ordered = sorted(set(map(str, names)))
    n = len(ordered)
    if n <= 10:  # colour-blind safe; reordered so the first six are far apart
        base = sns.color_palette("colorblind", 10)
        palette = [base[i] for i in (0, 1, 2, 4, 3, 9, 5, 8, 7, 6)]
    elif n <= len(KELLY):  # Kelly's colours of maximum contrast (tab20 pairs look alike)
        palette = sns.color_palette(KELLY[:n])
    else:
        palette = sns.color_palette("husl", n)
    return {name: Style(tuple(palette[i]), MARKERS[i % len(MARKERS)])
            for i, name in enumerate(ordered)}


def variant_style(styles: Mapping[str, Style], estimator: str, variant: str,
                  siblings: Sequence[str]) -> Style:
    """An estimator's colour; its hyperparameter variants differ by line style and marker (so
    they stay apart in point plots too)."""
    base = styles[estimator]
    index = sorted(siblings).index(variant) if variant in siblings else 0
    marker = base.marker if index == 0 else VARIANT_MARKERS[(index - 1) % len(VARIANT_MARKERS)]
    return Style(base.color, marker, LINESTYLES[index % len(LINESTYLES)])


def legend_label(variant: str, unbiased: bool) -> str:
    return variant if unbiased else f"{variant} [biased by design]"


@dataclass
class FigureInfo:
    """What a caption must say about a figure."""

    path: Path
    title: str
    fixed: dict[str, Any] = field(default_factory=dict)
    not_drawn: list[str] = field(default_factory=list)  # "name: why"
    variants: list[str] = field(default_factory=list)


def reference_value(values: Iterable[Any]) -> Any:
    """The value other settings are held at in a sweep: the middle of the sorted values."""
    ordered = sorted(pd.unique(pd.Series(list(values)).dropna()))
    return ordered[(len(ordered) - 1) // 2]


def fmt_value(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{int(value)}" if float(value).is_integer() else f"{value:g}"
    return str(value)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _log_span(values: np.ndarray) -> bool:
    positive = values[np.isfinite(values) & (values > 0)]
    return positive.size > 1 and positive.max() / positive.min() > LOG_SPAN


def _save(fig: plt.Figure, path: Path) -> None:
    """PNG, tight around the outside legend, quantised to 256 colours (a third of the bytes;
    flat plot colours survive it)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(colors=256, dither=Image.Dither.NONE)
    image.save(path, format="PNG", optimize=True)


def _title(fig: plt.Figure, text: str) -> None:
    """Two-line title above the panels; fixed margins in inches instead of tight_layout (which
    measures every text of every panel again: most of a report's drawing time)."""
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.7 / height, top=1 - 1.0 / height)
    fig.suptitle(text, y=1 - 0.08 / height, va="top", fontsize=11)


def _legend(fig: plt.Figure, entries: list[tuple[str, Style, bool]], drawn: set[str],
            extra: Sequence = (), lines: bool = False) -> None:
    """One legend for the whole figure, outside the panels (right), never over data; only the
    variants that appear in it (the caption names the others)."""
    handles = [Line2D([], [], color=s.color, marker=s.marker,
                      linestyle=s.linestyle if lines else "none",
                      label=legend_label(label, unbiased))
               for label, s, unbiased in entries if label in drawn]
    fig.legend(handles=[*handles, *extra], loc="upper left", bbox_to_anchor=(1.0, 0.93),
               frameon=False, title="estimator")


def _variants(part: pd.DataFrame, cols: SuiteColumns, exclude: Sequence[str] = ()) -> pd.Series:
    if not exclude:
        return part["variant"]
    return pd.Series([variant_label(row, cols, exclude) for _, row in part.iterrows()],
                     index=part.index, dtype=object)


def _entries(part: pd.DataFrame, styles: Mapping[str, Style]
             ) -> list[tuple[str, Style, bool]]:
    """(variant, style, unbiased) for each variant in `part` (column `_variant`), sorted."""
    entries = []
    for estimator, rows in part.groupby("estimator", sort=True):
        siblings = sorted(rows["_variant"].unique())
        for variant in siblings:
            unbiased = bool(rows.loc[rows["_variant"] == variant, "unbiased"].iloc[0])
            entries.append((variant, variant_style(styles, str(estimator), variant, siblings),
                            unbiased))
    return entries


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


# ---------------------------------------------------------------- variance against a setting


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
    numeric = _is_numeric(data[x])
    xs_all = sorted(pd.unique(data[x]))
    log_x = numeric and bool(np.all(np.asarray(xs_all, float) > 0)) and _log_span(
        np.asarray(xs_all, float))
    entries = _entries(data, styles)
    band_alpha = 0.18 if len(entries) <= 6 else 0.1  # many overlapping bands: lighter
    info = FigureInfo(path, f"{suite}: variance against {x}", fixed=fixed,
                      variants=[e[0] for e in entries])
    not_drawn: dict[str, set[str]] = {}
    dropped: dict[str, list[int]] = {}  # variant -> [points not drawn, points]
    drawn: set[str] = set()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(METRICS), len(params), squeeze=False, sharex=True,
                                 figsize=(PANEL_W * len(params), PANEL_H * len(METRICS)))
        for j, param in enumerate(params):
            for i, (column, se_column, ylabel, _) in enumerate(METRICS):
                ax = axes[i][j]
                panel = data[data["param"] == param]
                values = panel[column].to_numpy(float)
                log_y = _log_span(values)
                positive = values[np.isfinite(values) & (values > 0)]
                floor = positive.min() / 3 if log_y and positive.size else 0.0
                offsets = _dodge(len(entries)) if not numeric else np.zeros(len(entries))
                for (variant, style, _), offset in zip(entries, offsets, strict=True):
                    rows = panel[panel["_variant"] == variant].sort_values(x)
                    y = rows[column].to_numpy(float)
                    se = rows[se_column].to_numpy(float)
                    keep = np.isfinite(y) & ((y > 0) if log_y else True)
                    count = dropped.setdefault(variant, [0, 0])
                    count[0] += int((~keep).sum())
                    count[1] += len(keep)
                    for value in rows.loc[~keep, column]:
                        not_drawn.setdefault(variant, set()).add(
                            "zero variance: a log axis cannot show it" if value == 0
                            else "not finite")
                    rows, y, se = rows[keep], y[keep], se[keep]
                    if not len(rows):
                        continue
                    drawn.add(variant)
                    lower = np.maximum(y - 2 * se, floor)
                    upper = y + 2 * se
                    if numeric:
                        xv = rows[x].to_numpy(float)
                        ax.plot(xv, y, color=style.color, marker=style.marker, markersize=4,
                                linestyle=style.linestyle, linewidth=1.5)
                        ax.fill_between(xv, lower, upper, color=style.color, alpha=band_alpha,
                                        linewidth=0)
                    else:
                        xv = np.array([xs_all.index(v) for v in rows[x]], float) + offset
                        ax.errorbar(xv, y, yerr=[y - lower, upper - y], color=style.color,
                                    marker=style.marker, markersize=5, linestyle="none",
                                    capsize=2)
                if log_y:
                    ax.set_yscale("log")
                    ax.set_ylim(bottom=floor)
                else:
                    ax.set_ylim(bottom=0)
                if log_x:
                    ax.set_xscale("log")
                if not numeric:
                    ax.set_xticks(range(len(xs_all)), [fmt_value(v) for v in xs_all],
                                  rotation=30 if max(len(fmt_value(v)) for v in xs_all) > 6
                                  else 0, ha="right" if len(xs_all) > 3 else "center")
                elif len(xs_all) <= 8:
                    ax.set_xticks(np.asarray(xs_all, float), [fmt_value(v) for v in xs_all])
                _drop_minor_ticks(ax)
                if i == 0:
                    ax.set_title(f"d/d{param}")
                if j == 0:
                    ax.set_ylabel(ylabel)
                if i == len(METRICS) - 1:
                    ax.set_xlabel(x + (" (log scale)" if log_x else ""))
        held = ", ".join(f"{c} = {fmt_value(v)}" for c, v in fixed.items())
        subtitle = f"other settings held at: {held}; " if held else ""
        _title(fig, f"{info.title}\n{subtitle}device: {platform}; band: ± 2 SE")
        fig.subplots_adjust(wspace=0.28, hspace=0.1)
        _legend(fig, entries, drawn, lines=numeric)
        _save(fig, path)
    info.not_drawn = [
        f"{v} ({'all' if dropped[v][0] == dropped[v][1] else dropped[v][0]} of "
        f"{dropped[v][1]} points: {', '.join(sorted(why))})"
        for v, why in sorted(not_drawn.items())]
    return info


def _drop_minor_ticks(ax: plt.Axes) -> None:
    """Minor ticks are invisible in this style but cost most of the drawing time; keep them only
    on log axes spanning under two decades, where they carry the only tick labels."""
    for axis, scale, (lo, hi) in ((ax.xaxis, ax.get_xscale(), ax.get_xlim()),
                                  (ax.yaxis, ax.get_yscale(), ax.get_ylim())):
        if scale == "log" and lo > 0 and hi / lo < 100:
            continue
        axis.set_minor_locator(matplotlib.ticker.NullLocator())


def _dodge(count: int, width: float = 0.6) -> np.ndarray:
    if count <= 1:
        return np.zeros(max(count, 0))
    return np.linspace(-width / 2, width / 2, count)


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
    offsets = _dodge(len(entries), width=0.7)
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
    entries = _entries(data, styles)
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
        _title(fig, f"{info.title}\ndevice: {platform}; bars: ± 2 SE; black line: zero bias")
        fig.subplots_adjust(wspace=0.1)
        _legend(fig, entries, drawn, marker_keys)
        _save(fig, path)
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
    entries = _entries(cells, styles)
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
            _drop_minor_ticks(ax)
            names = sorted(set(rows["device_name"].astype(str)) - {""})
            ax.set_title(f"{platform}" + (f"\n{names[0][:40]}" if len(names) == 1 else ""))
            ax.set_xlabel("seconds per estimate (log scale)")
            _forest_axes(ax, labels, j == 0)
        _title(fig, f"{info.title}\nbars: ± 2 SE (spread of per-chunk timings)")
        fig.subplots_adjust(wspace=0.1)
        _legend(fig, entries, drawn)
        _save(fig, path)
    return info


def cost_figure(part: pd.DataFrame, cols: SuiteColumns, styles: Mapping[str, Style],
                path: Path, platform: str) -> FigureInfo:
    """Cost-normalised variance at every setting: variance x evaluations and variance x
    seconds, ± 2 SE, one panel per (cost, parameter); lower is better."""
    suite = str(part["suite"].iloc[0])
    data = part.assign(_variant=part["variant"])
    combos, labels = _combo_labels(data, cols.swept)
    data = data.assign(_combo=_combo_index(data, combos, cols.swept))
    entries = _entries(data, styles)
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
            _drop_minor_ticks(ax)
            ax.set_title(f"d/d{param}: {short}", fontsize=10)
            ax.set_xlabel(xlabel.replace("\n", " ") + "\n(log scale)")
            _forest_axes(ax, labels, j == 0)
        _title(fig, f"{info.title}\ndevice: {platform}; bars: ± 2 SE")
        fig.subplots_adjust(wspace=0.12)
        _legend(fig, entries, drawn)
        _save(fig, path)
    info.not_drawn = sorted(set(info.not_drawn))
    return info
