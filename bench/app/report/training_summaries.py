"""Statistics behind the training part of `bench report` (and `bench train`'s closing table):
bench train's rows -> curves over seeds, variance along the trajectory, the final table and
the steps and seconds to reach a target.

Statistics (all over the trajectories' seeds, which are independent replications):
* A curve point (a variant at one step) is the mean over seeds of the per-seed values; its SE is
  sd / sqrt(S) over the S seeds, which holds the spread of both the training paths and each
  measurement's own noise. With one seed there is no spread to measure, and the SE is the
  measurement's own (objective_se, eval_se[...], variance_se[...]): conditional on that path.
* Seconds at a step: the mean over seeds (a curve against seconds plots means against means).
* Target: per section, on the primary metric (the trainer's first evaluation metric, else the
  objective), 90% of the improvement that the variant ending worst makes on average: start +
  0.9 (worst final mean - start), start being the mean at step 0 (every trajectory starts from
  the same parameters). So every variant's mean curve reaches it, and the faster ones sooner. A
  seed reaches it at its first evaluation step at or beyond it; steps and seconds to the target
  are averaged over the seeds that reach it (their count is shown).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gradbench.core.schema import family_column, split_family_column
from gradbench.results.store import read_training, training_files

# Columns that, with `seed`, identify a trajectory; a variant is the same without `seed`.
CONFIG = ["suite", "settings", "estimator", "hyperparams", "device", "dtype", "optimizer",
          "learning_rate", "train_steps", "eval_every", "refit_every", "variance_draws",
          "minibatch"]
OBJECTIVE = "objective"
TARGET_FRACTION = 0.9  # of the worst variant's mean improvement (module docstring)


@dataclass(frozen=True)
class Metric:
    """A quantity plotted along trajectories: its column, SE column, label and direction."""

    column: str
    se_column: str
    label: str
    higher_is_better: bool = False


def load_training(paths: Sequence[Path]) -> pd.DataFrame | None:
    """bench train's rows under `paths` (None when there are none); where several runs trained
    the same trajectory, the latest run's rows."""
    if not training_files(*paths):
        return None
    frame = read_training(*paths)
    ordered = frame.sort_values(["started_at", "run_id"], kind="stable")
    keys = [*CONFIG, "seed", "step", "variance_of", "variance_of_hyperparams"]
    latest = ordered.drop_duplicates(subset=keys, keep="last")
    return latest.assign(variant=variant_labels(latest)).reset_index(drop=True)


def variant_labels(frame: pd.DataFrame) -> pd.Series:
    """The estimator's name, plus what varies among the section's trajectories of it
    (hyperparameters as JSON, optimizer, learning rate)."""
    labels = frame["estimator"].astype(str)
    for estimator, rows in frame.groupby("estimator"):
        extra = pd.Series("", index=rows.index)
        if rows["hyperparams"].nunique() > 1:
            extra += " " + rows["hyperparams"].astype(str)
        for column in ("optimizer", "learning_rate"):
            if frame[column].nunique() > 1:
                extra += f" {column.replace('_', ' ')}=" + rows[column].map(_fmt)
        labels.loc[rows.index] = str(estimator) + extra
    return labels


def _fmt(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def measured_labels(frame: pd.DataFrame) -> pd.Series:
    """Label of the estimator whose variance a row holds (basket rows)."""
    several = frame.groupby("variance_of")["variance_of_hyperparams"].transform("nunique") > 1
    base = frame["variance_of"].astype(str)
    return base.where(~several, base + " " + frame["variance_of_hyperparams"].astype(str))


def metrics(frame: pd.DataFrame) -> list[Metric]:
    """The objective, then the trainer's evaluation metrics in its order."""
    out = [Metric(OBJECTIVE, "objective_se", OBJECTIVE)]
    seen: set[str] = set()
    for text in frame["evaluations"].dropna().unique():
        for item in json.loads(text):
            if item["name"] not in seen and family_column("eval", item["name"]) in frame:
                seen.add(item["name"])
                out.append(Metric(family_column("eval", item["name"]),
                                  family_column("eval_se", item["name"]), item["name"],
                                  bool(item["higher_is_better"])))
    return out


def primary(frame: pd.DataFrame) -> Metric:
    found = metrics(frame)
    return found[1] if len(found) > 1 else found[0]


def variance_columns(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(column, SE column, label): the total, then each parameter tensor."""
    out = [("variance", "variance_se", "total (all parameters)")]
    for column in frame.columns:
        split = split_family_column(column)
        if split is not None and split[0] == "variance" and frame[column].notna().any():
            out.append((column, family_column("variance_se", split[1]), split[1]))
    return out


def own_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per trajectory and step: the trajectory's own estimator's measurement."""
    return frame[frame["own_variance"].astype(bool)]


def over_seeds(rows: pd.DataFrame, keys: list[str], column: str, se_column: str
               ) -> pd.DataFrame:
    """Mean over seeds of `column` per `keys` group, its SE (module docstring) and seeds."""
    grouped = rows.groupby(keys, sort=True, dropna=False)
    out = grouped.agg(value=(column, "mean"), sd=(column, "std"), seeds=(column, "count"),
                      own_se=(se_column, "mean"), seconds=("seconds", "mean"))
    out["se"] = np.where(out["seeds"] > 1, out["sd"] / np.sqrt(out["seeds"].clip(lower=1)),
                         out["own_se"])
    return out.drop(columns=["sd", "own_se"]).reset_index()


def curve(rows: pd.DataFrame, metric: Metric) -> pd.DataFrame:
    """Per variant and step: mean over seeds, SE, seeds, mean seconds."""
    return over_seeds(rows, ["variant", "step"], metric.column, metric.se_column)


def _reached(values: np.ndarray, target: float, higher: bool) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return values >= target if higher else values <= target


def target_table(rows: pd.DataFrame, metric: Metric) -> tuple[float, pd.DataFrame]:
    """The target (module docstring) and, per variant, steps and seconds to reach it."""
    points = curve(rows, metric).sort_values("step")
    finals = points.groupby("variant").last()["value"]
    start = float(rows.loc[rows["step"] == rows["step"].min(), metric.column].mean())
    worst = float(finals.min() if metric.higher_is_better else finals.max())
    target = start + TARGET_FRACTION * (worst - start)
    records = []
    for variant, part in rows.groupby("variant", sort=True):
        hits = []
        for _, path in part.sort_values("step").groupby("seed"):
            mask = _reached(path[metric.column].to_numpy(float), target,
                            metric.higher_is_better)
            if mask.any():
                first = path.iloc[int(np.argmax(mask))]
                hits.append((float(first["step"]), float(first["seconds"])))
        seeds = part["seed"].nunique()
        steps = np.array([h[0] for h in hits])
        seconds = np.array([h[1] for h in hits])
        records.append({"variant": variant, "reached": len(hits), "seeds": seeds,
                        "steps": steps.mean() if len(hits) else np.nan,
                        "steps_se": _se(steps), "seconds": seconds.mean() if len(hits)
                        else np.nan, "seconds_se": _se(seconds)})
    return target, pd.DataFrame(records)


def _se(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else np.nan


def final_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per variant, at its last evaluation step: every metric's mean and SE over seeds, the
    total gradient variance, training seconds and evaluations of f, then steps and seconds to
    the target (on the primary metric)."""
    last = rows[rows["step"] == rows.groupby("trajectory_id")["step"].transform("max")]
    table = last.groupby("variant", sort=True).agg(
        seeds=("seed", "nunique"), step=("step", "max"), evals=("evals", "mean"),
        diverged=("diverged_at", lambda s: int((s >= 0).sum())))
    for metric in [*metrics(rows), Metric("variance", "variance_se", "gradient variance"),
                   Metric("seconds", "seconds", "seconds")]:
        summary = over_seeds(last.assign(_zero=0.0), ["variant"], metric.column,
                             metric.se_column if metric.column != "seconds" else "_zero")
        table[metric.label] = summary.set_index("variant")["value"]
        table[f"{metric.label} SE"] = summary.set_index("variant")["se"]
    target, reach = target_table(rows, primary(rows))
    table = table.join(reach.set_index("variant")[["reached", "steps", "steps_se", "seconds",
                                                    "seconds_se"]].add_prefix("target "))
    table.attrs["target"] = target
    table.attrs["target_metric"] = primary(rows).label
    return table.reset_index()
