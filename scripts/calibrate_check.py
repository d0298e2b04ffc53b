"""Measure `bench check`'s error rates per suite: false alarms on same-code, different-seed runs
(A/A pairs) with a Clopper-Pearson bound, and power against a 1.25x variance inflation.

    .venv/bin/python scripts/calibrate_check.py --config categorical --runs 740   # 370 pairs
    .venv/bin/python scripts/calibrate_check.py --config all --runs 40            # every suite
    .venv/bin/python scripts/calibrate_check.py --config ci --runs 80             # CI's gate runs
    .venv/bin/python scripts/calibrate_check.py --config bernoulli-toy --samples 2000 --runs 100
    .venv/bin/python scripts/calibrate_check.py --config categorical --runs 740 --refresh relax
    .venv/bin/python scripts/calibrate_check.py --table docs/calibration-check.md  # cached reports

A configuration is one suite's default grid (every estimator that applies), at its default
samples or --samples; `ci` is scripts/gate_runs.sh's runs. Bounding the false-alarm rate at 1%
(95% two-sided Clopper-Pearson upper end) needs 0 alarms in 368 pairs (1 in 556).

Phase 1 (expensive, cached, resumable): for seeds 1000, 1001, ... run every part once through
the real runner (gradbench.app.execute.execute, the code path of `bench run`), one results
folder per part and seed under --cache; an interrupted call resumes its half-finished run. All
runs of a call are made by one process: warm-ups and rare-state enumerations, pure functions of
a cell's configuration, are then computed once per configuration (gradbench.app.measure), which
made a categorical run ~6x cheaper. The wall time of every run is recorded.

--shard K/N makes runs only for every N-th seed from the K-th (0 <= K < N), and no analysis:
N processes with K = 0 .. N-1 fill one cache on N cores, then one call without --shard (it
finds every run cached) analyses all pairs.

--refresh ESTIMATOR re-measures one estimator's cells of the cached runs when a change to the
reliability rules touched only that estimator (see `refresh`), so the cache need not be rebuilt.

Phase 2 (cheap): disjoint seed pairs (0, 1), (2, 3), ..., so pairs are independent and a
binomial interval is honest; each seed's results are all its parts together.
  - null: check.compare(current=seed 2i+1, baseline=seed 2i); a false alarm is a pair where
    anything fails (a variance or bias regression). Rows not reliable at their n are "not
    testable" (gradbench.app.check) and counted separately.
  - power: the same pairs with every current row's variance (and its SE and interval) times the
    inflation: exactly what the degraded estimator mean + sqrt(c) (X - mean) gives on the same
    draws (every standardised moment, hence every reliability verdict, unchanged). Reported: the
    pairs whose check fails, and the inflated cells flagged among the cells with a testable
    variance row.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from scipy.stats import beta

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradbench.app import (  # noqa: E402
    check,
    check_summary,
    check_tests,
    execute,
    measure,
    planning,
)
from gradbench.app.errors import BenchError  # noqa: E402
from gradbench.core.suite import all_suites, get_suite  # noqa: E402
from gradbench.results import store  # noqa: E402

BASE_SEED = 1000
# The levels at which every comparison is decided (the tests' statistics do not depend on it):
# the gate's default, 0.001, and its former default, 0.005 (see gradbench.app.check).
ALPHAS = (0.001, 0.005)
CI_PARTS = ("gaussian-quadratic --set dim=30", "gaussian-quadratic --set dim=1 --samples 100000",
            "gaussian-exp --samples 100000", "gaussian-cos --samples 100000", "bernoulli-toy")


@dataclass(frozen=True)
class Part:
    """One `bench run` of a configuration."""

    spec: str
    suite: str
    sets: tuple[str, ...]
    samples: int | None

    @staticmethod
    def parse(spec: str) -> Part:
        words = shlex.split(spec)
        sets, samples, rest = [], None, iter(words[1:])
        for word in rest:
            if word == "--set":
                sets.append(next(rest))
            elif word == "--samples":
                samples = int(next(rest))
            else:
                raise BenchError(f"part {spec!r}: write SUITE [--set K=V,...] [--samples N]")
        return Part(spec, words[0], tuple(sets), samples)

    def request(self, seed: int) -> planning.RunRequest:
        return planning.RunRequest(suite=self.suite, overrides=planning.parse_assignments(
            self.sets), samples=self.samples, seed=seed)

    def folder(self, cache: Path) -> Path:
        key = json.dumps([self.suite, sorted(self.sets), self.samples])
        slug = "-".join([self.suite, *[s.replace("=", "") for s in self.sets],
                         f"n{self.samples or 'default'}"])
        return cache / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def configuration(name: str, samples: int | None) -> list[Part]:
    if name == "ci":
        return [Part.parse(spec) for spec in CI_PARTS]
    get_suite(name)  # a did-you-mean for a typo
    return [Part(name + (f" --samples {samples}" if samples else ""), name, (), samples)]


def finished_run(folder: Path) -> Path | None:
    """The finished run under a seed's folder, if any (finished: _run.json says so)."""
    if not folder.is_dir():
        return None
    for run_dir in sorted(p for p in folder.iterdir() if not p.name.startswith(("_", "."))):
        try:
            if "finished_at" in store.read_run_json(run_dir):
                return run_dir
        except ValueError:  # no metadata: an unfinished or foreign folder
            continue
    return None


def generate(parts: list[Part], runs: int, cache: Path, shard: tuple[int, int] = (0, 1)
             ) -> tuple[list[list[Path]], float]:
    """Phase 1: a finished run of every part for seeds BASE_SEED .. BASE_SEED + runs - 1 (those
    of the shard (K, N): every N-th from the K-th); returns the run folders per seed and the
    recorded seconds of all of them."""
    seeds: list[list[Path]] = [[] for _ in range(runs)]
    seconds = 0.0
    first, step = shard
    for part in parts:
        for i in range(first, runs, step):
            folder = part.folder(cache) / f"seed-{BASE_SEED + i:05d}"
            done = finished_run(folder)
            timing = folder / "seconds.json"
            if done is None:
                start = time.perf_counter()
                partial = sorted(p for p in folder.iterdir() if not p.name.endswith(".json")) \
                    if folder.is_dir() else []
                outcome = execute.execute(part.request(BASE_SEED + i), folder,
                                          command="scripts/calibrate_check.py",
                                          run_id=partial[0].name if partial else None)
                done = outcome.run_dir
                timing.write_text(json.dumps(time.perf_counter() - start))
                print(f"seed {BASE_SEED + i} {part.spec}: {len(outcome.plan.cells)} cells in "
                      f"{json.loads(timing.read_text()):.1f} s", flush=True)
            seconds += json.loads(timing.read_text()) if timing.exists() else math.nan
            seeds[i].append(done)
    return seeds, seconds


# Written by measure after the estimates: what a change of the reliability rules changes.
VERDICTS = ("reliable", "mean_reliable", "reliability_reason", "samples_needed")
ESTIMATES = ("n", "mean", "variance", "variance_se", "kurtosis", "skewness", "tail_index")


def refresh(parts: list[Part], runs: int, cache: Path, estimator: str) -> None:
    """Re-measure one estimator's cells of every cached run with the current code and replace
    their verdict columns (VERDICTS), after a change to the reliability rules that touches only
    that estimator: a cell's draws are a function of its seed, so its estimates must come out
    bitwise identical (checked on ESTIMATES; a mismatch stops the refresh). Resumable: a seed
    done is marked with refreshed-<estimator>-<rules>.json, <rules> a hash of the rule code."""
    rules = hashlib.sha256(b"".join((ROOT / "bench" / "core" / name).read_bytes() for name in
                                    ("reliability.py", "rare_states.py"))).hexdigest()[:8]
    for part in parts:
        for i in range(runs):
            folder = part.folder(cache) / f"seed-{BASE_SEED + i:05d}"
            marker = folder / f"refreshed-{estimator}-{rules}.json"
            run_dir = finished_run(folder)
            if marker.exists() or run_dir is None:
                continue
            request = replace(part.request(BASE_SEED + i), estimators=(estimator,))
            for cell in planning.plan(request).cells:
                _refresh_cell(run_dir / f"{cell.cell_id}.parquet", measure.run_cell(cell))
            marker.write_text(json.dumps({"estimator": estimator, "rules": rules}))
            print(f"seed {BASE_SEED + i} {part.spec}: {estimator} verdicts refreshed", flush=True)


def _refresh_cell(path: Path, rows: dict[str, list]) -> None:
    table = pq.read_table(path)
    for name in ESTIMATES:
        old, new = table.column(name).to_pylist(), rows[name]
        same = all(a == b or (a != a and b != b) for a, b in zip(old, new, strict=True))
        if not same:
            raise BenchError(f"{path}: {name} differs from the cached run; refresh needs the "
                             f"same draws (rerun the calibration in a new --cache instead)")
    for name in VERDICTS:
        index = table.schema.get_field_index(name)
        table = table.set_column(index, table.schema.field(index),
                                 pa.array(rows[name], type=table.schema.field(index).type))
    store.write_parquet(path, table)


# ---------------------------------------------------------------- phase 2: analysis


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


def analyse(seeds: list[list[Path]], inflation: float) -> dict:
    """False alarms and power at the gate's default alpha and at each of ALPHAS."""
    pairs = len(seeds) // 2
    if pairs < 1:
        raise BenchError("need at least 2 runs (1 pair); raise --runs")
    levels = {alpha: {"alarms": 0, "failing": 0, "hit": 0, "testable": 0}
              for alpha in dict.fromkeys((check.DEFAULT_ALPHA, *ALPHAS))}
    flagged_rows, untestable = [], 0
    for i in range(pairs):
        baseline = store.read_results(*seeds[2 * i])
        current = store.read_results(*seeds[2 * i + 1])
        null = check.compare(current, baseline)
        power = check.compare(inflate(current, inflation), baseline)
        untestable += len(check_summary.untestable_cells(null))
        if null.failed:
            flagged_rows.append(null.regressions.assign(pair=i))
        for alpha, level in levels.items():
            null_a, power_a = _at_alpha(null, alpha), _at_alpha(power, alpha)
            hit, testable = _power(power_a)
            level["alarms"] += null_a.failed
            level["failing"] += power_a.failed
            level["hit"] += hit
            level["testable"] += testable
        hit, testable = _power(power)  # at the default alpha, as `null`
        print(f"pair {i}: null {'FLAGGED' if null.failed else 'clean'}, inflated "
              f"{hit}/{testable} testable cells flagged", flush=True)
    by_alpha = {str(alpha): {"false_alarms": level["alarms"],
                             "false_alarm_ci": list(clopper_pearson(level["alarms"], pairs)),
                             "power_runs": level["failing"],
                             "power_cells": level["hit"] / max(level["testable"], 1)}
                for alpha, level in levels.items()}
    default = levels[check.DEFAULT_ALPHA]
    report = {"pairs": pairs, "alpha": check.DEFAULT_ALPHA,
              **by_alpha[str(check.DEFAULT_ALPHA)], "by_alpha": by_alpha,
              "testable_cells": default["testable"] / pairs,
              "cells": null.rows["_cell"].nunique(), "rows": len(null.rows),
              "tests": null.tests, "untestable_pairs_per_check": untestable / pairs,
              "inflation": inflation}
    if flagged_rows:
        flagged = pd.concat(flagged_rows)
        report["false_alarm_rows"] = flagged[["pair", "estimator", "settings", "param", "coord",
                                              "verdict", "ratio", "z_variance", "z_bias"]
                                             ].astype(str).to_dict("records")
    return report


# ---------------------------------------------------------------- the table


def table(cache: Path) -> str:
    """One row per configuration (its report over the most pairs), at each of ALPHAS."""
    head = ["configuration", "samples per cell", "A/A pairs"]
    for alpha in ALPHAS:
        mark = " (default)" if alpha == check.DEFAULT_ALPHA else ""
        head += [f"alpha {alpha}{mark}: false alarms (95% CI)", "runs failing at 1.25x",
                 "inflated cells flagged"]
    head += ["cells (testable)", "not-testable (cell, param) per check", "compute"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in _latest_reports(cache):
        cells = [r["configuration"], str(r["samples"]), str(r["pairs"])]
        for alpha in ALPHAS:
            cells += _at_level(r, alpha)
        cells += [f"{r['cells']} ({r['testable_cells']:.0f})",
                  f"{r['untestable_pairs_per_check']:.1f}",
                  f"{r['run_seconds'] / 3600:.2f} h runs, "
                  f"{r['analysis_seconds'] / 60:.0f} min analysis"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _at_level(report: dict, alpha: float) -> list[str]:
    """False alarms, runs failing and cells flagged at `alpha` ('-' where not analysed)."""
    level = report.get("by_alpha", {}).get(str(alpha))
    if level is None:
        return ["-", "-", "-"]
    k, pairs = level["false_alarms"], report["pairs"]
    lo, hi = level["false_alarm_ci"]
    return [f"{k}/{pairs} ({lo:.1%}-{hi:.1%})", f"{level['power_runs']}/{pairs}",
            f"{level['power_cells']:.1%}"]


def _latest_reports(cache: Path) -> list[dict]:
    """Per configuration, the report over the most pairs."""
    best: dict[str, dict] = {}
    for path in sorted(cache.glob("report-*.json")):
        report = json.loads(path.read_text())
        name = report["configuration"]
        if name not in best or report["pairs"] > best[name]["pairs"]:
            best[name] = report
    return [best[name] for name in sorted(best)]


def _shard(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and int(k) < int(n)):
        raise argparse.ArgumentTypeError(f"{text!r}: write K/N with 0 <= K < N, e.g. 1/2")
    return int(k), int(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append",
                        help="a suite name, 'all' (every suite) or 'ci' (repeatable)")
    parser.add_argument("--samples", type=int, default=None,
                        help="estimates per cell (default: each suite's own)")
    parser.add_argument("--runs", type=int, default=20, help="seeds; pairs = runs // 2")
    parser.add_argument("--inflation", type=float, default=1.25)
    parser.add_argument("--cache", type=Path, default=ROOT / "results" / "calibration")
    parser.add_argument("--refresh", default=None, metavar="ESTIMATOR",
                        help="re-measure this estimator's cached cells with the current "
                             "reliability rules before the analysis (no new seeds)")
    parser.add_argument("--shard", type=_shard, default=None, metavar="K/N",
                        help="make only every N-th seed's runs from the K-th; no analysis")
    parser.add_argument("--table", type=Path, default=None,
                        help="write the table of every cached report here (no new runs)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        if args.table is not None:
            args.table.write_text(table(args.cache))
            print(args.table.read_text())
            return
        names = [n for c in args.config or ["all"] for n in
                 (sorted(all_suites()) if c == "all" else [c])]
        for name in names:
            parts = configuration(name, args.samples)
            if args.refresh:
                refresh(parts, args.runs, args.cache, args.refresh)
            seeds, seconds = generate(parts, args.runs, args.cache, args.shard or (0, 1))
            if args.shard is not None:
                continue  # another call analyses the whole cache
            start = time.perf_counter()
            report = analyse(seeds, args.inflation)
            samples = args.samples or ("mixed" if name == "ci" else
                                       get_suite(name).default_samples)
            report |= {"configuration": name, "parts": [p.spec for p in parts],
                       "samples": samples, "run_seconds": seconds,
                       "analysis_seconds": time.perf_counter() - start}
            path = args.cache / f"report-{name}-n{samples}-r{args.runs}.json"
            path.write_text(json.dumps(report, indent=2))
            lo, hi = report["false_alarm_ci"]
            print(f"== {name}: {report['false_alarms']}/{report['pairs']} false alarms (95% CI "
                  f"{lo:.1%}-{hi:.1%}); power {report['power_runs']}/{report['pairs']} runs, "
                  f"{report['power_cells']:.1%} cells", flush=True)
    except BenchError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
