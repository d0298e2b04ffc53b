"""Tidy parquet results. One folder per run under the results root:

    results/<run_id>/_run.json                run metadata + the request (for --resume)
    results/<run_id>/cells/<cell_id>.parquet  one file per finished cell, written atomically

One row per (run, suite, setting, estimator, hyperparameters, device, param, coord). Run metadata
is repeated as (dictionary-encoded) columns so any single file is self-describing. All cells of a
run share one schema (hyperparameter columns are null where an estimator has none), so
`pandas.read_parquet(run_dir)` reads a run; the leading underscore keeps pyarrow off _run.json.
"""

from __future__ import annotations

import datetime as dt
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

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import bench
from bench.errors import BenchError

SCHEMA_VERSION = 1
RUN_FILE = "_run.json"
_ARROW_TYPES = {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}
# Columns every gradbench results file has (settings and hyperparameters come on top).
REQUIRED_COLUMNS = (
    "run_id", "suite", "estimator", "device", "param", "coord", "n", "mean", "truth",
    "truth_method", "bias", "bias_se", "variance", "variance_se", "evals_per_estimate",
    "seconds_per_estimate", "seed",
)
# Names a suite setting or estimator hyperparameter may not take: they would shadow these columns.
RESERVED_COLUMNS = frozenset(REQUIRED_COLUMNS) | {
    "estimator_family", "unbiased", "device_name", "dtype", "truth_se", "nonfinite", "mean_se",
    "std", "snr", "snr_se", "mse", "mse_se", "warmup_evals", "seconds_per_estimate_se",
    "estimates_per_second", "chunk_size", "chunks", "samples", "cell_seed", "cell_id",
    "schema_version", "gradbench_version", "torch_version", "threads", "git_commit",
    "started_at", "command", "hostname", "settings", "hyperparams",
}


def setting_columns(frame: pd.DataFrame) -> list[str]:
    """Suite settings and estimator hyperparameters: every column outside the fixed schema."""
    return [c for c in frame.columns if c not in RESERVED_COLUMNS]


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
        "gradbench_version": bench.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "hostname": platform.node(),
    }


# Metadata repeated on every row (the rest stays in _run.json).
ROW_METADATA = ("run_id", "schema_version", "gradbench_version", "torch_version", "threads",
                "git_commit", "started_at", "command")


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
        raise BenchError(f"cannot write to --out {out}: {error.strerror or error}; "
                         "choose a writable folder") from None
    return out


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_run_json(run_dir: Path, meta: Mapping[str, Any]) -> None:
    atomic_write_bytes(run_dir / RUN_FILE, json.dumps(meta, indent=2, default=str).encode())


def read_run_json(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BenchError(f"{run_dir} is not a gradbench run folder (no readable {RUN_FILE}: "
                         f"{error}); give a run id that `bench run` printed") from None


def write_cell(run_dir: Path, cell_id: str, columns: Mapping[str, list], meta: Mapping[str, Any],
               optional: Mapping[str, type] | None = None) -> Path:
    """Write one finished cell's rows atomically (temp file + rename): no half-written files.

    `optional` names columns (with Python types) that other cells of the run have; they are
    added as nulls here so every file of the run has the same schema.
    """
    rows = len(columns["param"])
    data = {k: pa.array(v) for k, v in metadata_columns(meta, rows).items()}
    for name, values in columns.items():
        kind = (optional or {}).get(name)
        data[name] = pa.array(values, type=_ARROW_TYPES.get(kind) if kind else None)
    for name, kind in (optional or {}).items():
        if name not in data:
            data[name] = pa.nulls(rows, type=_ARROW_TYPES.get(kind, pa.string()))
    table = pa.table(data)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    path = run_dir / "cells" / f"{cell_id}.parquet"
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path


def finished_cells(run_dir: Path) -> set[str]:
    folder = run_dir / "cells"
    return {p.stem for p in folder.glob("*.parquet")} if folder.is_dir() else set()


def result_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
    raise BenchError(f"{path} does not exist; give a results .parquet file or folder "
                     "(bench run writes them under results/)")


def read_results(*paths: Path) -> pd.DataFrame:
    """Read gradbench results from parquet files and/or folders into one tidy DataFrame."""
    tables = []
    for path in paths:
        files = result_files(Path(path))
        if not files:
            raise BenchError(f"{path} holds no .parquet results; "
                             "run `bench run --suite NAME` first")
        for file in files:
            try:
                table = pq.read_table(file)
            except (pa.ArrowInvalid, OSError) as error:
                raise BenchError(f"{file} is not a parquet file ({error}); "
                                 "give gradbench results written by `bench run`") from None
            missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
            if missing:
                raise BenchError(f"{file} is not gradbench results (missing columns: "
                                 f"{', '.join(missing)}); give files written by `bench run`")
            tables.append(table)
    combined = pa.concat_tables(tables, promote_options="permissive")
    return combined.to_pandas()


def command_line() -> str:
    return " ".join(["bench", *sys.argv[1:]])
