"""pytest plugin (entry point `gradbench` in the pytest11 group, so installing gradbench makes it
available to any project's tests): check an estimator against gradbench's suites in a few lines.

    from gradbench.estimators import register_estimator

    @register_estimator("my-estimator", family="pathwise", unbiased=True, requires=(...))
    def my_estimator(problem, n): ...

    def test_my_estimator_is_unbiased(gradbench):
        gradbench.assert_unbiased("my-estimator", suite="gaussian-quadratic",
                                  settings={"sigma": [0.5, 2.0], "k": 0.0, "dim": 3})

    def test_my_estimator_variance_has_not_regressed(gradbench):
        current = gradbench.run("my-estimator", suite="gaussian-quadratic", settings={...})
        gradbench.assert_no_variance_regression(current, "tests/gradbench-baseline.parquet")

Make the baseline once with `gradbench.run(...).to_parquet(PATH)` (or `bench run`, any results
file or folder), at another seed than the test's. Settings not given keep the suite's default
values (the whole default grid over them); a setting or hyperparameter may be one value or a list.
Both assertions use bench.check's SE-based tests with Benjamini-Hochberg over the rows, so a
correct estimator fails with probability at most alpha per call whatever the number of cells.

The same helpers are importable: `from gradbench.app.pytest_plugin import assert_unbiased, ...`.
Nothing heavy is imported until a helper runs: pytest loads this module in every session of an
environment where gradbench is installed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import pandas as pd

    from gradbench.app.check import CheckResult

UNBIASED_ALPHA = 1e-3  # per assert_unbiased call: unit tests run often, with fixed seeds


def _values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def run(
    estimator: str,
    suite: str,
    settings: Mapping[str, Any] | None = None,
    hyperparams: Mapping[str, Any] | None = None,
    samples: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float64",
) -> pd.DataFrame:
    """Run `estimator` on a suite's grid in process (no files) and return tidy results, with the
    same columns (run metadata included) as `bench run` writes, so `.to_parquet(path)` makes a
    baseline that `bench check` and `assert_no_variance_regression` read."""
    import pandas as pd

    from gradbench.app import planning
    from gradbench.app.measure import run_cell
    from gradbench.results import store

    # Through the planner's own parsing and validation: values as the CLI would spell them.
    overrides = {name: [repr(v) if isinstance(v, float) else str(v) for v in _values(value)]
                 for name, value in (settings or {}).items()}
    for name, value in (hyperparams or {}).items():
        overrides[f"{estimator}.{name}"] = [str(v) for v in _values(value)]
    request = planning.RunRequest(suite=suite, estimators=(estimator,), overrides=overrides,
                                  samples=samples, seed=seed, devices=(device,), dtype=dtype)
    plan = planning.plan(request)
    meta = store.run_metadata(store.new_run_id(), f"pytest: gradbench.run({estimator!r}, "
                              f"suite={suite!r}, seed={seed})")
    # The same table, schema and metadata columns as a cell file bench run writes.
    parts = [store.cell_table(run_cell(cell), meta).to_pandas() for cell in plan.cells]
    return pd.concat(parts, ignore_index=True)


def _results(value: pd.DataFrame | str | Path | Sequence[str | Path]) -> pd.DataFrame:
    import pandas as pd

    from gradbench.results import store

    if isinstance(value, pd.DataFrame):
        return value
    paths = [value] if isinstance(value, str | Path) else list(value)
    return store.read_results(*[Path(p) for p in paths])


def assert_unbiased(
    estimator: str,
    suite: str,
    settings: Mapping[str, Any] | None = None,
    hyperparams: Mapping[str, Any] | None = None,
    samples: int | None = None,
    seed: int = 0,
    alpha: float = UNBIASED_ALPHA,
    device: str = "cpu",
    dtype: str = "float64",
) -> pd.DataFrame:
    """Run `estimator` on the suite's cells and assert that no coordinate's bias is significant:
    two-sided z = |bias| / bias_se per (cell, param, coord), Benjamini-Hochberg over all of them
    at `alpha`. Returns the results. Cells need a known truth (analytic, enumeration, quadrature
    or reference); it is a BenchError to ask where there is none."""
    __tracebackhide__ = True  # pytest shows the caller's line, not this helper's
    import numpy as np

    from gradbench.app import check
    from gradbench.app.errors import BenchError
    from gradbench.results import decisions, store

    frame = run(estimator, suite, settings, hyperparams, samples, seed, device, dtype)
    # The gate's own tests: coordinate rows (tensor rows where coordinates were capped); rows
    # whose mean is not reliable at this n (heavy tail, rare states) are not tested.
    z, p, candidate = check.bias_tests(frame.assign(unbiased=True))
    if not candidate.any():
        raise BenchError(f"{suite} has no exact gradient on these settings (truth_method "
                         f"{', '.join(sorted(frame['truth_method'].unique()))}); "
                         "assert_unbiased needs a suite with a known truth")
    if np.isnan(z[candidate]).all():
        reasons = sorted(set(frame.loc[candidate, "reliability_reason"]))
        raise AssertionError(f"{estimator} on {suite}: no coordinate's mean is reliable at "
                             f"this n, nothing to test ({'; '.join(reasons)[:500]})")
    q = decisions.benjamini_hochberg(p)
    failed = frame.assign(z=z, q=q)[q <= alpha]
    if len(failed):
        settings_cols = store.setting_columns(frame)
        lines = [f"{estimator} is biased on {suite}: {len(failed)} of {int((~np.isnan(z)).sum())}"
                 f" coordinates have significant bias (Benjamini-Hochberg, alpha={alpha:g}); "
                 "worst:"]
        for row in failed.sort_values("z", ascending=False).head(10).itertuples(index=False):
            r = row._asdict()
            where = " ".join(f"{c}={r[c]:g}" if isinstance(r[c], float) else f"{c}={r[c]}"
                             for c in settings_cols if c in r and not _isnull(r[c]))
            lines.append(f"  {where} {r['param']}[{r['coord']}]: truth {r['truth']:.6g}, "
                         f"mean {r['mean']:.6g}, bias {r['bias']:.3g} ± {r['bias_se']:.2g} "
                         f"(z = {r['z']:.1f}, q = {r['q']:.2g})")
        raise AssertionError("\n".join(lines))
    return frame


def _isnull(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def assert_no_variance_regression(
    current: pd.DataFrame | str | Path | Sequence[str | Path],
    baseline: pd.DataFrame | str | Path | Sequence[str | Path],
    tolerance: float | None = None,
    alpha: float | None = None,
    allow_missing: bool = False,
) -> CheckResult:
    """Assert that `bench check CURRENT --baseline BASELINE` would pass: no variance regression
    (significant and above `tolerance`), no significant bias of an estimator registered
    unbiased, and (unless allow_missing) no baseline cell missing from CURRENT. CURRENT and
    BASELINE are results frames, or results files/folders. Returns the CheckResult."""
    __tracebackhide__ = True
    from gradbench.app import check, check_summary

    result = check.compare(
        _results(current), _results(baseline),
        tolerance=check.DEFAULT_TOLERANCE if tolerance is None else tolerance,
        alpha=check.DEFAULT_ALPHA if alpha is None else alpha,
        allow_missing=allow_missing,
    )
    if result.failed:
        lines = ["gradbench check failed:",
                 *[f"  {line}" for line in check_summary.summary_lines(result)]]
        for row in check_summary.failing_cells(result).head(10).itertuples(index=False):
            lines.append(f"  {row.verdict}: {row.estimator} {row.suite} {row.settings} "
                         f"{row.param}: {row.coords}/{row.of} coords, worst variance ratio "
                         f"{row.ratio:.3g} (z = {row.z_variance:.1f}), bias z = {row.z_bias:.1f}")
        for row in result.missing.head(10).itertuples(index=False):
            lines.append(f"  missing: {row.estimator} {row.suite} {row.settings}")
        raise AssertionError("\n".join(lines))
    return result


class GradBench:
    """What the `gradbench` fixture gives: the helpers of this module as methods."""

    run = staticmethod(run)
    assert_unbiased = staticmethod(assert_unbiased)
    assert_no_variance_regression = staticmethod(assert_no_variance_regression)


@pytest.fixture
def gradbench() -> GradBench:
    """gradbench's test helpers: run, assert_unbiased, assert_no_variance_regression."""
    return GradBench()
