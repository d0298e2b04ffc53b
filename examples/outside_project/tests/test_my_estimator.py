"""This project's tests of its estimator, with gradbench's `gradbench` fixture."""

from pathlib import Path

import estimators.halved  # noqa: F401  (registers score-function-halved)
import pytest
from make_baseline import CELLS

BASELINE = Path(__file__).parent / "baseline.parquet"


def test_my_estimator_is_unbiased(gradbench):
    gradbench.assert_unbiased("score-function-halved", suite="gaussian-quadratic",
                              settings={"sigma": [0.5, 2.0], "k": 0.0, "dim": 3}, samples=20_000)


def test_a_scaled_score_is_caught_as_biased(gradbench):
    with pytest.raises(AssertionError, match="biased"):
        gradbench.assert_unbiased("score-function-halved", suite="gaussian-quadratic",
                                  settings={"sigma": 1.0, "k": 0.0, "dim": 1},
                                  hyperparams={"weight": 0.5}, samples=20_000)


def test_my_estimator_variance_has_not_regressed(gradbench):
    current = gradbench.run(**CELLS, seed=0)
    gradbench.assert_no_variance_regression(current, BASELINE)
