"""The declared results schema (gradbench.core.schema) as Arrow types, and the union schema every
cell file is written with: all fixed columns plus every setting and hyperparameter declared by
the registered suites and estimators, null where a row has none. Files written by one gradbench
therefore share one schema, so pandas, DuckDB and polars read a results root without losing
columns (README: "Results schema")."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from gradbench.core.schema import (
    BY_NAME,
    COLUMNS,
    SCHEMA_VERSION,
    TRAINING_BY_NAME,
    TRAINING_COLUMNS,
    TRAINING_FAMILIES,
    declared_columns,
    split_family_column,
)

ARROW_TYPES = {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}
# Parquet key-value metadata that marks a file as a table of bench train (cells files have none).
TABLE_KEY = b"gradbench.table"
TRAINING_TABLE = b"training"
__all__ = ["ARROW_TYPES", "SCHEMA_VERSION", "TABLE_KEY", "TRAINING_TABLE", "arrow_schema",
           "role_of", "training_arrow_schema"]


def arrow_schema(extra: dict[str, tuple[str, type]] | None = None) -> pa.Schema:
    """Fixed key columns, then settings and hyperparameters (sorted by name), then metrics and
    metadata. `extra`: settings/hyperparameters to include beyond the declared ones."""
    dynamic = {**declared_columns(), **(extra or {})}
    fields = [pa.field(c.name, ARROW_TYPES[c.type]) for c in COLUMNS if c.role == "key"]
    for role in ("setting", "hyperparameter"):
        fields += [pa.field(name, ARROW_TYPES[kind]) for name, (r, kind) in sorted(dynamic.items())
                   if r == role]
    fields += [pa.field(c.name, ARROW_TYPES[c.type]) for c in COLUMNS
               if c.role in ("metric", "metadata")]
    return pa.schema(fields)


def training_arrow_schema(family_columns: Iterable[str] = ()) -> pa.Schema:
    """The training table's schema: its fixed key columns, every declared setting and
    hyperparameter (sorted, null where a row has none), its metrics and metadata, then the
    suite-dependent `family[name]` columns given (float64, in the order given), marked as a
    training table in the file metadata."""
    fields = [pa.field(c.name, ARROW_TYPES[c.type]) for c in TRAINING_COLUMNS if c.role == "key"]
    dynamic = declared_columns()
    for role in ("setting", "hyperparameter"):
        fields += [pa.field(name, ARROW_TYPES[kind]) for name, (r, kind) in sorted(dynamic.items())
                   if r == role]
    fields += [pa.field(c.name, ARROW_TYPES[c.type]) for c in TRAINING_COLUMNS
               if c.role in ("metric", "metadata")]
    for column in family_columns:
        if split_family_column(column) is None:
            raise ValueError(f"{column!r} is not a training column family member; families: "
                             f"{', '.join(TRAINING_FAMILIES)}")
        fields.append(pa.field(column, pa.float64()))
    return pa.schema(fields, metadata={TABLE_KEY: TRAINING_TABLE})


def role_of(name: str) -> str | None:
    """The role of a column: a fixed column's declared role (cells or training table), a
    declared setting's or hyperparameter's, a training column family's, or None for a column
    this gradbench does not know."""
    if name in BY_NAME:
        return BY_NAME[name].role
    if name in TRAINING_BY_NAME:
        return TRAINING_BY_NAME[name].role
    family = split_family_column(name)
    if family is not None:
        return TRAINING_FAMILIES[family[0]][0]
    found = declared_columns().get(name)
    return found[0] if found else None
