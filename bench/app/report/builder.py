"""`bench report`: read results, summarise them, draw each suite's section, and write one
self-contained folder: PNG figures, index.html, report.md and the CSV tables behind them."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from gradbench.app.report import figures as figs
from gradbench.app.report.sections import (
    SuiteSection,
    skipped_from_run_files,
    slug,
    suite_section,
)
from gradbench.app.report.summaries import (
    format_value,
    leaderboard,
    load,
    primary_platform,
    summarize,
)
from gradbench.app.report.training_section import (
    TrainingSection,
    section_html,
    section_markdown,
    training_sections,
)
from gradbench.app.report.training_summaries import load_training
from gradbench.results.store import is_training_file, prepare_out, result_files


def default_out(frame: pd.DataFrame) -> Path:
    runs = sorted(frame["run_id"].astype(str).unique())
    if len(runs) == 1:
        return Path("reports") / runs[0]
    return Path("reports") / dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")


def build_report(paths: Sequence[Path], out: Path | None = None) -> Path:
    """Read results, write figures + index.html + report.md + CSVs into `out`; return it."""
    paths = [Path(p) for p in paths]
    training = load_training(paths)  # bench train's trajectories, if any are among the paths
    trained = [] if training is None else [*training["estimator"], *training["variance_of"]]
    if training is not None and not _has_cells(paths):
        return _training_report(paths, training, out, figs.estimator_styles(trained))
    # Folders of trajectories alone are drawn by the training sections, not read as cells.
    frame, superseded = load([path for path in paths if not _only_trajectories(path)])
    summary = summarize(frame)
    out = prepare_out(Path(out) if out is not None else default_out(frame))
    styles = figs.estimator_styles([*summary["estimator"], *trained])
    skipped = skipped_from_run_files(paths)
    sections = [
        suite_section(str(suite), part, out, styles, skipped.get(str(suite), {}))
        for suite, part in summary.groupby("suite", sort=True)
    ]
    summary.to_csv(out / "summary.csv", index=False, float_format="%.6g")
    boards = [leaderboard(part[part["platform"] == primary_platform(part)], "var_x_evals")
              .assign(budget="evaluations") for _, part in summary.groupby("suite")]
    boards.append(leaderboard(summary, "var_x_seconds").assign(budget="seconds"))
    pd.concat(boards, ignore_index=True).to_csv(out / "leaderboard.csv", index=False,
                                                 float_format="%.6g")
    context = _Context(paths, frame, summary, superseded, styles, sections)
    if training is not None:
        training.to_csv(out / "training.csv", index=False, float_format="%.6g")
        context.training = training_sections(training, out, styles)
    (out / "index.html").write_text(_html(context), encoding="utf-8")
    (out / "report.md").write_text(_markdown(context), encoding="utf-8")
    return out


def _only_trajectories(path: Path) -> bool:
    files = result_files(path) if path.exists() else []
    return bool(files) and all(is_training_file(f) for f in files)


def _has_cells(paths: Sequence[Path]) -> bool:
    return any(not is_training_file(f) for path in paths for f in result_files(path))


def _training_report(paths: Sequence[Path], training: pd.DataFrame, out: Path | None,
                     styles: Any) -> Path:
    """A report of bench train's results alone: the training sections on their own page."""
    out = prepare_out(Path(out) if out is not None else default_out(training))
    training.to_csv(out / "training.csv", index=False, float_format="%.6g")
    sections = training_sections(training, out, styles)
    source = (f"Generated {_now()} from {len(training):,} training rows "
              f"({training['run_id'].nunique()} run(s)): {', '.join(map(str, paths))}. "
              "training.csv holds the rows.")
    page = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
            "<title>gradbench report: training</title>", f"<style>{_CSS}</style></head><body>",
            "<h1>gradbench report: training</h1>", f'<p class="note">{html.escape(source)}</p>',
            *[part for section in sections for part in section_html(section)],
            "</body></html>"]
    (out / "index.html").write_text("\n".join(page), encoding="utf-8")
    lines = ["# gradbench report: training", "", source, ""]
    for section in sections:
        lines += section_markdown(section, markdown_table)
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return out


@dataclass
class _Context:
    paths: Sequence[Path]
    frame: pd.DataFrame
    summary: pd.DataFrame
    superseded: int
    styles: Any
    sections: list[SuiteSection]
    training: list[TrainingSection] = field(default_factory=list)


def _runs_table(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for run_id, part in frame.groupby("run_id", sort=True):
        rows.append({
            "run": run_id,
            "suites": ", ".join(sorted(part["suite"].astype(str).unique())),
            "started": str(part["started_at"].iloc[0])[:16].replace("T", " "),
            "devices": ", ".join(sorted(f"{d} ({n})" if n else str(d) for d, n in
                                        part[["device", "device_name"]].drop_duplicates()
                                        .itertuples(index=False))),
            "estimates per cell": ", ".join(str(v) for v in sorted(part["n"].unique())),
            "git": str(part["git_commit"].iloc[0]),
            "torch": str(part["torch_version"].iloc[0]),
            "threads": format_value(part["threads"].iloc[0]),
            "command": str(part["command"].iloc[0]),
        })
    return pd.DataFrame(rows)


def _overview(context: _Context) -> pd.DataFrame:
    """Per suite and budget: how many (setting, parameter) pairs each estimator wins."""
    rows = []
    for section in context.sections:
        record = {"suite": section.suite}
        for heading, board in section.raw_boards:
            wins = board["best"].dropna().value_counts()
            clear = board["ratio"] - 2 * board["ratio_se"].fillna(0) > 1
            total = len(board)
            text = ", ".join(
                f"{name} {count}/{total} ({int((clear & (board['best'] == name)).sum())} clear)"
                for name, count in wins.items())
            record[heading] = text or "no eligible estimator"
        rows.append(record)
    return pd.DataFrame(rows).fillna("")


def _estimators(context: _Context) -> list[dict[str, str]]:
    summary = context.summary
    out = []
    for name in sorted(set(summary["estimator"].astype(str))):  # styles also cover training
        rows = summary[summary["estimator"] == name]
        color = context.styles[name].color
        out.append({
            "color": "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in color[:3])),
            "name": name,
            "family": str(rows["estimator_family"].iloc[0]),
            "unbiased": "yes" if bool(rows["unbiased"].iloc[0]) else "no (biased by design)",
            "suites": ", ".join(sorted(rows["suite"].astype(str).unique())),
        })
    return out


_READING = (
    "Each cell is one suite setting × estimator (× hyperparameters) × device, measured from "
    "many independent gradient estimates. Variance is the variance of one estimate; ± 2 SE "
    "intervals come from the stored standard errors. Cost-normalised variance multiplies it by "
    "the cost of one estimate (evaluations of f, or seconds): averaging B / c estimates of "
    "cost c gives variance v·c / B, so v·c ranks estimators at a fixed budget. A cell counts as "
    "biased when the bias test fails (see the bias figure's caption); leaderboards rank only "
    "estimators unbiased by design and without significant measured bias."
)

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1500px;
       padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 2px solid #ddd; margin-top: 2.5rem; }
figure { margin: 1.2rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9rem; color: #444; max-width: 1100px; }
table { border-collapse: collapse; font-size: .82rem; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ddd; padding: .2rem .45rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fafafa; }
.swatch { display: inline-block; width: 1.6em; height: .9em; border-radius: 2px;
          vertical-align: middle; }
.note { font-size: .9rem; color: #555; } details { margin: 1rem 0; }
summary { cursor: pointer; font-weight: 600; } nav a { margin-right: 1rem; }
"""


def _html(context: _Context) -> str:
    e = html.escape
    frame = context.frame
    suites = [s.suite for s in context.sections]
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>gradbench report: {e(', '.join(suites))}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>gradbench report</h1>",
        f'<p class="note">Generated {e(_now())} from {len(frame):,} result rows '
        f"({frame['run_id'].nunique()} run(s)): {e(', '.join(map(str, context.paths)))}."
        + (f" {context.superseded:,} rows superseded by later runs of the same cells were "
           "left out." if context.superseded else "") + "</p>",
        "<nav>" + "".join(f'<a href="#{slug(s)}">{e(s)}</a>' for s in suites)
        + "".join(f'<a href="#{t.anchor}">training: {e(t.suite)}</a>' for t in context.training)
        + "</nav>",
        "<h2>How to read this report</h2>", f"<p>{e(_READING)}</p>",
        "<h2>Overview: leaderboard wins</h2>",
        "<p class='note'>Per suite: how many (setting, parameter) pairs each estimator wins at a "
        "fixed budget of evaluations or of wall time; clear: the runner-up is worse by more "
        "than 2 SE of the ratio (details in each suite's leaderboard).</p>",
        _overview(context).to_html(index=False, border=0),
        "<h2>Estimators</h2>",
        "<table><tr><th>colour</th><th>estimator</th><th>family</th><th>unbiased</th>"
        "<th>suites</th></tr>",
    ]
    for est in _estimators(context):
        parts.append(f'<tr><td><span class="swatch" style="background:{est["color"]}"></span>'
                     f"</td><td>{e(est['name'])}</td><td>{e(est['family'])}</td>"
                     f"<td>{e(est['unbiased'])}</td><td>{e(est['suites'])}</td></tr>")
    parts.append("</table>")
    parts += ["<h2>Runs</h2>", _runs_table(frame).to_html(index=False, border=0)]
    for section in context.sections:
        parts += _html_section(section)
    for training in context.training:
        parts += section_html(training)
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_section(section: SuiteSection) -> list[str]:
    e = html.escape
    cols = section.cols
    swept = ", ".join(cols.swept + cols.swept_hypers) or "none"
    constants = ", ".join(f"{k} = {format_value(v)}" for k, v in cols.fixed.items()) or "none"
    parts = [f'<h2 id="{slug(section.suite)}">Suite {e(section.suite)}</h2>',
             f"<p>Swept: {e(swept)}. Constant: {e(constants)}. Devices: "
             f"{e(', '.join(section.platforms))}.</p>"]
    if section.skipped:
        parts.append("<p class='note'>Not run (not applicable):</p><ul class='note'>"
                     + "".join(f"<li>{e(item)}</li>" for item in section.skipped) + "</ul>")
    parts.append("<h3>Leaderboard</h3>")
    parts.append("<p class='note'>For each setting and parameter: the estimator with the lowest "
                 "variance at a fixed budget among those unbiased by design and without "
                 "significant measured bias, its value ± SE, and the runner-up with "
                 "runner-up / best ± SE (a tie when within 2 SE of 1). A zero-variance "
                 "estimator (exact enumeration) wins whenever the budget affords one of its "
                 "estimates (see its evaluations per estimate in the table below)."
                 + (" Excluded: " + e("; ".join(section.excluded)) + "." if section.excluded
                    else "") + "</p>")
    for heading, table in section.leaderboards:
        parts.append(f"<h4>{e(heading)}</h4>")
        parts.append(table.to_html(index=False, border=0) if not table.empty
                     else "<p>no rows</p>")
    parts.append("<h3>Figures</h3>")
    for info, caption in section.figures:
        name = info.path.name
        parts.append(f'<figure><img src="{e(name)}" alt="{e(info.title)}">'
                     f"<figcaption><b>{e(info.title)}.</b> {e(caption)}</figcaption></figure>")
    parts.append(f"<details><summary>Table behind the figures ({len(section.table)} rows; "
                 "all in summary.csv)</summary>")
    parts.append(section.table.to_html(index=False, border=0))
    parts.append("</details>")
    return parts


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (pandas' to_markdown needs tabulate)."""
    if table.empty:
        return "_no rows_\n"

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |"
            for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _markdown(context: _Context) -> str:
    frame = context.frame
    lines = ["# gradbench report", "",
             f"Generated {_now()} from {len(frame):,} result rows "
             f"({frame['run_id'].nunique()} run(s)). Figures and the full tables are in "
             "index.html; summary.csv and leaderboard.csv hold the numbers.", "",
             "## How to read this report", "", _READING, "",
             "## Overview: leaderboard wins", "", markdown_table(_overview(context)),
             "## Estimators", ""]
    estimators = pd.DataFrame(_estimators(context)).drop(columns="color")
    lines += [markdown_table(estimators), "## Runs", "", markdown_table(_runs_table(frame))]
    for section in context.sections:
        cols = section.cols
        swept = ", ".join(cols.swept + cols.swept_hypers) or "none"
        constants = ", ".join(f"{k} = {format_value(v)}" for k, v in cols.fixed.items())
        lines += [f"## Suite {section.suite}", "",
                  f"Swept: {swept}. Constant: {constants or 'none'}. "
                  f"Devices: {', '.join(section.platforms)}.", ""]
        if section.skipped:
            lines += ["Not run (not applicable):", "", *[f"- {item}" for item in section.skipped],
                      ""]
        lines += ["### Leaderboard", ""]
        if section.excluded:
            lines += ["Excluded: " + "; ".join(section.excluded) + ".", ""]
        for heading, table in section.leaderboards:
            lines += [f"#### {heading}", "", markdown_table(table)]
        lines += ["### Figures", ""]
        for info, caption in section.figures:
            lines += [f"![{info.title}]({info.path.name})", "", f"*{caption}*", ""]
    for training in context.training:
        lines += section_markdown(training, markdown_table)
    return "\n".join(lines)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
