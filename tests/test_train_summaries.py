"""The statistics behind bench train's tables and report, on synthetic trajectories with known
answers: means and SEs over seeds, the target and the steps to reach it, variant labels."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from gradbench.app.report import training_summaries as ts

EVALUATIONS = json.dumps([{"name": "loss", "higher_is_better": False}])


def trajectories(paths: dict[tuple[str, int], list[float]], step: int = 10) -> pd.DataFrame:
    """Rows of own-variance measurements: `paths[(estimator, seed)]` is eval[loss] at steps
    0, step, 2 step, ...; seconds = step / 100; objective = eval[loss] + 1."""
    rows = []
    for (estimator, seed), values in paths.items():
        for k, value in enumerate(values):
            rows.append({
                "suite": "s", "settings": "{}", "estimator": estimator, "hyperparams": "{}",
                "seed": seed, "step": k * step, "seconds": k * step / 100, "evals": k * step,
                "eval[loss]": value, "eval_se[loss]": 0.0, "objective": value + 1,
                "objective_se": 0.5, "variance": 2.0 + seed, "variance_se": 0.1,
                "objective_name": "f", "evaluations": EVALUATIONS, "own_variance": True,
                "trajectory_id": f"{estimator}-{seed}", "diverged_at": -1,
                "optimizer": "adam", "learning_rate": 0.1, "variance_of": estimator,
                "variance_of_hyperparams": "{}",
            })
    frame = pd.DataFrame(rows)
    return frame.assign(variant=ts.variant_labels(frame))


def test_curve_points_are_means_over_seeds_with_their_se():
    frame = trajectories({("a", 0): [4.0, 3.0], ("a", 1): [4.0, 2.0]})
    points = ts.curve(frame, ts.primary(frame)).set_index("step")
    assert points.loc[10, "value"] == 2.5
    assert points.loc[10, "se"] == pytest.approx(np.std([3.0, 2.0], ddof=1) / math.sqrt(2))
    assert points.loc[10, "seeds"] == 2
    # One seed: no spread to measure, the measurement's own SE (objective_se here).
    one = trajectories({("a", 0): [4.0, 3.0]})
    objective = ts.metrics(one)[0]
    assert ts.curve(one, objective).set_index("step").loc[10, "se"] == 0.5


def test_target_is_ninety_percent_of_the_worst_improvement():
    frame = trajectories({("fast", 0): [10.0, 4.0, 2.0, 1.0], ("fast", 1): [10.0, 6.0, 2.0, 1.0],
                          ("slow", 0): [10.0, 9.0, 7.0, 5.0], ("slow", 1): [10.0, 8.0, 6.0, 3.0]})
    target, reach = ts.target_table(frame, ts.primary(frame))
    assert target == pytest.approx(10.0 + 0.9 * (4.0 - 10.0))  # slow ends at mean 4: 4.6
    reach = reach.set_index("variant")
    # fast: seed 0 reaches 4.6 at step 10, seed 1 at step 20; slow: only seed 1 (3.0 at 30).
    assert reach.loc["fast", "steps"] == 15.0 and reach.loc["fast", "reached"] == 2
    assert reach.loc["fast", "steps_se"] == pytest.approx(5.0)
    assert reach.loc["fast", "seconds"] == pytest.approx(0.15)
    assert reach.loc["slow", "steps"] == 30.0 and reach.loc["slow", "reached"] == 1
    assert math.isnan(reach.loc["slow", "steps_se"])


def test_final_table_reads_the_last_step_of_each_trajectory():
    frame = trajectories({("a", 0): [5.0, 3.0], ("a", 1): [5.0, 1.0], ("b", 0): [5.0, 4.0]})
    table = ts.final_table(frame).set_index("variant")
    assert table.loc["a", "loss"] == 2.0 and table.loc["a", "seeds"] == 2
    assert table.loc["a", "loss SE"] == pytest.approx(math.sqrt(2) / math.sqrt(2))
    assert table.loc["a", "gradient variance"] == 2.5  # seeds 0 and 1: 2 and 3
    assert table.loc["b", "objective"] == 5.0
    assert table.attrs["target_metric"] == "loss"


def test_variant_labels_name_what_varies():
    frame = trajectories({("a", 0): [1.0], ("b", 0): [1.0]})
    frame.loc[frame["estimator"] == "b", "learning_rate"] = 0.01
    labels = set(ts.variant_labels(frame))
    assert labels == {"a learning rate=0.1", "b learning rate=0.01"}
