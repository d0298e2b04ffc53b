"""The declared results schema (gradbench.core.schema) as Arrow types, and the union schema every
cell file is written with: all fixed columns plus every setting and hyperparameter declared by
the registered suites and estimators, null where a row has none. Files written by one gradbench
therefore share one schema, so pandas, DuckDB and polars read a results root without losing
columns (README: "Results schema")."""

from __future__ import annotations

import pyarrow as pa

from gradbench.core.schema import BY_NAME, COLUMNS, SCHEMA_VERSION, declared_columns

ARROW_TYPES = {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}
__all__ = ["ARROW_TYPES", "SCHEMA_VERSION", "arrow_schema", "role_of"]


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


def role_of(name: str) -> str | None:
    """The role of a column: a fixed column's declared role, a declared setting's or
    hyperparameter's, or None for a column this gradbench does not know."""
    if name in BY_NAME:
        return BY_NAME[name].role
    found = declared_columns().get(name)
    return found[0] if found else None
