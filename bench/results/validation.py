"""Checks that a table read from a results file holds what gradbench writes, so a file with
gradbench's column names but other contents is refused in one line where it is read, instead of
failing with a traceback later in show, report or check."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gradbench.results.schema import arrow_schema


def table_problem(table: pa.Table) -> str | None:
    """What is wrong with a results table (a column of the wrong kind, settings that are not
    JSON objects), or None."""
    return _type_problem(table) or _key_problem(table)


def _kind(arrow_type: pa.DataType) -> type | None:
    """The Python kind a column's Arrow type holds (dictionary-encoded and null included)."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_boolean(arrow_type):
        return bool
    if pa.types.is_integer(arrow_type):
        return int
    if pa.types.is_floating(arrow_type):
        return float
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return str
    return None


def _type_problem(table: pa.Table) -> str | None:
    """A known column whose values are not of the kind gradbench writes, or None. Tolerated, as
    pandas writes them when results are edited and saved again: all-null columns, ints in a
    float column, and whole floats in an int column (an int column with a gap becomes float)."""
    expected = {field.name: _kind(field.type) for field in arrow_schema()}
    for field in table.schema:
        want = expected.get(field.name)
        got = _kind(field.type)
        column = table.column(field.name)
        if want is None or got is want or column.null_count == len(column):
            continue
        if want is float and got is int:
            continue
        if want is int and got is float and _whole(column):
            continue
        return (f"column {field.name!r} holds {field.type}, where gradbench writes "
                f"{want.__name__} values")
    return None


def _whole(column: pa.ChunkedArray) -> bool:
    values = column.drop_null().to_numpy()
    return bool(np.all(np.isfinite(values) & (values == np.round(values))))


def _key_problem(table: pa.Table) -> str | None:
    """`settings`/`hyperparams` must hold JSON objects (every tool reads the columns from them)."""
    for column in ("settings", "hyperparams"):
        if column not in table.column_names:
            continue
        for text in pc.unique(table.column(column)).to_pylist():
            if text is None:
                continue
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            if not isinstance(value, dict):
                return f"its {column!r} column holds {text[:40]!r}, not a JSON object"
    return None
