"""One suite's section of a report: its figures with captions, leaderboards, the detail table,
and the estimators that were skipped or excluded (with reasons)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradbench.app.report import figures as figs
from gradbench.app.report.summaries import (
    SuiteColumns,
    format_value,
    leaderboard,
    primary_platform,
    suite_columns,
)
from gradbench.app.table import fmt
from gradbench.results import decisions
from gradbench.results.store import RunMetadataMissing, read_run_json, result_files


@dataclass
class SuiteSection:
    suite: str
    cols: SuiteColumns
    primary: str
    platforms: list[str]
    figures: list[tuple[Any, str]]  # (FigureInfo, caption)
    leaderboards: list[tuple[str, pd.DataFrame]]  # (heading, display table)
    table: pd.DataFrame  # formatted summary behind the figures
    skipped: list[str]
    excluded: list[str]
    raw_boards: list[tuple[str, pd.DataFrame]]  # (budget, leaderboard rows)


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text)


def suite_section(suite: str, part: pd.DataFrame, out: Path, styles: Any,
                  skipped: dict[str, dict[str, int]]) -> SuiteSection:
    cols = suite_columns(part)
    primary = primary_platform(part)
    platforms = sorted(part["platform"].unique(), key=lambda p: (not str(p).startswith("cpu"),
                                                                 str(p)))
    main = part[part["platform"] == primary]
    figures = _figures(part, main, cols, styles, out, slug(suite), primary)
    raw = _leaderboards(part, main, primary, platforms)
    boards = [(heading, _board_table(board, cols)) for _, heading, board in raw]
    reasons = [f"{name} ({count} setting{'s' if count > 1 else ''}): {why}"
               for name, whys in sorted(skipped.items()) for why, count in sorted(whys.items())]
    return SuiteSection(suite, cols, primary, platforms, figures, boards,
                        _detail_table(part, cols), reasons, _excluded(main, cols),
                        [(budget, board) for budget, _, board in raw])


def _coord_note(main: pd.DataFrame) -> str:
    """What every variance caption must add: how parameters with several coordinates are
    summarised, and how many variances are not reliable at their n."""
    coords = int(main["coords"].max())
    note = (" Parameters with several coordinates (up to "
            f"{coords}) are summarised by the mean over coordinates, its SE the grouped "
            "jackknife SE of the parameter's total variance / coordinates (results "
            "without tensor rows: the mean of the coordinates' SEs, an upper bound)."
            if coords > 1 else "")
    unreliable = int((~main["reliable"].astype(bool)).sum())
    if unreliable:
        note += (f" {unreliable} (setting, estimator, parameter) variances are not "
                 "reliable at their n (heavy tail or rare states; marked ! in the table "
                 "below, with the reason).")
    return note


def _figures(part: pd.DataFrame, main: pd.DataFrame, cols: SuiteColumns, styles: Any,
             out: Path, name: str, primary: str) -> list[tuple[Any, str]]:
    """Every figure of the suite with its caption: one sweep per swept setting or
    hyperparameter, then cost, bias (when there is a truth) and timing; files out/name-*.png."""
    coord_note = _coord_note(main)
    figures = _sweep_figures(main, cols, styles, out, name, primary, coord_note)
    info = figs.cost_figure(main, cols, styles, out / f"{name}-cost.png", primary)
    figures.append((info, (
        "Every setting of the suite: variance × evaluations of f per estimate and variance × "
        f"seconds per estimate (on {primary}), ± 2 SE; smaller is better at a fixed budget. "
        "The one-time warm-up of estimators that have one (warmup_evals) is not counted."
        + coord_note + _not_drawn(info.not_drawn))))
    info = figs.bias_figure(main, cols, styles, out / f"{name}-bias.png", primary)
    if info is not None:
        figures.append((info, _bias_caption(main, cols, info.not_drawn)))
    info = figs.timing_figure(part, cols, styles, out / f"{name}-time.png")
    figures.append((info, (
        "Wall time per gradient estimate, ± 2 SE over the per-chunk timings, one panel per "
        "device on a shared axis. Timings of a busy or shared machine are noisy; compare "
        "within one run." + _not_drawn(info.not_drawn))))
    return figures


def _sweep_figures(main: pd.DataFrame, cols: SuiteColumns, styles: Any, out: Path, name: str,
                   primary: str, coord_note: str) -> list[tuple[Any, str]]:
    constants = ", ".join(f"{k} = {format_value(v)}" for k, v in cols.fixed.items())
    figures: list[tuple[Any, str]] = []
    for x in [*cols.swept, *cols.swept_hypers]:
        path = out / f"{name}-variance-vs-{slug(x)}.png"
        info = figs.sweep_figure(main, cols, x, styles, path, primary)
        if info is None:
            continue
        held = ", ".join(f"{k} = {format_value(v)}" for k, v in info.fixed.items())
        caption = (
            f"Top: variance of one gradient estimate against {x}, one line per estimator, band "
            "± 2 SE. Middle and bottom: the same variance times the cost of one estimate "
            f"(evaluations of f; seconds on {primary}), i.e. the variance at a fixed budget: "
            "lower is better, and a cheap noisy estimator and an expensive quiet one compare "
            "fairly. SE of the products: delta method, including the timing's SE. "
            + (f"Other swept settings held at: {held}. " if held else "")
            + (f"Constant in this suite: {constants}. " if constants else "")
            + "Bands reaching the bottom edge of a log axis extend to ≤ 0." + coord_note
            + _not_drawn(info.not_drawn))
        figures.append((info, caption))
    return figures


def _bias_caption(main: pd.DataFrame, cols: SuiteColumns, not_drawn: Sequence[str]) -> str:
    """The bias figure's caption, with the z threshold of each cell size in the suite."""
    z = ", ".join(f"{decisions.bias_threshold(int(m)):.2f} for {m} coordinate"
                  f"{'s' if m > 1 else ''}"
                  for m in sorted(main.groupby(cols.keys, dropna=False)["coords"]
                                  .sum().unique()))
    return (
        "Bias along the true gradient g, relative to it: b·g / |g|² (one coordinate: "
        "bias / truth), ± 2 SE (bound: Σ|g_i| SE_i / |g|², no independence assumed); 0 is "
        "unbiased, −1 an estimator whose estimates vanish, +1 one twice too long. A red "
        "ring means the cell's "
        "bias is significant: some coordinate of some parameter has |bias| > z SE, with z "
        "from a Bonferroni bound at family-wise false-alarm rate "
        f"{decisions.CELL_ALPHA:g} per cell and never below {decisions.MIN_Z:g} (z = {z}). "
        "The horizontal axis is "
        "symmetric-log so tiny and large biases both show." + _not_drawn(not_drawn))


def _leaderboards(part: pd.DataFrame, main: pd.DataFrame, primary: str,
                  platforms: Sequence[str]) -> list[tuple[str, str, pd.DataFrame]]:
    """(budget, heading, leaderboard rows): evaluations on the primary platform, then seconds
    on each platform."""
    raw = [("evaluations", f"Budget: evaluations of f (variance × evaluations per estimate, "
            f"{primary} rows)", leaderboard(main, "var_x_evals"))]
    for platform in platforms:
        rows = part[part["platform"] == platform]
        raw.append((f"seconds on {platform}", f"Budget: wall time on {platform} (variance × "
                    "seconds per estimate)", leaderboard(rows, "var_x_seconds")))
    return raw


def _excluded(main: pd.DataFrame, cols: SuiteColumns) -> list[str]:
    """Variants left out of the leaderboards: biased by design, or measured biased."""
    design = sorted(set(main.loc[~main["unbiased"], "variant"]))
    measured = main[main["unbiased"] & main["measured_biased"]]
    excluded = [f"{v}: biased by design" for v in design]
    for variant, rows in measured.groupby("variant", sort=True):
        cells = rows.drop_duplicates(subset=cols.keys)
        excluded.append(f"{variant}: significant measured bias in {len(cells)} setting(s)")
    return excluded


def _not_drawn(items: Sequence[str]) -> str:
    return f" Not drawn: {'; '.join(items)}." if items else ""


def _ratio_text(ratio: float, se: float) -> str:
    if ratio == np.inf:
        return "×∞ (the best has zero variance)"
    if not np.isfinite(ratio):
        return "tie (both zero variance)"
    tie = " (tie within 2 SE)" if np.isfinite(se) and ratio - 2 * se <= 1 else ""
    return f"×{fmt(ratio, se)}{tie}"


def _board_table(board: pd.DataFrame, cols: SuiteColumns) -> pd.DataFrame:
    """One row per setting; per parameter: best (value ± SE) and runner-up (× ratio ± SE)."""
    if board.empty:
        return pd.DataFrame()
    keys = list(cols.swept)
    records: dict[tuple, dict[str, str]] = {}
    for _, row in board.iterrows():
        key = tuple(row[k] for k in keys)
        record = records.setdefault(key, {k: format_value(row[k]) for k in keys})
        param = row["param"]
        if row["best"] is None or pd.isna(row["best"]):
            record[f"d/d{param}: best"] = "no eligible estimator"
            record[f"d/d{param}: runner-up (ratio)"] = ""
            continue
        record[f"d/d{param}: best"] = f"{row['best']} ({fmt(row['best_value'], row['best_se'])})"
        record[f"d/d{param}: runner-up (ratio)"] = (
            f"{row['runner_up']} {_ratio_text(row['ratio'], row['ratio_se'])}"
            if row["runner_up"] is not None and pd.notna(row["runner_up"]) else "none")
    table = pd.DataFrame(list(records.values()))
    return table if keys else table.assign(setting="(single setting)")[
        ["setting", *[c for c in table.columns if c != "setting"]]]


def _detail_table(part: pd.DataFrame, cols: SuiteColumns) -> pd.DataFrame:
    keys = list(cols.swept)
    ordered = part.sort_values([*keys, "param", "platform", "variant"], kind="stable")
    table = pd.DataFrame({k: ordered[k].map(format_value) for k in keys})
    table["estimator"] = ordered["variant"]
    table["param"] = ordered["param"]
    if part["platform"].nunique() > 1:
        table["device"] = ordered["platform"]
    table["coords"] = ordered["coords"]
    for column, label in (("variance", "variance"), ("var_x_evals", "variance × evals"),
                          ("var_x_seconds", "variance × s"),
                          ("rel_bias", "bias along truth (relative)")):
        table[f"{label} ± SE"] = [fmt(v, s) for v, s in
                                  zip(ordered[column], ordered[f"{column}_se"], strict=True)]
    table["variance ± SE"] = [f"{text} !" if not ok else text for text, ok in
                              zip(table["variance ± SE"], ordered["reliable"].astype(bool),
                                  strict=True)]
    table["reliability"] = ordered["reliability_reason"].fillna("")
    table["max |bias|/SE"] = ordered["max_bias_z"].map(lambda z: fmt(z))
    table["significant bias"] = ordered["measured_biased"].map({True: "yes", False: ""})
    table["evals"] = ordered["evals_per_estimate"].map(lambda v: f"{v:g}")
    table["s / estimate ± SE"] = [fmt(v, s) for v, s in zip(
        ordered["seconds_per_estimate"], ordered["seconds_per_estimate_se"], strict=True)]
    return table.reset_index(drop=True)


def skipped_from_run_files(paths: Sequence[Path]) -> dict[str, dict[str, dict[str, int]]]:
    """`not applicable` reasons recorded in the runs' metadata (when run folders are given)."""
    run_dirs = {file.parent for path in paths for file in result_files(Path(path))}
    found: dict[str, dict[str, dict[str, int]]] = {}
    for run_dir in sorted(run_dirs):
        try:
            meta = read_run_json(run_dir)
        except RunMetadataMissing:  # a lone file or a copied folder: no metadata to read
            continue
        if meta.get("kind") == "train":  # bench train's skips are not cells' (its own section)
            continue
        suite = str(meta.get("request", {}).get("suite", ""))
        for skip in meta.get("skipped", []) or []:
            reasons = found.setdefault(suite, {}).setdefault(str(skip.get("estimator")), {})
            reason = str(skip.get("reason"))
            reasons[reason] = reasons.get(reason, 0) + 1
    return found
