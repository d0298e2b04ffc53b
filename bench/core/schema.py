"""The results schema, declared once: every column with its role, type and meaning.

Roles:
  key            identifies a row: which measurement (cell) and which coordinate of which parameter
  setting        a suite setting (one column per setting name, declared by the suites)
  hyperparameter an estimator hyperparameter (one column per name, declared by the estimators)
  metric         a measured or derived number
  metadata       how, when and where it was measured

Settings and hyperparameters are not listed here: the registries declare them, and every row also
carries them as canonical JSON in the `settings` and `hyperparams` key columns, so which columns
are settings never has to be guessed from a frame. Pure data (no pyarrow, no pandas): the
registries check new names against it, and gradbench.results turns it into an Arrow schema.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 2
ROLES = ("key", "setting", "hyperparameter", "metric", "metadata")


@dataclass(frozen=True)
class Column:
    name: str
    role: str
    type: type  # int, float, bool or str
    description: str


def _columns(role: str, kind: type, *pairs: tuple[str, str]) -> list[Column]:
    return [Column(name, role, kind, text) for name, text in pairs]


COLUMNS: tuple[Column, ...] = tuple([
    *_columns("key", str,
              ("run_id", "YYYYmmdd-HHMMSS-xxxxxx (UTC), unique per run"),
              ("suite", "suite name"),
              ("settings", "the cell's suite settings as canonical JSON (sorted keys)"),
              ("estimator", "estimator name"),
              ("hyperparams", "the cell's estimator hyperparameters as canonical JSON"),
              ("device", "cpu or cuda[:N]"),
              ("dtype", "float64 or float32"),
              ("param", "the parameter (e.g. mu, sigma, logits, weight_mu)"),
              ("level", "coord: one coordinate's statistics; tensor: aggregates over the "
                        "whole parameter tensor (coord = -1)")),
    *_columns("key", int,
              ("coord", "flat coordinate index; -1 on tensor rows"),
              ("suite_version", "the suite's declared version"),
              ("estimator_version", "the estimator's declared version"),
              ("samples", "requested estimates per cell"),
              ("seed", "the run's base seed (64-bit integer)")),
    *_columns("metric", int,
              ("n", "finite estimates used"),
              ("nonfinite", "NaN/Inf estimates excluded from the statistics")),
    *_columns("metric", float,
              ("mean", "mean of the estimates"),
              ("mean_se", "standard error of the mean"),
              ("truth", "exact gradient (NaN if unknown)"),
              ("truth_se", "standard error of the truth (0 unless truth_method is reference)"),
              ("bias", "mean - truth"),
              ("bias_se", "standard error of the bias (truth_se folded in)"),
              ("variance", "variance of one estimate (tensor rows: the trace of the covariance)"),
              ("variance_se", "standard error of the variance"),
              ("std", "standard deviation of one estimate"),
              ("snr", "|mean| / std (coord rows)"),
              ("snr_se", "standard error of snr"),
              ("mse", "bias^2 + variance of one estimate"),
              ("mse_se", "standard error of mse"),
              ("evals_per_estimate", "evaluations of f per estimate"),
              ("warmup_evals", "one-off evaluations spent fitting (control variate, surrogate)"),
              ("seconds_per_estimate", "estimator wall time per estimate (statistics excluded)"),
              ("seconds_per_estimate_se", "its standard error over chunks"),
              ("estimates_per_second", "1 / seconds_per_estimate")),
    *_columns("metric", str,
              ("overflow", "statistics of this row that overflowed float64 although its "
                           "estimates were finite (comma-separated, e.g. variance,std); empty "
                           "if none")),
    *_columns("metadata", str,
              ("estimator_family", "the estimator's family"),
              ("device_name", "CPU model or GPU name"),
              ("truth_method", "analytic, enumeration, quadrature, reference or none"),
              ("cell_id", "the cell's id (its file name)"),
              ("gradbench_version", "gradbench version"),
              ("torch_version", "torch version"),
              ("git_commit", "git commit of gradbench, when known"),
              ("started_at", "when the run started (UTC, ISO 8601)"),
              ("command", "the command line that made the run")),
    *_columns("metadata", int,
              ("cell_seed", "the cell's derived seed (63-bit)"),
              ("chunk_size", "estimates per chunk"),
              ("chunks", "chunks measured"),
              ("schema_version", "version of this schema"),
              ("threads", "torch intra-op threads")),
    Column("unbiased", "metadata", bool, "whether the estimator is registered as unbiased"),
])

BY_NAME = {column.name: column for column in COLUMNS}
KEY_COLUMNS = tuple(c.name for c in COLUMNS if c.role == "key")
# Every name a setting or hyperparameter must not take, lower-cased: DuckDB and other SQL tools
# match column names case-insensitively, so `K` would collide with `k`.
RESERVED = frozenset(name.lower() for name in BY_NAME)


# Settings and hyperparameters declared so far: lower-cased name -> (name, owner, role, type).
_DECLARED: dict[str, tuple[str, str, str, type]] = {}


def declare(name: str, role: str, kind: type, owner: str) -> None:
    """Declare a setting or hyperparameter column, refusing names that would make an ambiguous
    results column: a fixed column's name in any case, or a name declared before that differs
    only in case or has another type. The same name may be declared again (many suites have
    `dim`) with the same spelling and type. Raises ValueError."""
    lowered = name.lower()
    if lowered in RESERVED:
        fixed = next(c for c in BY_NAME if c.lower() == lowered)
        raise ValueError(f"{owner}: {role} name {name!r} collides with the results column "
                         f"{fixed!r}; rename it")
    if lowered in _DECLARED:
        other, other_owner, other_role, other_kind = _DECLARED[lowered]
        if other != name:
            raise ValueError(f"{owner}: {role} name {name!r} differs only in case from "
                             f"{other!r} ({other_owner}); SQL tools such as DuckDB would read "
                             "one for the other: rename it")
        if other_kind is not kind:
            raise ValueError(f"{owner}: {role} {name!r} is a {kind.__name__} but a "
                             f"{other_kind.__name__} in {other_owner}; one results column has "
                             "one type: use the same type or another name")
        if other_role != role:
            raise ValueError(f"{owner}: {name!r} is a {role} here but a {other_role} in "
                             f"{other_owner}; one column has one role: rename it")
        return
    _DECLARED[lowered] = (name, owner, role, kind)


def declared_columns() -> dict[str, tuple[str, type]]:
    """Every setting and hyperparameter column declared so far: name -> (role, type)."""
    return {name: (role, kind) for name, _, role, kind in _DECLARED.values()}
