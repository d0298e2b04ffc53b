"""Phase 2 of scripts/calibrate_check.py: one A/A pair of runs judged by `bench check` (a false
alarm, and the power against an inflated variance), each pair's verdicts cached, and their
summary with Clopper-Pearson intervals.

A pair's cache is keyed by a hash of every gradbench module and of this file, the code that
decides it, so a changed gate is never judged by old verdicts; the generation and the table
(scripts/calibrate_check.py) can change without redoing any analysis.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
from scipy.stats import beta

from gradbench.app import check, check_summary, check_tests
from gradbench.app.errors import BenchError
from gradbench.results import store

ROOT = Path(__file__).resolve().parents[1]
# The levels at which every comparison is decided (the tests' statistics do not depend on it):
# the gate's default, 0.001, and its former default, 0.005 (see gradbench.app.check).
ALPHAS = (0.001, 0.005)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval for k successes in n trials."""
    tail = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return lo, hi


def inflate(frame: pd.DataFrame, factor: float) -> pd.DataFrame:
    """What mean + sqrt(factor) (X - mean) gives on the same draws: the variance, its SE and its
    interval scale by factor, std by sqrt(factor); the mean and every standardised moment stay."""
    out = frame.copy()
    for column in ("variance", "variance_se", "variance_lo", "variance_hi",
                   "mean_coord_variance", "mean_coord_variance_se", "max_coord_variance",
                   "max_coord_variance_se"):
        out[column] = out[column] * factor
    out["std"] = out["std"] * math.sqrt(factor)
    return out


def _power(result: check.CheckResult) -> tuple[int, int]:
    """Inflated cells flagged for variance, and cells with a variance test."""
    tested = result.rows[result.rows["z_variance"].notna()]
    per_cell = (tested["verdict"].isin([check.VARIANCE, check.VARIANCE_AND_BIAS])
                .groupby(tested["_cell"]).any())
    return int(per_cell.sum()), len(per_cell)


def _at_alpha(result: check.CheckResult, alpha: float) -> check.CheckResult:
    """The same comparison decided at another alpha (the tests' statistics do not change)."""
    if alpha == result.alpha:
        return result
    rows, tests = check_tests.decide(result.rows, result.tolerance, alpha)
    return replace(result, rows=rows, alpha=alpha, tests=tests)


def pair_folder(cache: Path, name: str, samples: int | None, inflation: float) -> Path:
    """Where a configuration's per-pair analyses are kept, keyed by the code that decides them
    (every gradbench module and this file): a changed gate never reuses an old verdict."""
    code = hashlib.sha256()
    for path in [*sorted((ROOT / "bench").rglob("*.py")), Path(__file__).resolve()]:
        code.update(path.read_bytes())
    return cache / f"pairs-{name}-n{samples or 'default'}-x{inflation:g}-{code.hexdigest()[:8]}"


def analyse_pair(baseline_runs: list[Path], current_runs: list[Path], inflation: float) -> dict:
    """One A/A pair: its false alarm and the inflated check's power at every alpha."""
    start = time.perf_counter()
    baseline = store.read_results(*baseline_runs)
    current = store.read_results(*current_runs)
    null = check.compare(current, baseline)
    power = check.compare(inflate(current, inflation), baseline)
    levels = {}
    for alpha in dict.fromkeys((check.DEFAULT_ALPHA, *ALPHAS)):
        null_a, power_a = _at_alpha(null, alpha), _at_alpha(power, alpha)
        hit, testable = _power(power_a)
        levels[str(alpha)] = {"alarm": bool(null_a.failed), "failing": bool(power_a.failed),
                              "hit": hit, "testable": testable}
    result = {"levels": levels, "untestable": len(check_summary.untestable_cells(null)),
              "cells": int(null.rows["_cell"].nunique()), "rows": len(null.rows),
              "tests": null.tests, "seconds": time.perf_counter() - start}
    if null.failed:
        result["false_alarm_rows"] = null.regressions[
            ["estimator", "settings", "param", "coord", "verdict", "ratio", "z_variance",
             "z_bias"]].astype(str).to_dict("records")
    return result


def cached_pair(folder: Path, i: int, baseline_runs: list[Path], current_runs: list[Path],
                inflation: float) -> dict:
    """Pair i's analysis, from folder if an earlier call (or a shard) made it; else made and
    written there atomically."""
    path = folder / f"pair-{i:05d}.json"
    if path.exists():
        return json.loads(path.read_text())
    result = analyse_pair(baseline_runs, current_runs, inflation)
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(result))
    partial.replace(path)
    default = result["levels"][str(check.DEFAULT_ALPHA)]
    print(f"pair {i}: null {'FLAGGED' if default['alarm'] else 'clean'}, inflated "
          f"{default['hit']}/{default['testable']} testable cells flagged", flush=True)
    return result


def summarise(results: list[dict], inflation: float) -> dict:
    """False alarms (with a Clopper-Pearson interval) and power over independent pairs, at the
    gate's default alpha and at each of ALPHAS."""
    pairs = len(results)
    if pairs < 1:
        raise BenchError("need at least 2 runs (1 pair); raise --runs")
    by_alpha = {}
    for alpha in results[0]["levels"]:
        levels = [r["levels"][alpha] for r in results]
        alarms = sum(level["alarm"] for level in levels)
        by_alpha[alpha] = {"false_alarms": alarms,
                           "false_alarm_ci": list(clopper_pearson(alarms, pairs)),
                           "power_runs": sum(level["failing"] for level in levels),
                           "power_cells": sum(level["hit"] for level in levels)
                           / max(sum(level["testable"] for level in levels), 1)}
    default = str(check.DEFAULT_ALPHA)
    report = {"pairs": pairs, "alpha": check.DEFAULT_ALPHA, **by_alpha[default],
              "by_alpha": by_alpha,
              "testable_cells": sum(r["levels"][default]["testable"] for r in results) / pairs,
              "cells": results[-1]["cells"], "rows": results[-1]["rows"],
              "tests": results[-1]["tests"],
              "untestable_pairs_per_check": sum(r["untestable"] for r in results) / pairs,
              "inflation": inflation}
    flagged = [{"pair": i, **row} for i, r in enumerate(results)
               for row in r.get("false_alarm_rows", [])]
    if flagged:
        report["false_alarm_rows"] = flagged
    return report
