"""The results store: the only code that reads or writes result files and run metadata.

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

This module writes (atomically, with readable permissions); the paths and errors live in
gradbench.results.layout and the reading in gradbench.results.reading, both re-exported here so
that `store` stays the one place to import from.
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gradbench.core.schema import SCHEMA_VERSION, split_family_column
from gradbench.core.version import __version__
from gradbench.results.layout import (
    RUNS_DIR,
    ResultsError,
    RunMetadataMissing,
    StorageFull,
    finished_cells,
    result_files,
    run_dirs,
    run_files_dir,
    run_json_path,
)
from gradbench.results.reading import (
    REQUIRED_COLUMNS,
    cell_file_problem,
    checked_cells,
    hyperparam_columns,
    is_training_file,
    read_results,
    read_run_json,
    read_training,
    setting_columns,
    training_files,
)
from gradbench.results.schema import arrow_schema, training_arrow_schema

__all__ = [
    "REQUIRED_COLUMNS", "ROW_METADATA", "RUNS_DIR", "ResultsError", "RunMetadataMissing",
    "StorageFull", "atomic_write_bytes", "canonical_json", "cell_file_problem", "cell_table",
    "checked_cells", "command_line", "finished_cells", "finished_trajectories", "git_commit",
    "hyperparam_columns", "is_training_file", "metadata_columns", "new_run_id", "prepare_out",
    "read_results", "read_run_json", "read_training", "result_files", "run_dirs",
    "run_files_dir", "run_json_path", "run_metadata", "set_aside", "setting_columns",
    "training_files", "trajectory_table", "write_cell", "write_error", "write_parquet",
    "write_run_json", "write_trajectory", "writing",
]

# Metadata repeated on every row (the rest stays in the run's JSON).
ROW_METADATA = ("run_id", "schema_version", "gradbench_version", "torch_version", "threads",
                "git_commit", "started_at", "command")


def canonical_json(values: Mapping[str, Any]) -> str:
    """Settings or hyperparameters as one comparable string: sorted keys, no spaces."""
    return json.dumps(dict(values), sort_keys=True, separators=(",", ":"))


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


def write_parquet(path: Path, table: pa.Table) -> None:
    """Write a table as zstd parquet atomically (temp file + rename): no half-written files."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def write_cell(run_dir: Path, cell_id: str, columns: Mapping[str, list],
               meta: Mapping[str, Any]) -> Path:
    """Write one finished cell's rows atomically (write_parquet). A failed write raises
    ResultsError (StorageFull for a full disk)."""
    path = run_dir / f"{cell_id}.parquet"
    try:
        write_parquet(path, cell_table(columns, meta))
    except OSError as error:
        raise writing(path, error) from None
    return path


def set_aside(run_dir: Path, cell_id: str) -> Path:
    """Move a cell file that does not read back out of the run folder (into the metadata area,
    kept for inspection), so that the cell is computed again."""
    target = run_files_dir(run_dir) / "corrupt" / f"{cell_id}.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(run_dir / f"{cell_id}.parquet", target)
    return target


# ---------------------------------------------------------------- bench train's trajectories


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
    path = run_dir / f"{trajectory_id}.parquet"
    write_parquet(path, trajectory_table(columns, meta))
    return path


finished_trajectories = finished_cells  # the same rule: one file per finished task


def command_line() -> str:
    return " ".join(["bench", *sys.argv[1:]])
