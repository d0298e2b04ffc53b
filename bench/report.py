"""Comparison reports: tidy results -> per-(cell, parameter) summaries, cost-normalised variances,
leaderboards, PNG figures (bench/report_figures.py) and one self-contained folder with index.html
and report.md.

Statistics used here (all computed in pandas from the stored per-coordinate statistics):

* Coordinates. A parameter with d > 1 coordinates is summarised by the mean over its coordinates:
  mean variance = trace(Cov) / d, the average per-coordinate variance. Its standard error is taken
  as the mean of the coordinates' SEs, an upper bound that needs no independence between the
  coordinates (they come from the same samples): sd(sum X_i) <= sum sd(X_i) (Minkowski). The same
  is done for the bias (mean bias, mean SE). Figures show the bias relative to and along the true
  gradient g instead, b.g / |g|^2, which cannot cancel across coordinates (softmax logits'
  gradients and biases sum to zero, so their mean bias is 0 whatever the estimator); its SE bound
  is sum |g_i| se_i / |g|^2. Bias orthogonal to g is caught by the bias test below.
* Bias test. A cell (suite setting x estimator x hyperparameters x device) counts as measurably
  biased when some coordinate of some parameter has |bias| > z * bias_se with
  z = max(4, Phi^-1(1 - ALPHA / (2 m))), m = coordinates tested in the cell: a Bonferroni bound
  keeps the false-alarm rate per cell <= ALPHA however many coordinates it has.
* Rounding. Deterministic estimators have SE 0, so the bias test gives the SE a floor of 1000
  ulps of the gradient (eps of the run's dtype x max(|truth|, |mean|)), and a variance below the
  square of that floor is reported as 0.
* Cost normalisation. Averaging B / c independent estimates that cost c each (evaluations of f,
  or seconds) has variance v c / B, so v * c is the variance at a unit budget and compares a cheap
  noisy estimator with an expensive quiet one. SE (delta method, v and c measured independently):
  se(v c) = sqrt((c se_v)^2 + (v se_c)^2); evaluation counts are exact (se_c = 0).
* Leaderboard ratio r = a / b of two independent cells: se(r) = r sqrt((se_a/a)^2 + (se_b/b)^2).
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from bench.errors import BenchError
from bench.store import RUN_FILE, prepare_out, read_results, setting_columns
from bench.table import fmt

ALPHA = 1e-3  # family-wise false-alarm rate of the bias test, per cell
MIN_Z = 4.0  # never flag below 4 SE (the terminal table's convention)

# (column, its SE column, axis label, short name) of the three quantities compared.
METRICS = (
    ("variance", "variance_se", "variance of one estimate", "variance"),
    ("var_x_evals", "var_x_evals_se", "variance × f-evaluations\nper estimate",
     "variance × evaluations"),
    ("var_x_seconds", "var_x_seconds_se", "variance × seconds\nper estimate [s]",
     "variance × seconds"),
)
# Columns `summarize` adds (never settings or hyperparameters).
DERIVED_COLUMNS = frozenset({
    "coords", "truth_scale", "max_bias_z", "bias_z_threshold", "measured_biased", "rel_bias",
    "rel_bias_se", "var_x_evals", "var_x_evals_se", "var_x_seconds", "var_x_seconds_se",
    "platform", "variant", "python_version",
})
# Optional columns the report reads; older or foreign files may lack them.
_OPTIONAL = {"seconds_per_estimate_se": np.nan, "unbiased": np.nan, "estimator_family": "",
             "device_name": "", "dtype": "float64", "started_at": "", "nonfinite": 0,
             "git_commit": "", "torch_version": "", "threads": np.nan, "command": "",
             "mean": np.nan}


def bias_threshold(coords: int) -> float:
    """|bias| / SE above which a cell with `coords` tested coordinates counts as biased."""
    return max(MIN_Z, float(norm.isf(ALPHA / (2 * max(1, int(coords))))))


def cost_normalised(variance: Any, variance_se: Any, cost: Any, cost_se: Any = 0.0
                    ) -> tuple[Any, Any]:
    """variance x cost and its delta-method SE (variance and cost measured independently)."""
    value = variance * cost
    se = np.sqrt((cost * variance_se) ** 2 + (variance * cost_se) ** 2)
    return value, se


def ratio_se(a: Any, a_se: Any, b: Any, b_se: Any) -> tuple[Any, Any]:
    """a / b and its delta-method SE for independent a and b."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = a / b
        se = np.abs(r) * np.sqrt((a_se / a) ** 2 + (b_se / b) ** 2)
    return r, se


# ---------------------------------------------------------------- columns of a suite


@dataclass
class SuiteColumns:
    """Which columns of one suite's rows are settings and which are estimator hyperparameters."""

    settings: list[str]
    hypers: list[str]
    swept: list[str] = field(default_factory=list)  # settings with more than one value
    fixed: dict[str, Any] = field(default_factory=dict)  # settings with one value
    swept_hypers: list[str] = field(default_factory=list)
    # Per estimator, the hyperparameters that take several values (its lines are told apart).
    variant_hypers: dict[str, list[str]] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        """Columns that identify a cell (one measurement), parameter excluded."""
        return ["suite", *self.settings, "estimator", *self.hypers, "device", "dtype"]


def _registered_settings(suite: str) -> list[str] | None:
    try:
        from suites import all_suites

        found = all_suites().get(suite)
    except Exception:  # the report must work on results whose suite is no longer registered
        return None
    return list(found.settings) if found is not None else None


def suite_columns(part: pd.DataFrame) -> SuiteColumns:
    """Settings come from the suite registry when the suite is known; otherwise a column is a
    setting when every row of the suite has it (hyperparameters are null for the estimators
    without them)."""
    candidates = [c for c in setting_columns(part)
                  if c not in DERIVED_COLUMNS and part[c].notna().any()]
    suite = str(part["suite"].iloc[0])
    registered = _registered_settings(suite)
    if registered is not None:
        settings = [c for c in candidates if c in registered]
    else:
        settings = [c for c in candidates if part[c].notna().all()]
    hypers = [c for c in candidates if c not in settings]
    swept = [c for c in settings if part[c].nunique(dropna=True) > 1]
    fixed = {c: part[c].dropna().iloc[0] for c in settings if c not in swept}
    swept_hypers = [c for c in hypers if part[c].nunique(dropna=True) > 1]
    variant_hypers = {
        str(name): [h for h in swept_hypers if rows[h].nunique(dropna=True) > 1]
        for name, rows in part.groupby("estimator", sort=True)
    }
    return SuiteColumns(settings, hypers, swept, fixed, swept_hypers, variant_hypers)


# ---------------------------------------------------------------- loading


def load(paths: Sequence[Path]) -> tuple[pd.DataFrame, int]:
    """Read results; where several runs measured the same cell, keep the latest run's rows.
    Returns the rows and how many older rows were superseded."""
    if not paths:
        raise BenchError("no results given; pass result folders or .parquet files "
                         "(bench run writes them under results/)")
    frame = read_results(*paths)
    if frame.empty:
        raise BenchError(f"{', '.join(map(str, paths))} hold no result rows; "
                         "run `bench run --suite NAME` first")
    for column, default in _OPTIONAL.items():
        if column not in frame:
            frame[column] = default
    frame = _fill_unbiased(frame)
    dropped = 0
    parts = []
    for _, part in frame.groupby("suite", sort=True):
        cols = suite_columns(part)
        ordered = part.sort_values(["started_at", "run_id"], kind="stable")
        unique = ordered.drop_duplicates(subset=[*cols.keys, "param", "coord"], keep="last")
        dropped += len(part) - len(unique)
        parts.append(unique)
    return pd.concat(parts, ignore_index=True), dropped


def _fill_unbiased(frame: pd.DataFrame) -> pd.DataFrame:
    """`unbiased` as a plain bool; where a file lacks it, ask the estimator registry, and
    assume unbiased-by-design for estimators it does not know (the bias test still applies)."""
    known: dict[str, bool] = {}
    try:
        from estimators import all_estimators

        known = {name: est.unbiased for name, est in all_estimators().items()}
    except Exception:  # results outlive estimators; the measured bias test still applies
        pass
    fallback = frame["estimator"].map(lambda name: known.get(str(name), True))
    unbiased = frame["unbiased"].astype(object).where(frame["unbiased"].notna(), fallback)
    return frame.assign(unbiased=unbiased.astype(bool))


# ---------------------------------------------------------------- summaries


def _format_value(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{int(value)}" if float(value).is_integer() else f"{value:g}"
    return str(value)


def variant_label(row: Any, cols: SuiteColumns, exclude: Iterable[str] = ()) -> str:
    """The estimator's name, plus the hyperparameters that take several values for it."""
    name = str(row["estimator"])
    shown = [h for h in cols.variant_hypers.get(name, []) if h not in set(exclude)]
    parts = [f"{h}={_format_value(row[h])}" for h in shown if pd.notna(row[h])]
    return f"{name} ({', '.join(parts)})" if parts else name


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, parameter): coordinates averaged (module docstring), the cell's bias
    test, cost-normalised variances, relative bias, platform and variant label."""
    if frame.empty:
        raise BenchError("no result rows to summarise; run `bench run --suite NAME` first")
    for column, default in _OPTIONAL.items():
        if column not in frame:
            frame = frame.assign(**{column: default})
    dtypes = frame["dtype"].nunique(dropna=True)
    parts = []
    for _, part in frame.groupby("suite", sort=True):
        cols = suite_columns(part)
        keys = cols.keys
        bias, se = part["bias"].to_numpy(float), part["bias_se"].to_numpy(float)
        # Deterministic estimators (exact, naive) have se = 0: a rounding-level bias must not
        # count as infinitely significant, so SE gets a floor of 1000 ulps of the gradient.
        eps = np.where(part["dtype"].astype(str) == "float32", np.finfo(np.float32).eps,
                       np.finfo(np.float64).eps)
        scale = np.fmax(part["truth"].abs().to_numpy(float), part["mean"].abs().to_numpy(float))
        se = np.sqrt(se**2 + (1e3 * eps * scale) ** 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.abs(bias) / se
        z = np.where((se == 0) & (bias == 0), 0.0, z)  # exactly right and exactly known
        # Likewise a variance at rounding level (a deterministic estimator) is reported as 0, not
        # as 1e-31 stretching a log axis over 30 decades; the parquet keeps the raw value.
        rounding = part["variance"].to_numpy(float) <= (1e3 * eps * scale) ** 2
        work = part.assign(
            _abs_truth=part["truth"].abs(), _z=z,
            _gb=part["truth"] * part["bias"], _gg=part["truth"] ** 2,
            _gse=part["truth"].abs() * part["bias_se"],
            variance=part["variance"].where(~rounding, 0.0),
            variance_se=part["variance_se"].where(~rounding, 0.0))
        grouped = work.groupby([*keys, "param"], dropna=False, sort=False)
        agg = grouped.agg(
            coords=("coord", "size"),
            variance=("variance", "mean"),
            variance_se=("variance_se", "mean"),
            bias=("bias", "mean"),
            bias_se=("bias_se", "mean"),
            truth=("truth", "mean"),
            truth_scale=("_abs_truth", "mean"),
            _gb=("_gb", "sum"), _gg=("_gg", "sum"), _gse=("_gse", "sum"),
            max_bias_z=("_z", "max"),
            n=("n", "min"),
            nonfinite=("nonfinite", "sum"),
            evals_per_estimate=("evals_per_estimate", "first"),
            seconds_per_estimate=("seconds_per_estimate", "first"),
            seconds_per_estimate_se=("seconds_per_estimate_se", "first"),
            unbiased=("unbiased", "first"),
            estimator_family=("estimator_family", "first"),
            device_name=("device_name", "first"),
            truth_method=("truth_method", "first"),
            run_id=("run_id", "first"),
        ).reset_index()
        # The bias test is per cell: all coordinates of all its parameters.
        cell = agg.groupby(keys, dropna=False, sort=False)
        tested = cell["coords"].transform("sum")
        worst = cell["max_bias_z"].transform("max")
        agg["bias_z_threshold"] = [bias_threshold(m) for m in tested]
        agg["measured_biased"] = (worst > agg["bias_z_threshold"]).fillna(False).astype(bool)
        agg["variant"] = [variant_label(row, cols) for _, row in agg.iterrows()]
        parts.append(agg)
    out = pd.concat(parts, ignore_index=True)
    out["var_x_evals"], out["var_x_evals_se"] = cost_normalised(
        out["variance"], out["variance_se"], out["evals_per_estimate"])
    out["var_x_seconds"], out["var_x_seconds_se"] = cost_normalised(
        out["variance"], out["variance_se"], out["seconds_per_estimate"],
        out["seconds_per_estimate_se"])
    # Relative bias along the true gradient g: b.g / |g|^2 (0 unbiased, -1 estimates that vanish,
    # +1 twice too long). Unlike the mean bias it cannot cancel across coordinates (softmax
    # logits' gradients and biases sum to zero); SE bound sum |g_i| se_i / |g|^2 (Minkowski).
    norm2 = out["_gg"].where(out["_gg"] > 0)
    out["rel_bias"] = out["_gb"] / norm2
    out["rel_bias_se"] = out["_gse"] / norm2
    out = out.drop(columns=["_gb", "_gg", "_gse"])
    out["platform"] = out["device"].astype(str)
    if dtypes > 1:
        out["platform"] = out["platform"] + " " + out["dtype"].astype(str)
    return out


def primary_platform(part: pd.DataFrame) -> str:
    """The platform whose rows the device-independent figures use: cpu float64 if present."""
    counts = part.groupby("platform").size()
    for preferred in ("cpu", "cpu float64"):
        if preferred in counts:
            return preferred
    cpu = [p for p in counts.index if str(p).startswith("cpu")]
    return cpu[0] if cpu else str(counts.idxmax())


def leaderboard(summary: pd.DataFrame, metric: str = "var_x_evals") -> pd.DataFrame:
    """Per (suite, setting, parameter, platform): the eligible variant with the lowest `metric`,
    the runner-up, and runner-up / best (with SE). Eligible: unbiased by design and no
    significant measured bias in the cell (`measured_biased`), with a finite metric."""
    se_column = f"{metric}_se"
    rows = []
    for _, part in summary.groupby("suite", sort=True):
        cols = suite_columns(part)
        group_keys = ["suite", *cols.settings, "param", "platform"]
        for key, group in part.groupby(group_keys, dropna=False, sort=True):
            finite = np.isfinite(group[metric].to_numpy(float))
            eligible = group[group["unbiased"].astype(bool) & ~group["measured_biased"] & finite]
            ranked = eligible.sort_values([metric, "variant"], kind="stable")
            excluded = sorted(
                [f"{v} (biased by design)" for v in group.loc[~group["unbiased"], "variant"]]
                + [f"{v} (measured bias)" for v in
                   group.loc[group["unbiased"] & group["measured_biased"], "variant"]])
            record = dict(zip(group_keys, key, strict=True))
            record |= {"candidates": len(ranked), "excluded": "; ".join(excluded)}
            best = ranked.iloc[0] if len(ranked) else None
            runner = ranked.iloc[1] if len(ranked) > 1 else None
            record |= {
                "best": best["variant"] if best is not None else None,
                "best_value": best[metric] if best is not None else np.nan,
                "best_se": best[se_column] if best is not None else np.nan,
                "runner_up": runner["variant"] if runner is not None else None,
                "runner_up_value": runner[metric] if runner is not None else np.nan,
                "runner_up_se": runner[se_column] if runner is not None else np.nan,
            }
            record["ratio"], record["ratio_se"] = ratio_se(
                record["runner_up_value"], record["runner_up_se"],
                record["best_value"], record["best_se"])
            rows.append(record)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the report folder


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


def default_out(frame: pd.DataFrame) -> Path:
    runs = sorted(frame["run_id"].astype(str).unique())
    if len(runs) == 1:
        return Path("reports") / runs[0]
    return Path("reports") / dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")


def build_report(paths: Sequence[Path], out: Path | None = None) -> Path:
    """Read results, write figures + index.html + report.md + CSVs into `out`; return it."""
    paths = [Path(p) for p in paths]
    frame, superseded = load(paths)
    summary = summarize(frame)
    out = prepare_out(Path(out) if out is not None else default_out(frame))
    from bench import report_figures as figs  # matplotlib only when a report is drawn

    styles = figs.estimator_styles(summary["estimator"])
    skipped = _skipped_from_run_files(paths)
    sections = [
        _suite_section(str(suite), part, out, styles, figs, skipped.get(str(suite), {}))
        for suite, part in summary.groupby("suite", sort=True)
    ]
    summary.to_csv(out / "summary.csv", index=False, float_format="%.6g")
    boards = [leaderboard(part[part["platform"] == primary_platform(part)], "var_x_evals")
              .assign(budget="evaluations") for _, part in summary.groupby("suite")]
    boards.append(leaderboard(summary, "var_x_seconds").assign(budget="seconds"))
    pd.concat(boards, ignore_index=True).to_csv(out / "leaderboard.csv", index=False,
                                                 float_format="%.6g")
    context = _Context(paths, frame, summary, superseded, styles, sections)
    (out / "index.html").write_text(_html(context), encoding="utf-8")
    (out / "report.md").write_text(_markdown(context), encoding="utf-8")
    return out


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text)


def _suite_section(suite: str, part: pd.DataFrame, out: Path, styles: Any, figs: Any,
                   skipped: dict[str, dict[str, int]]) -> SuiteSection:
    cols = suite_columns(part)
    primary = primary_platform(part)
    platforms = sorted(part["platform"].unique(), key=lambda p: (not str(p).startswith("cpu"),
                                                                 str(p)))
    main = part[part["platform"] == primary]
    coords = int(main["coords"].max())
    coord_note = (" Parameters with several coordinates (up to "
                  f"{coords}) are summarised by the mean over coordinates; its SE is the mean of "
                  "the coordinates' SEs, an upper bound that does not assume the coordinates are "
                  "independent." if coords > 1 else "")
    constants = ", ".join(f"{k} = {_format_value(v)}" for k, v in cols.fixed.items())
    figures: list[tuple[Any, str]] = []
    slug = _slug(suite)
    for x in [*cols.swept, *cols.swept_hypers]:
        info = figs.sweep_figure(main, cols, x, styles, out / f"{slug}-variance-vs-{_slug(x)}.png",
                                 primary)
        if info is None:
            continue
        held = ", ".join(f"{k} = {_format_value(v)}" for k, v in info.fixed.items())
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
    info = figs.cost_figure(main, cols, styles, out / f"{slug}-cost.png", primary)
    figures.append((info, (
        "Every setting of the suite: variance × evaluations of f per estimate and variance × "
        f"seconds per estimate (on {primary}), ± 2 SE; smaller is better at a fixed budget. "
        "The one-time warm-up of estimators that have one (warmup_evals) is not counted."
        + coord_note + _not_drawn(info.not_drawn))))
    info = figs.bias_figure(main, cols, styles, out / f"{slug}-bias.png", primary)
    if info is not None:
        z = ", ".join(f"{bias_threshold(m):.2f} for {m} coordinate{'s' if m > 1 else ''}"
                      for m in sorted(main.groupby(cols.keys, dropna=False)["coords"]
                                      .sum().unique()))
        figures.append((info, (
            "Bias along the true gradient g, relative to it: b·g / |g|² (one coordinate: "
            "bias / truth), ± 2 SE (bound: Σ|g_i| SE_i / |g|², no independence assumed); 0 is "
            "unbiased, −1 an estimator whose estimates vanish, +1 one twice too long. A red "
            "ring means the cell's "
            "bias is significant: some coordinate of some parameter has |bias| > z SE, with z "
            "from a Bonferroni bound at family-wise false-alarm rate "
            f"{ALPHA:g} per cell and never below {MIN_Z:g} (z = {z}). The horizontal axis is "
            "symmetric-log so tiny and large biases both show." + _not_drawn(info.not_drawn))))
    info = figs.timing_figure(part, cols, styles, out / f"{slug}-time.png")
    figures.append((info, (
        "Wall time per gradient estimate, ± 2 SE over the per-chunk timings, one panel per "
        "device on a shared axis. Timings of a busy or shared machine are noisy; compare "
        "within one run." + _not_drawn(info.not_drawn))))

    raw = [("evaluations", f"Budget: evaluations of f (variance × evaluations per estimate, "
            f"{primary} rows)", leaderboard(main, "var_x_evals"))]
    for platform in platforms:
        rows = part[part["platform"] == platform]
        raw.append((f"seconds on {platform}", f"Budget: wall time on {platform} (variance × "
                    "seconds per estimate)", leaderboard(rows, "var_x_seconds")))
    boards = [(heading, _board_table(board, cols)) for _, heading, board in raw]
    design = sorted(set(main.loc[~main["unbiased"], "variant"]))
    measured = main[main["unbiased"] & main["measured_biased"]]
    excluded = [f"{v}: biased by design" for v in design]
    for variant, rows in measured.groupby("variant", sort=True):
        cells = rows.drop_duplicates(subset=cols.keys)
        excluded.append(f"{variant}: significant measured bias in {len(cells)} setting(s)")
    reasons = [f"{name} ({count} setting{'s' if count > 1 else ''}): {why}"
               for name, whys in sorted(skipped.items()) for why, count in sorted(whys.items())]
    return SuiteSection(suite, cols, primary, platforms, figures, boards,
                        _detail_table(part, cols), reasons, excluded,
                        [(budget, board) for budget, _, board in raw])


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
        record = records.setdefault(key, {k: _format_value(row[k]) for k in keys})
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
    table = pd.DataFrame({k: ordered[k].map(_format_value) for k in keys})
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
    table["max |bias|/SE"] = ordered["max_bias_z"].map(lambda z: fmt(z))
    table["significant bias"] = ordered["measured_biased"].map({True: "yes", False: ""})
    table["evals"] = ordered["evals_per_estimate"].map(lambda v: f"{v:g}")
    table["s / estimate ± SE"] = [fmt(v, s) for v, s in zip(
        ordered["seconds_per_estimate"], ordered["seconds_per_estimate_se"], strict=True)]
    return table.reset_index(drop=True)


def _skipped_from_run_files(paths: Sequence[Path]) -> dict[str, dict[str, dict[str, int]]]:
    """`not applicable` reasons recorded in the runs' _run.json (when the folders are given)."""
    from bench.store import result_files

    run_dirs: set[Path] = set()
    for path in paths:
        for file in result_files(path):
            if file.parent.name == "cells":
                run_dirs.add(file.parent.parent)
    found: dict[str, dict[str, dict[str, int]]] = {}
    for run_dir in sorted(run_dirs):
        try:
            meta = json.loads((run_dir / RUN_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        suite = str(meta.get("request", {}).get("suite", ""))
        for skip in meta.get("skipped", []) or []:
            reasons = found.setdefault(suite, {}).setdefault(str(skip.get("estimator")), {})
            reason = str(skip.get("reason"))
            reasons[reason] = reasons.get(reason, 0) + 1
    return found


# ---------------------------------------------------------------- HTML and markdown


@dataclass
class _Context:
    paths: Sequence[Path]
    frame: pd.DataFrame
    summary: pd.DataFrame
    superseded: int
    styles: Any
    sections: list[SuiteSection]


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
            "threads": _format_value(part["threads"].iloc[0]),
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
    for name in sorted(context.styles):
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
        "<nav>" + "".join(f'<a href="#{_slug(s)}">{e(s)}</a>' for s in suites) + "</nav>",
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
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_section(section: SuiteSection) -> list[str]:
    e = html.escape
    cols = section.cols
    swept = ", ".join(cols.swept + cols.swept_hypers) or "none"
    constants = ", ".join(f"{k} = {_format_value(v)}" for k, v in cols.fixed.items()) or "none"
    parts = [f'<h2 id="{_slug(section.suite)}">Suite {e(section.suite)}</h2>',
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
        constants = ", ".join(f"{k} = {_format_value(v)}" for k, v in cols.fixed.items())
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
    return "\n".join(lines)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
