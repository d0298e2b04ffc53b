"""Tidy parquet results: the only code that reads or writes result files and run metadata.

    results/<run_id>/<cell_id>.parquet   one file per finished cell, written atomically
    results/<run_id>/<trajectory_id>.parquet   bench train: one file per finished trajectory
    results/_runs/<run_id>.json          run metadata and the request (for --resume)
    results/_runs/<run_id>/errors/<cell_id>.txt    the full story of a cell that failed
    results/_runs/<run_id>/corrupt/<cell_id>.parquet   a cell file that did not read back on
                                         --resume, moved aside (the cell is computed again)

A run folder holds nothing but parquet, so every tool reads it as a dataset; run metadata lives
outside every cells glob. Every file of one gradbench version has the same columns (the union
schema of gradbench.results.schema), so `pandas.read_parquet("results")` reads a results root
holding several suites without dropping columns. One row per (run, suite, settings, estimator,
hyperparameters, device, param, coord); run metadata is repeated as dictionary-encoded columns
so any single file is self-describing.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gradbench.core.schema import SCHEMA_VERSION, split_family_column
from gradbench.core.version import __version__
from gradbench.results.schema import (
    TABLE_KEY,
    TRAINING_TABLE,
    arrow_schema,
    training_arrow_schema,
)
from gradbench.results.validation import table_problem

RUNS_DIR = "_runs"
# Columns every gradbench results file has; a file without them is not gradbench results.
REQUIRED_COLUMNS = (
    "run_id", "suite", "settings", "estimator", "hyperparams", "device", "dtype", "param",
    "coord", "n", "mean", "truth", "truth_method", "bias", "bias_se", "variance", "variance_se",
    "evals_per_estimate", "seconds_per_estimate", "seed", "schema_version",
)
# Metadata repeated on every row (the rest stays in the run's JSON).
ROW_METADATA = ("run_id", "schema_version", "gradbench_version", "torch_version", "threads",
                "git_commit", "started_at", "command")


class ResultsError(ValueError):
    """Files that are not readable gradbench results, or an unwritable results folder."""


class RunMetadataMissing(ResultsError):
    """A run folder without its metadata file (a copied folder, or a lone file)."""


class StorageFull(ResultsError):
    """Writing failed for lack of space (or quota): what was written before is intact."""


def canonical_json(values: Mapping[str, Any]) -> str:
    """Settings or hyperparameters as one comparable string: sorted keys, no spaces."""
    return json.dumps(dict(values), sort_keys=True, separators=(",", ":"))


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


def new_run_id() -> str:
    """Sortable by time, unique across concurrent runs on one results folder."""
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{now}-{secrets.token_hex(3)}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_metadata(run_id: str, command: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "schema_version": SCHEMA_VERSION,
        "gradbench_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "hostname": platform.node(),
    }


def metadata_columns(meta: Mapping[str, Any], rows: int) -> dict[str, list]:
    """The run metadata columns every results row carries, for `rows` rows."""
    return {key: [meta[key]] * rows for key in ROW_METADATA}


def prepare_out(out: Path) -> Path:
    """Create the results root, or fail with a one-line error if it cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ResultsError(f"cannot write to --out {out}: {error.strerror or error}; "
                           "choose a writable folder") from None
    return out


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename: readers see the old file or the new, never half.
    The file gets the permissions a plain open() would (0666 minus the umask: 0644 under 022),
    not mkstemp's 0600, so other users and CI readers can read results."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_json_path(run_dir: Path) -> Path:
    """Where a run folder's metadata lives: <root>/_runs/<run_id>.json."""
    return run_dir.parent / RUNS_DIR / f"{run_dir.name}.json"


def run_files_dir(run_dir: Path) -> Path:
    """The run's own folder in the metadata area: <root>/_runs/<run_id>/ (errors, corrupt)."""
    return run_dir.parent / RUNS_DIR / run_dir.name


def writing(path: Path, error: OSError) -> ResultsError:
    """A one-line error for a failed write; StorageFull when the disk or a quota is full."""
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"cannot write {path}: {reason}; free some space (or choose another "
                           "--out)")
    return ResultsError(f"cannot write {path}: {reason}")


def write_run_json(run_dir: Path, meta: Mapping[str, Any]) -> None:
    path = run_json_path(run_dir)
    try:
        atomic_write_bytes(path, json.dumps(meta, indent=2, default=str).encode())
    except OSError as error:
        raise writing(path, error) from None


def write_error(run_dir: Path, cell_id: str, text: str) -> Path | None:
    """Keep a failed cell's full traceback (or crash report) in the metadata area; its path, or
    None if even that cannot be written (the one-line reason is in the run's JSON anyway)."""
    path = run_files_dir(run_dir) / "errors" / f"{cell_id}.txt"
    try:
        atomic_write_bytes(path, text.encode())
    except OSError:
        return None
    return path


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


def cell_table(columns: Mapping[str, list], meta: Mapping[str, Any]) -> pa.Table:
    """One cell's rows as an Arrow table in the union schema (absent columns are null)."""
    rows = len(columns["param"])
    values = {**metadata_columns(meta, rows), **columns}
    schema = arrow_schema()
    unknown = sorted(set(values) - set(schema.names))
    if unknown:
        raise ValueError(f"columns {unknown} are not in the results schema: declare settings "
                         "and hyperparameters through register_suite / register_estimator")
    arrays = [pa.array(values[f.name], type=f.type) if f.name in values
              else pa.nulls(rows, type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def write_cell(run_dir: Path, cell_id: str, columns: Mapping[str, list],
               meta: Mapping[str, Any]) -> Path:
    """Write one finished cell's rows atomically (temp file + rename): no half-written files.
    A failed write raises ResultsError (StorageFull for a full disk)."""
    sink = pa.BufferOutputStream()
    pq.write_table(cell_table(columns, meta), sink, compression="zstd")
    path = run_dir / f"{cell_id}.parquet"
    try:
        atomic_write_bytes(path, sink.getvalue().to_pybytes())
    except OSError as error:
        raise writing(path, error) from None
    return path


def run_dirs(root: Path) -> list[Path]:
    """The run folders under a results root, oldest first (run ids sort by time)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def finished_cells(run_dir: Path) -> set[str]:
    """The cell files in a run folder, by name (not checked: see `checked_cells`)."""
    return {p.stem for p in run_dir.glob("*.parquet")} if run_dir.is_dir() else set()


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


def set_aside(run_dir: Path, cell_id: str) -> Path:
    """Move a cell file that does not read back out of the run folder (into the metadata area,
    kept for inspection), so that the cell is computed again."""
    target = run_files_dir(run_dir) / "corrupt" / f"{cell_id}.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(run_dir / f"{cell_id}.parquet", target)
    return target


def result_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*.parquet")
                      if not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))
    raise ResultsError(f"{path} does not exist; give a results .parquet file or folder "
                       "(bench run writes them under results/)")


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


# ---------------------------------------------------------------- bench train's trajectories


def is_training_file(path: Path) -> bool:
    """Whether a parquet file holds a bench train trajectory (its schema says so); unreadable
    files are not, and fail later where they are read."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError):
        return False
    return metadata.get(TABLE_KEY) == TRAINING_TABLE


def trajectory_table(columns: Mapping[str, list], meta: Mapping[str, Any]) -> pa.Table:
    """One trajectory's rows as an Arrow table in the training schema (absent columns null);
    its `family[name]` columns (gradbench.core.schema.TRAINING_FAMILIES) in the order given."""
    rows = len(columns["step"])
    values = {**metadata_columns(meta, rows), **columns}
    schema = training_arrow_schema([c for c in columns if split_family_column(c) is not None])
    unknown = sorted(set(values) - set(schema.names))
    if unknown:
        raise ValueError(f"columns {unknown} are not in the training schema")
    arrays = [pa.array(values[f.name], type=f.type) if f.name in values
              else pa.nulls(rows, type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def write_trajectory(run_dir: Path, trajectory_id: str, columns: Mapping[str, list],
                     meta: Mapping[str, Any]) -> Path:
    """Write one finished trajectory's rows atomically, as write_cell does for a cell."""
    sink = pa.BufferOutputStream()
    pq.write_table(trajectory_table(columns, meta), sink, compression="zstd")
    path = run_dir / f"{trajectory_id}.parquet"
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path


finished_trajectories = finished_cells  # the same rule: one file per finished task


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


def command_line() -> str:
    return " ".join(["bench", *sys.argv[1:]])
