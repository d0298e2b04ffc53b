"""Results every tool reads: a results root holding several suites reads to the same frame with
gradbench, pandas, DuckDB and polars; no two columns differ only in case; files are created
readable under the caller's umask; the registries refuse ambiguous names."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pytest
from helpers import invoke

from gradbench.core import schema
from gradbench.core.params import Param
from gradbench.core.suite import all_suites, register_suite
from gradbench.estimators import register_estimator
from gradbench.results import store
from gradbench.results.schema import arrow_schema

KEY = ["cell_id", "param", "level", "coord"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("readers") / "results"
    for args in (["-s", "gaussian-quadratic", "-e", "pathwise", "-e", "score-function-loo",
                  "--set", "dim=1", "--set", "sigma=1", "--samples", "200"],
                 ["-s", "gamma", "-e", "implicit", "--set", "cost=log", "--samples", "200"],
                 ["-s", "bernoulli-toy", "-e", "disarm", "-e", "gumbel-softmax",
                  "--set", "dim=1", "--samples", "200"]):
        assert invoke("run", *args, "--out", out).exit_code == 0
    return out


def canonical(frame: pd.DataFrame) -> list[tuple]:
    """Rows as tuples of plain values in a fixed column order (NaN and None alike), sorted by
    the key, so frames from different readers compare cell by cell."""
    columns = sorted(frame.columns)
    rows = []
    for values in frame[columns].itertuples(index=False):
        rows.append(tuple(None if _missing(v) else _plain(v) for v in values))
    order = [columns.index(k) for k in KEY]
    return sorted(rows, key=lambda row: tuple(str(row[i]) for i in order))


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _plain(value: object) -> object:
    if hasattr(value, "item"):
        value = value.item()
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def test_pandas_duckdb_and_polars_read_the_same_frame(root: Path) -> None:
    ours = store.read_results(root)
    assert set(ours["suite"]) == {"gaussian-quadratic", "gamma", "bernoulli-toy"}
    # Every suite's settings survive: sigma (gaussian), concentration (gamma), theta (bernoulli).
    for column in ("sigma", "concentration", "theta", "draws", "tau"):
        assert ours[column].notna().any(), column
    expected = canonical(ours)
    readers = {
        "pandas": pd.read_parquet(root),
        "duckdb": duckdb.sql(f"select * from read_parquet('{root}/*/*.parquet', "
                             "union_by_name=true)").df(),
        "polars": pl.read_parquet(f"{root}/*/*.parquet").to_pandas(),
        "polars (one run folder)": pl.read_parquet(store.run_dirs(root)[0]).to_pandas(),
    }
    for name, frame in readers.items():
        if "one run" in name:
            assert len(frame) and set(frame.columns) == set(ours.columns), name
            continue
        assert set(frame.columns) == set(ours.columns), name
        assert canonical(frame) == expected, name


def test_duckdb_filters_a_hyperparameter_by_name(root: Path) -> None:
    rows = duckdb.sql(f"select estimator, draws from read_parquet('{root}/*/*.parquet') "
                      "where draws = 4").df()
    assert set(rows["estimator"]) == {"score-function-loo"}
    names = [name.lower() for name in arrow_schema().names]
    assert len(names) == len(set(names)), "two columns differ only in case"


def test_files_are_readable_under_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert invoke("run", "-s", "gaussian-quadratic", "-e", "pathwise", "--set", "dim=1",
                      "--set", "sigma=1", "--set", "k=0", "--samples", "50",
                      "--out", tmp_path).exit_code == 0
    finally:
        os.umask(old)
    (run_dir,) = store.run_dirs(tmp_path)
    files = [*run_dir.glob("*.parquet"), store.run_json_path(run_dir)]
    assert files
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file


def test_registries_refuse_ambiguous_column_names() -> None:
    all_suites()  # the built-in suites declare k, dim, ...
    dummy = lambda problem, n: {}  # noqa: E731 - never called: registration fails first
    with pytest.raises(ValueError, match="differs only in case"):
        register_estimator("case-clash", family="x", unbiased=True,
                           hyperparams=(Param("K", int, 2, "collides with the setting k"),))(dummy)
    with pytest.raises(ValueError, match="collides with the results column"):
        register_estimator("column-clash", family="x", unbiased=True,
                           hyperparams=(Param("Variance", float, 1.0, "a metric's name"),))(dummy)
    with pytest.raises(ValueError, match="is a float"):
        register_suite("type-clash", settings=(Param("dim", float, (1.0,), "dim is an int"),))(
            dummy)
    declared = schema.declared_columns()
    assert "K" not in declared and "Variance" not in declared and declared["dim"] == (
        "setting", int)
