"""The training part of `bench report`: one section per trained suite setting, with its figures,
captions and final table, rendered as HTML and Markdown for builder.py to place."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gradbench.app.report import training_figures as tfigs
from gradbench.app.report.figure_style import FigureInfo, Style
from gradbench.app.report.sections import slug
from gradbench.app.report.training_summaries import final_table, metrics, own_rows, primary


@dataclass
class TrainingSection:
    suite: str
    settings: str
    figures: list[tuple[FigureInfo, str]]
    table: pd.DataFrame  # formatted final table
    note: str  # what the objective is, the target, how many seeds

    @property
    def anchor(self) -> str:
        return file_stem(self.suite, self.settings)


def file_stem(suite: str, settings: str) -> str:
    """train-SUITE-name1value1-name2value2 for a section's files and anchor."""
    values = "-".join(f"{k}{v}" for k, v in json.loads(settings).items())
    return slug(f"train-{suite}-{values}" if values else f"train-{suite}")


def _pm(value: float, se: float) -> str:
    if value != value:
        return "n/a"
    return f"{value:.5g}" + ("" if se != se else f" ± {se:.2g}")


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The final table with values ± SE in one column each."""
    shown = {"estimator": table["variant"], "seeds": table["seeds"],
             "steps": table["step"]}
    labels = [c for c in table.columns if f"{c} SE" in table.columns]
    for label in labels:
        shown[f"{label} ± SE"] = [_pm(v, s) for v, s in
                                  zip(table[label], table[f"{label} SE"], strict=True)]
    shown["evaluations of f"] = table["evals"].map(lambda v: f"{v:.4g}")
    shown["diverged seeds"] = table["diverged"]
    shown["steps to target ± SE"] = [_pm(v, s) for v, s in
                                     zip(table["target steps"], table["target steps_se"],
                                         strict=True)]
    shown["seconds to target ± SE"] = [_pm(v, s) for v, s in
                                       zip(table["target seconds"], table["target seconds_se"],
                                           strict=True)]
    shown["seeds reaching target"] = [f"{int(r)}/{int(n)}" for r, n in
                                      zip(table["target reached"], table["seeds"], strict=True)]
    return pd.DataFrame(shown)


def training_sections(frame: pd.DataFrame, out: Path, styles: Mapping[str, Style]
                      ) -> list[TrainingSection]:
    sections = []
    for (suite, settings), part in frame.groupby(["suite", "settings"], sort=True):
        sections.append(_section(str(suite), str(settings), part, out, styles))
    return sections


def _section(suite: str, settings: str, part: pd.DataFrame, out: Path,
             styles: Mapping[str, Style]) -> TrainingSection:
    own = own_rows(part)
    name = file_stem(suite, settings)
    title = f"{suite} {settings}"
    seeds = ", ".join(f"{v}: {n}" for v, n in own.groupby("variant")["seed"].nunique().items())
    figures: list[tuple[Any, str]] = []
    info = tfigs.curves_figure(own, metrics(own), styles, out / f"{name}-curves.png", title)
    figures.append((info, (
        "Training curves: the objective (the minibatch estimate of "
        f"{own['objective_name'].iloc[0]}, mean of f over the variance draws on a fixed "
        "evaluation minibatch) and the trainer's evaluation metrics, against optimizer steps "
        "(top) and training wall seconds (bottom; evaluation excluded). Lines: mean over seeds; "
        "bands: ± 2 SE over seeds (with one seed, the measurement's own SE).")))
    info = tfigs.variance_figure(own, styles, out / f"{name}-variance.png", title)
    figures.append((info, (
        "Gradient variance along each trajectory: the variance of one estimate of the "
        "estimator that trained it, at the parameters of that step, from the variance draws on "
        "the fixed evaluation minibatch; total (trace of the covariance over all parameters) "
        "and per parameter tensor. Mean over seeds, band ± 2 SE; points with zero variance are "
        "not drawn on the log axis.")))
    info = tfigs.basket_figure(part, styles, out / f"{name}-basket.png", title)
    if info is not None:
        figures.append((info, (
            "With --basket: at each trajectory's evaluation points, the total variance of every "
            "listed estimator at the same parameters and minibatch (estimators with a warm-up "
            "fitted there); one panel per estimator that trained the trajectory.")))
    table = final_table(own)
    target = (f"Target: {primary(own).label} = {table.attrs['target']:.6g}, 90% of the mean "
              "improvement of the variant that ends worst (so every variant's mean curve "
              "reaches it); steps and seconds to it average the seeds that reach it.")
    note = (f"Objective: {own['objective_name'].iloc[0]}. Seeds per estimator: {seeds}. "
            f"Final values: mean ± SE over seeds at the last step. {target}")
    return TrainingSection(suite, settings, figures, display_table(table), note)


def section_html(section: TrainingSection) -> list[str]:
    e = html.escape
    parts = [f'<h2 id="{section.anchor}">Training: {e(section.suite)} {e(section.settings)}'
             "</h2>", f"<p>{e(section.note)}</p>", "<h3>Final values</h3>",
             section.table.to_html(index=False, border=0), "<h3>Figures</h3>"]
    for info, caption in section.figures:
        parts.append(f'<figure><img src="{e(info.path.name)}" alt="{e(info.title)}">'
                     f"<figcaption><b>{e(info.title)}.</b> {e(caption)}</figcaption></figure>")
    return parts


def section_markdown(section: TrainingSection, table_md: Any) -> list[str]:
    lines = [f"## Training: {section.suite} {section.settings}", "", section.note, "",
             "### Final values", "", table_md(section.table), "### Figures", ""]
    for info, caption in section.figures:
        lines += [f"![{info.title}]({info.path.name})", "", f"*{caption}*", ""]
    return lines
