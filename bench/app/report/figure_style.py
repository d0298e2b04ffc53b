"""The look shared by every figure of `bench report`: matplotlib on the headless Agg backend,
seaborn only for the look and the palette; one colour and marker per estimator across a report,
one legend outside the panels, and PNGs quantised to 256 colours."""

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


def fmt_value(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{int(value)}" if float(value).is_integer() else f"{value:g}"
    return str(value)


def save_figure(fig: plt.Figure, path: Path) -> None:
    """PNG, tight around the outside legend, quantised to 256 colours (a third of the bytes;
    flat plot colours survive it)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(colors=256, dither=Image.Dither.NONE)
    image.save(path, format="PNG", optimize=True)


def figure_title(fig: plt.Figure, text: str) -> None:
    """Two-line title above the panels; fixed margins in inches instead of tight_layout (which
    measures every text of every panel again: most of a report's drawing time)."""
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.7 / height, top=1 - 1.0 / height)
    fig.suptitle(text, y=1 - 0.08 / height, va="top", fontsize=11)


def figure_legend(fig: plt.Figure, entries: list[tuple[str, Style, bool]], drawn: set[str],
            extra: Sequence = (), lines: bool = False) -> None:
    """One legend for the whole figure, outside the panels (right), never over data; only the
    variants that appear in it (the caption names the others)."""
    handles = [Line2D([], [], color=s.color, marker=s.marker,
                      linestyle=s.linestyle if lines else "none",
                      label=legend_label(label, unbiased))
               for label, s, unbiased in entries if label in drawn]
    fig.legend(handles=[*handles, *extra], loc="upper left", bbox_to_anchor=(1.0, 0.93),
               frameon=False, title="estimator")


def legend_entries(part: pd.DataFrame, styles: Mapping[str, Style]
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


def drop_minor_ticks(ax: plt.Axes) -> None:
    """Minor ticks are invisible in this style but cost most of the drawing time; keep them only
    on log axes spanning under two decades, where they carry the only tick labels."""
    for axis, scale, (lo, hi) in ((ax.xaxis, ax.get_xscale(), ax.get_xlim()),
                                  (ax.yaxis, ax.get_yscale(), ax.get_ylim())):
        if scale == "log" and lo > 0 and hi / lo < 100:
            continue
        axis.set_minor_locator(matplotlib.ticker.NullLocator())


def dodge_offsets(count: int, width: float = 0.6) -> np.ndarray:
    if count <= 1:
        return np.zeros(max(count, 0))
    return np.linspace(-width / 2, width / 2, count)
