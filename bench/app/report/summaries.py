"""Report statistics: tidy results -> per-(cell, parameter) summaries, cost-normalised variances
and leaderboards (the figures, sections and pages are built from these in the sibling modules).

Statistics used here (all computed in pandas from the stored per-coordinate statistics):

* Coordinates. A parameter with d > 1 coordinates is summarised by the mean over its coordinates:
  mean variance = trace(Cov) / d, the average per-coordinate variance, with its standard error
  from the parameter's `tensor` row (the grouped jackknife of the trace, which accounts for the
  coordinates' correlation; gradbench.core.aggregates). Results without tensor rows fall back to
  the mean of the coordinates' SEs, an upper bound that needs no independence (Minkowski). The
  bias is summarised by the mean bias and mean SE over the coordinate rows present.
* Reliability: a (cell, parameter) is `reliable` when every row of it is (no heavy tail, no
  rare states the sample may have missed; gradbench.core.reliability), and carries the reason of
  the first row that is not. Figures show the bias relative to and along the true
  gradient g instead, b.g / |g|^2, which cannot cancel across coordinates (softmax logits'
  gradients and biases sum to zero, so their mean bias is 0 whatever the estimator); its SE bound
  is sum |g_i| se_i / |g|^2. Bias orthogonal to g is caught by the bias test below.
* Bias test: gradbench.results.decisions, as everywhere. A cell (suite setting x estimator x
  hyperparameters x device) counts as measurably biased when some coordinate of some parameter
  has z = |bias| / SE > max(4, Phi^-1(1 - alpha / (2 m))), m the coordinates tested in the cell
  (a Bonferroni bound: per-cell false-alarm rate <= alpha = decisions.CELL_ALPHA).
* Rounding. Deterministic estimators have SE 0, so the SE gets the decisions' rounding floor
  (sqrt(eps) of the dtype x max(|truth|, |mean|)), and a variance below the square of that floor
  is reported as 0.
* Cost normalisation. Averaging B / c independent estimates that cost c each (evaluations of f,
  or seconds) has variance v c / B, so v * c is the variance at a unit budget and compares a cheap
  noisy estimator with an expensive quiet one. SE (delta method, v and c measured independently):
  se(v c) = sqrt((c se_v)^2 + (v se_c)^2); evaluation counts are exact (se_c = 0).
* Leaderboard ratio r = a / b of two independent cells: se(r) = r sqrt((se_a/a)^2 + (se_b/b)^2).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradbench.app.errors import BenchError
from gradbench.results import decisions
from gradbench.results.store import read_results

# (column, its SE column, axis label, short name) of the three quantities compared.
METRICS = (
    ("variance", "variance_se", "variance of one estimate", "variance"),
    ("var_x_evals", "var_x_evals_se", "variance × f-evaluations\nper estimate",
     "variance × evaluations"),
    ("var_x_seconds", "var_x_seconds_se", "variance × seconds\nper estimate [s]",
     "variance × seconds"),
)
# Optional columns the report reads; older or foreign files may lack them.
_OPTIONAL = {"seconds_per_estimate_se": np.nan, "unbiased": np.nan, "estimator_family": "",
             "device_name": "", "dtype": "float64", "started_at": "", "nonfinite": 0,
             "git_commit": "", "torch_version": "", "threads": np.nan, "command": "",
             "mean": np.nan, "level": "coord", "reliable": True, "mean_reliable": True,
             "reliability_reason": ""}


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
        return ["suite", "settings", *self.settings, "estimator", "hyperparams", *self.hypers,
                "device", "dtype"]


def _json_names(part: pd.DataFrame, column: str) -> list[str]:
    names: dict[str, None] = {}
    for text in part[column].dropna().unique():
        names.update(dict.fromkeys(json.loads(text)))
    return list(names)


def suite_columns(part: pd.DataFrame) -> SuiteColumns:
    """Settings and hyperparameters from the rows' own `settings` and `hyperparams` key columns
    (the schema declares them; nothing is guessed from which columns exist)."""
    settings = _json_names(part, "settings")
    hypers = [h for h in _json_names(part, "hyperparams") if h not in settings]
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
        unique = ordered.drop_duplicates(subset=[*cols.keys, "param", "level", "coord"],
                                         keep="last")
        dropped += len(part) - len(unique)
        parts.append(unique)
    return pd.concat(parts, ignore_index=True), dropped


def _fill_unbiased(frame: pd.DataFrame) -> pd.DataFrame:
    """`unbiased` as a plain bool; where a file lacks it, ask the estimator registry, and
    assume unbiased-by-design for estimators it does not know (the bias test still applies)."""
    known: dict[str, bool] = {}
    try:
        from gradbench.core.estimator import all_estimators

        known = {name: est.unbiased for name, est in all_estimators().items()}
    except Exception:  # results outlive estimators; the measured bias test still applies
        pass
    fallback = frame["estimator"].map(lambda name: known.get(str(name), True))
    unbiased = frame["unbiased"].astype(object).where(frame["unbiased"].notna(), fallback)
    return frame.assign(unbiased=unbiased.astype(bool))


# ---------------------------------------------------------------- summaries


def format_value(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{int(value)}" if float(value).is_integer() else f"{value:g}"
    return str(value)


def variant_label(row: Any, cols: SuiteColumns, exclude: Iterable[str] = ()) -> str:
    """The estimator's name, plus the hyperparameters that take several values for it."""
    name = str(row["estimator"])
    shown = [h for h in cols.variant_hypers.get(name, []) if h not in set(exclude)]
    parts = [f"{h}={format_value(row[h])}" for h in shown if pd.notna(row[h])]
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
    parts = [_summarize_suite(whole) for _, whole in frame.groupby("suite", sort=True)]
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


def _summarize_suite(whole: pd.DataFrame) -> pd.DataFrame:
    """One suite's rows summarised per (cell, parameter), with the cell's bias test and the
    variant label; the _gb, _gg, _gse sums feed the relative bias (summarize)."""
    cols = suite_columns(whole)
    keys = cols.keys
    tensors = whole[whole["level"] == "tensor"]
    grouped = _coordinate_rows(whole[whole["level"] != "tensor"]).groupby(
        [*keys, "param"], dropna=False, sort=False)
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
        _decide_z=("_z_skew", "max"),
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
        reliable=("reliable", "all"),
        mean_reliable=("mean_reliable", "all"),
        reliability_reason=("reliability_reason", _first_reason),
    ).reset_index()
    agg = _with_tensor_rows(agg, tensors, [*keys, "param"])
    # The bias test is per cell: all coordinates of all its parameters.
    cell = agg.groupby(keys, dropna=False, sort=False)
    tested = cell["coords"].transform("sum")
    worst = cell["_decide_z"].transform("max")  # skewness-adjusted (decisions.skew_adjusted_z)
    agg["bias_z_threshold"] = [decisions.bias_threshold(int(m)) for m in tested]
    agg["measured_biased"] = (worst > agg["bias_z_threshold"]).fillna(False).astype(bool)
    agg["variant"] = [variant_label(row, cols) for _, row in agg.iterrows()]
    return agg.drop(columns="_decide_z")


def _coordinate_rows(part: pd.DataFrame) -> pd.DataFrame:
    """Coordinate rows with what their aggregation needs: each coordinate's bias z, the terms
    of the relative bias (_gb = g b, _gg = g², _gse = |g| SE) and variances at rounding level
    set to 0."""
    z = decisions.bias_z(part["bias"].to_numpy(float), part["bias_se"].to_numpy(float),
                         part["truth"].to_numpy(float), part["mean"].to_numpy(float),
                         part["dtype"].astype(str).to_numpy())
    # A variance at rounding level (a deterministic estimator) is reported as 0, not as 1e-31
    # stretching a log axis over 30 decades; the parquet keeps the raw value.
    floor = decisions.rounding_floor(part["dtype"].astype(str).to_numpy(),
                                     part["truth"].to_numpy(float),
                                     part["mean"].to_numpy(float))
    rounding = part["variance"].to_numpy(float) <= floor**2
    return part.assign(
        _abs_truth=part["truth"].abs(), _z=z,
        _z_skew=decisions.skew_adjusted_z(
            z, part["skewness"].to_numpy(float) if "skewness" in part else np.nan,
            part["n"].to_numpy(float)),
        _gb=part["truth"] * part["bias"], _gg=part["truth"] ** 2,
        _gse=part["truth"].abs() * part["bias_se"],
        variance=part["variance"].where(~rounding, 0.0),
        variance_se=part["variance_se"].where(~rounding, 0.0))


def _first_reason(reasons: pd.Series) -> str:
    found = [str(r) for r in reasons if isinstance(r, str) and r]
    return found[0] if found else ""


def _with_tensor_rows(agg: pd.DataFrame, tensors: pd.DataFrame, keys: list[str]
                      ) -> pd.DataFrame:
    """Take the mean coordinate variance and its jackknife SE, the coordinate count and the
    worst coordinate's bias z from the parameters' tensor rows, where there are some."""
    if tensors.empty:
        return agg
    z = decisions.bias_z(tensors["bias"].to_numpy(float), tensors["bias_se"].to_numpy(float),
                         tensors["truth"].to_numpy(float), tensors["mean"].to_numpy(float),
                         tensors["dtype"].astype(str).to_numpy())
    extra = tensors.assign(_tensor_z=z)[[*keys, "mean_coord_variance", "mean_coord_variance_se",
                                         "param_size", "_tensor_z", "reliable",
                                         "mean_reliable", "reliability_reason"]]
    extra = extra.rename(columns={"reliable": "_t_reliable", "mean_reliable": "_t_mean",
                                  "reliability_reason": "_t_reason"})
    out = agg.merge(extra, on=keys, how="left")
    has = out["mean_coord_variance"].notna()
    rounding = out["variance"] == 0.0  # set to 0 at rounding level above: keep it
    out["variance"] = out["variance"].where(~has | rounding, out["mean_coord_variance"])
    out["variance_se"] = out["variance_se"].where(~has | rounding,
                                                  out["mean_coord_variance_se"])
    out["coords"] = out["param_size"].where(out["param_size"].notna(), out["coords"]).astype(int)
    out["max_bias_z"] = np.fmax(out["max_bias_z"], out["_tensor_z"])
    out["_decide_z"] = np.fmax(out["_decide_z"], out["_tensor_z"])
    out["reliable"] = out["reliable"] & out["_t_reliable"].fillna(True).astype(bool)
    out["mean_reliable"] = out["mean_reliable"] & out["_t_mean"].fillna(True).astype(bool)
    out["reliability_reason"] = out["reliability_reason"].where(
        out["reliability_reason"] != "", out["_t_reason"].fillna(""))
    return out.drop(columns=["mean_coord_variance", "mean_coord_variance_se", "param_size",
                             "_tensor_z", "_t_reliable", "_t_mean", "_t_reason"])


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
