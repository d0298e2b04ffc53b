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

SCHEMA_VERSION = 3
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
              ("n", "finite estimates used (tensor rows: the fewest of any coordinate)"),
              ("nonfinite", "NaN/Inf estimates excluded from the statistics"),
              ("param_size", "coordinates of the parameter tensor"),
              ("worst_coord", "tensor rows: the coordinate with the largest |bias| / bias_se, "
                              "whose mean, truth, bias and bias_se the row carries; -1 on coord "
                              "rows")),
    *_columns("metric", float,
              ("mean", "mean of the estimates"),
              ("mean_se", "standard error of the mean"),
              ("truth", "exact gradient (NaN if unknown)"),
              ("truth_se", "standard error of the truth (0 unless truth_method is reference)"),
              ("bias", "mean - truth"),
              ("bias_se", "standard error of the bias (truth_se folded in)"),
              ("variance", "variance of one estimate (tensor rows: the trace of the covariance)"),
              ("variance_se", "standard error of the variance: variance x the grouped-jackknife "
                              "SE of log variance (two-point estimates: from the Wilson interval)"),
              ("variance_lo", "lower end of the variance's 95% interval (jackknife of the log "
                              "variance over `groups` groups; exact binomial for two values)"),
              ("variance_hi", "upper end of the variance's 95% interval"),
              ("variance_df", "degrees of freedom of variance_se: groups - 1 (inf: two-point)"),
              ("std", "standard deviation of one estimate (tensor rows: sqrt of the trace)"),
              ("snr", "|mean| / std (coord rows)"),
              ("snr_se", "standard error of snr"),
              ("mse", "bias^2 + variance of one estimate (tensor rows: E||g - truth||^2)"),
              ("mse_se", "standard error of mse"),
              ("kurtosis", "sample kurtosis m4 / m2^2 of the estimates (coord rows)"),
              ("skewness", "sample skewness m3 / m2^1.5 of the estimates (coord rows)"),
              ("tail_index", "Pareto k-hat of the largest squared deviations (tensor rows: of "
                             "||g - shift||^2); heavy tail above min(1 - 1/log10 n, 0.7)"),
              ("samples_needed", "about how many estimates would make the row reliable "
                                 "(NaN when it is)"),
              ("mean_coord_variance", "tensor rows: trace / coordinates"),
              ("mean_coord_variance_se", "its standard error"),
              ("max_coord_variance", "tensor rows: the largest coordinate variance (selection "
                                     "bias: upwards when many coordinates are alike)"),
              ("max_coord_variance_se", "its jackknife standard error"),
              ("grad_snr", "tensor rows: ||E g||^2 / E||g - E g||^2, debiased"),
              ("grad_snr_se", "its jackknife standard error"),
              ("cosine", "tensor rows: cosine of the mean estimate to the truth"),
              ("cosine_se", "its jackknife standard error"),
              ("relative_mse", "tensor rows: E||g - truth||^2 / ||truth||^2 for one estimate"),
              ("relative_mse_se", "its jackknife standard error"),
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
    Column("reliable", "metric", bool, "whether the variance (and SNR, MSE) can be trusted at "
           "this n: no heavy tail (tail_index), no rare states missed, n >= 50"),
    Column("mean_reliable", "metric", bool, "whether the mean and bias can be trusted at this n"),
    Column("reliability_reason", "metric", str, "why not reliable ('' when reliable), with about "
           "how many estimates would be"),
    Column("groups", "metadata", int, "groups of consecutive estimates behind the jackknife SEs"),
])

BY_NAME = {column.name: column for column in COLUMNS}
KEY_COLUMNS = tuple(c.name for c in COLUMNS if c.role == "key")


# ---------------------------------------------------------------- bench train's table

# One row per (run, suite, settings, estimator, hyperparameters, device, dtype, seed, step,
# variance_of): a point of a training trajectory, and the gradient variance measured there of the
# trajectory's own estimator (one row) or, with --basket, of each listed estimator (one row each;
# the step's other columns repeat). Settings and hyperparameters (the trajectory's estimator's)
# are their own columns, as in the cells table.
TRAINING_COLUMNS: tuple[Column, ...] = tuple([
    *_columns("key", str,
              ("run_id", "YYYYmmdd-HHMMSS-xxxxxx (UTC), unique per run"),
              ("suite", "suite name"),
              ("settings", "the trajectory's suite settings as canonical JSON (sorted keys)"),
              ("estimator", "the estimator that trained the trajectory"),
              ("hyperparams", "its hyperparameters as canonical JSON"),
              ("device", "cpu or cuda[:N]"),
              ("dtype", "float64 or float32"),
              ("optimizer", "sgd or adam"),
              ("variance_of", "the estimator whose gradient variance the row's variance columns "
                              "hold: the trajectory's own, or (--basket) another listed one"),
              ("variance_of_hyperparams", "its hyperparameters as canonical JSON")),
    *_columns("key", int,
              ("seed", "the trajectory's seed (--seed + 0, 1, ... --seeds - 1)"),
              ("step", "optimizer steps taken (0: the initial parameters)"),
              ("suite_version", "the suite's declared version"),
              ("estimator_version", "the estimator's declared version"),
              ("train_steps", "steps the trajectory runs in all"),
              ("eval_every", "steps between evaluation points"),
              ("refit_every", "steps between refits of an estimator's warm-up state"),
              ("variance_draws", "gradient estimates per variance measurement"),
              ("minibatch", "rows per training minibatch")),
    Column("learning_rate", "key", float, "the optimizer's learning rate"),
    *_columns("metric", float,
              ("seconds", "training wall time so far: steps and refits, evaluation excluded"),
              ("estimator_seconds", "the part of `seconds` spent inside estimator calls and "
                                    "warm-up refits"),
              ("problem_seconds", "the part of `seconds` spent by the trainer building "
                                  "problems; the rest is bench train's own overhead"),
              ("evals", "evaluations of f so far by training (steps and warm-up refits)"),
              ("objective", "the training objective, minibatch estimate: mean of f over "
                            "variance_draws draws on the fixed evaluation minibatch"),
              ("objective_se", "its standard error"),
              ("variance", "total gradient variance of one estimate (trace of the covariance, "
                           "all parameter tensors) on the fixed evaluation minibatch"),
              ("variance_se", "its standard error (exact iid formula, plug-in)"),
              ("evals_per_estimate", "evaluations of f per estimate of variance_of")),
    Column("own_variance", "metric", bool, "variance_of is the trajectory's own estimator"),
    *_columns("metadata", str,
              ("estimator_family", "the trajectory estimator's family"),
              ("device_name", "CPU model or GPU name"),
              ("objective_name", "what the objective is (the trainer's words)"),
              ("evaluations", "the evaluation metrics in the trainer's order, as JSON: "
                              "[{\"name\": str, \"higher_is_better\": bool}, ...]"),
              ("trajectory_id", "the trajectory's id (its file name)"),
              ("gradbench_version", "gradbench version"),
              ("torch_version", "torch version"),
              ("git_commit", "git commit of gradbench, when known"),
              ("started_at", "when the run started (UTC, ISO 8601)"),
              ("command", "the command line that made the run")),
    *_columns("metadata", int,
              ("trajectory_seed", "the trajectory's derived seed (63-bit)"),
              ("diverged_at", "step whose gradient was not finite, which ended training early; "
                              "-1 if none"),
              ("schema_version", "version of this schema"),
              ("threads", "torch intra-op threads")),
    Column("unbiased", "metadata", bool, "whether the trajectory's estimator is unbiased"),
])
TRAINING_BY_NAME = {column.name: column for column in TRAINING_COLUMNS}

# Column families of the training table whose members depend on the suite: `family[name]`, e.g.
# `eval[test_nll]`, `variance[enc_weight]`. The brackets keep them apart from every setting or
# hyperparameter (those are identifiers) and let any metric or parameter name through.
TRAINING_FAMILIES = {
    "eval": ("metric", "a metric of trainer.evaluate() at the step"),
    "eval_se": ("metric", "its standard error (0 when exact)"),
    "variance": ("metric", "gradient variance of one estimate for one parameter tensor (trace "
                           "of its covariance), on the fixed evaluation minibatch"),
    "variance_se": ("metric", "its standard error"),
}


def family_column(family: str, name: str) -> str:
    """The training-table column of `name` in `family` (see TRAINING_FAMILIES)."""
    if family not in TRAINING_FAMILIES:
        raise ValueError(f"unknown training column family {family!r}")
    return f"{family}[{name}]"


def split_family_column(column: str) -> tuple[str, str] | None:
    """(family, name) of a family column, or None for any other column."""
    family, bracket, rest = column.partition("[")
    if bracket and rest.endswith("]") and family in TRAINING_FAMILIES:
        return family, rest[:-1]
    return None


# Every name a setting or hyperparameter must not take, lower-cased: DuckDB and other SQL tools
# match column names case-insensitively, so `K` would collide with `k`. Both tables count.
RESERVED = frozenset(name.lower() for name in (*BY_NAME, *TRAINING_BY_NAME))


# Settings and hyperparameters declared so far: lower-cased name -> (name, owner, role, type).
_DECLARED: dict[str, tuple[str, str, str, type]] = {}


def declare(name: str, role: str, kind: type, owner: str) -> None:
    """Declare a setting or hyperparameter column, refusing names that would make an ambiguous
    results column: a fixed column's name in any case, or a name declared before that differs
    only in case or has another type. The same name may be declared again (many suites have
    `dim`) with the same spelling and type. Raises ValueError."""
    lowered = name.lower()
    if lowered in RESERVED:
        fixed = next(c for c in (*BY_NAME, *TRAINING_BY_NAME) if c.lower() == lowered)
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


def markdown_table(columns: tuple[Column, ...], families: dict[str, tuple[str, str]] | None = None
                   ) -> str:
    """The declared columns as a markdown table (README's schema section is this, verbatim:
    tests/test_readme.py keeps the two equal; scripts/schema_table.py rewrites it)."""
    rows = [(f"`{c.name}`", c.role, c.type.__name__, c.description) for c in columns]
    rows += [(f"`{family}[NAME]`", role, "float", text)
             for family, (role, text) in (families or {}).items()]
    lines = ["| column | role | type | meaning |", "|---|---|---|---|"]
    for name, role, kind, text in rows:
        escaped = text.replace("|", "\\|")  # a pipe inside a cell would end it
        lines.append(f"| {name} | {role} | {kind} | {escaped} |")
    return "\n".join(lines)
