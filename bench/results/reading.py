"""Reading gradbench results: cell files and folders into one tidy DataFrame (checked against
the schema, one-line errors naming the fix), bench train's trajectories, run metadata, and the
check that a cell file reads back as the cell it is named after (for --resume).
gradbench.results.store re-exports every public name here."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gradbench.core.schema import SCHEMA_VERSION
from gradbench.results.layout import (
    RUNS_DIR,
    ResultsError,
    RunMetadataMissing,
    finished_cells,
    result_files,
    run_json_path,
)
from gradbench.results.schema import TABLE_KEY, TRAINING_TABLE
from gradbench.results.validation import table_problem

# Columns every gradbench results file has; a file without them is not gradbench results.
REQUIRED_COLUMNS = (
    "run_id", "suite", "settings", "estimator", "hyperparams", "device", "dtype", "param",
    "coord", "n", "mean", "truth", "truth_method", "bias", "bias_se", "variance", "variance_se",
    "evals_per_estimate", "seconds_per_estimate", "seed", "schema_version",
)


def setting_columns(frame: pd.DataFrame) -> list[str]:
    """The setting columns of a results frame, from its `settings` key column."""
    return _names_in(frame, "settings")


def hyperparam_columns(frame: pd.DataFrame) -> list[str]:
    """The hyperparameter columns of a results frame, from its `hyperparams` key column."""
    return _names_in(frame, "hyperparams")


def _names_in(frame: pd.DataFrame, column: str) -> list[str]:
    names: dict[str, None] = {}
    for text in frame[column].dropna().unique():
        names.update(dict.fromkeys(json.loads(text)))
    return list(names)


def read_run_json(run_dir: Path) -> dict[str, Any]:
    """A run's metadata. RunMetadataMissing if it has none; ResultsError if it is unreadable or
    not a JSON object."""
    path = run_json_path(run_dir)
    if not path.is_file():
        raise RunMetadataMissing(f"{run_dir} is not a gradbench run (no {path}); give a run id "
                                 "that `bench run` printed")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsError(f"{run_dir} is not a gradbench run (no readable {path}: {error}); "
                           "give a run id that `bench run` printed") from None
    if not isinstance(meta, dict):
        raise ResultsError(f"{path} holds {type(meta).__name__}, not a run's metadata object; "
                           "it was not written by gradbench")
    return meta


def cell_file_problem(path: Path) -> str | None:
    """Why a cell file does not read back as the cell it is named after, or None.

    Reads the footer and the cell_id column: a truncated or overwritten file fails here
    (atomic writes never leave one, but disks, copies and people can)."""
    try:
        table = pq.read_table(path, columns=["cell_id"])
    except (pa.ArrowException, OSError, KeyError) as error:
        return f"does not read back ({_first_line(error)})"
    if table.num_rows == 0:
        return "holds no rows"
    ids = set(table.column("cell_id").to_pylist())
    if ids != {path.stem}:
        return f"holds cell {sorted(map(str, ids))[0]}, not {path.stem}"
    return None


def checked_cells(run_dir: Path) -> tuple[set[str], dict[str, str]]:
    """(cells whose files read back, {cell_id: why not} for the others)."""
    good, bad = set(), {}
    for cell_id in sorted(finished_cells(run_dir)):
        problem = cell_file_problem(run_dir / f"{cell_id}.parquet")
        if problem is None:
            good.add(cell_id)
        else:
            bad[cell_id] = problem
    return good, bad


def read_results(*paths: Path | str) -> pd.DataFrame:
    """Read gradbench results from parquet files and/or folders into one tidy DataFrame (the
    union of their columns: files from other gradbench versions may have fewer)."""
    tables = [table for path in paths for table in _read_tables(Path(path))]
    if not tables:
        raise ResultsError("no results given; pass result folders or .parquet files")
    combined = pa.concat_tables(tables, promote_options="permissive")
    return combined.to_pandas()


def _read_tables(path: Path) -> Iterable[pa.Table]:
    files = result_files(path)
    if not files:
        raise ResultsError(f"{path} holds no .parquet results; run `bench run --suite NAME` "
                           "first")
    training = [file for file in files if is_training_file(file)]
    if len(training) == len(files):
        raise ResultsError(f"{path} holds only training trajectories (bench train), no cells "
                           "of `bench run`; `bench report` draws them")
    for file in files:
        if file in training:
            continue
        try:
            table = pq.read_table(file)
        except (pa.ArrowException, OSError) as error:
            raise ResultsError(f"{file} is not a readable parquet file ({_first_line(error)}); "
                               f"{_fix_for(file)}") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise ResultsError(f"{file} is not gradbench results of schema {SCHEMA_VERSION} "
                               f"(missing columns: {', '.join(missing)}); regenerate it with "
                               "`bench run`")
        problem = table_problem(table)
        if problem:
            raise ResultsError(f"{file} is not gradbench results: {problem}; regenerate it "
                               "with `bench run`")
        yield table


def is_training_file(path: Path) -> bool:
    """Whether a parquet file holds a bench train trajectory (its schema says so); unreadable
    files are not, and fail later where they are read."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError):
        return False
    return metadata.get(TABLE_KEY) == TRAINING_TABLE


def training_files(*paths: Path | str) -> list[Path]:
    """The trajectory files among results files and folders."""
    return [file for path in paths for file in result_files(Path(path))
            if is_training_file(file)]


def read_training(*paths: Path | str) -> pd.DataFrame:
    """Read bench train trajectories from parquet files and/or folders into one tidy DataFrame
    (cells files of bench run among them are skipped)."""
    files = training_files(*paths)
    if not files:
        raise ResultsError(f"{', '.join(map(str, paths))} hold no training trajectories; run "
                           "`bench train --suite NAME` first")
    tables = []
    for file in files:
        try:
            tables.append(pq.read_table(file))
        except (pa.ArrowInvalid, OSError) as error:
            raise ResultsError(f"{file} is not a readable parquet file ({error})") from None
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def _fix_for(file: Path) -> str:
    """What to do about a cell file that does not read: resume its run, which recomputes it."""
    if file.parent.parent.joinpath(RUNS_DIR, f"{file.parent.name}.json").is_file():
        return (f"`bench run ... --resume {file.parent.name}` (the run's command, shown in "
                f"{run_json_path(file.parent)}) sets it aside and computes the cell again")
    return "give gradbench results written by `bench run`"


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
