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

--shard K/N makes and analyses only every N-th pair from the K-th (0 <= K < N), and writes no
report: N processes with K = 0 .. N-1 fill one cache on N cores, then one call without --shard
(it finds every run and every pair's analysis cached) writes the report.

--refresh ESTIMATOR re-measures one estimator's cells of the cached runs when a change to the
reliability rules touched only that estimator (see `refresh`), so the cache need not be rebuilt.

Phase 2 (~8 s a gaussian-quadratic pair): disjoint seed pairs (0, 1), (2, 3), ..., so pairs are
independent and a binomial interval is honest; each seed's results are all its parts together.
Each pair's analysis is cached under pairs-<configuration>-...-<code hash>/ (the hash of every
gradbench module and of scripts/check_pairs.py, so a changed gate is never judged by old
verdicts).
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

import pyarrow as pa
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from check_pairs import ALPHAS, cached_pair, pair_folder, summarise  # noqa: E402

from gradbench.app import check, execute, measure, planning  # noqa: E402
from gradbench.app.errors import BenchError  # noqa: E402
from gradbench.core.suite import all_suites, get_suite  # noqa: E402
from gradbench.results import store  # noqa: E402

BASE_SEED = 1000
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


def run_seed(parts: list[Part], i: int, cache: Path) -> tuple[list[Path], float]:
    """Seed BASE_SEED + i: a finished run of every part (made or resumed where missing), and
    their recorded seconds."""
    runs, seconds = [], 0.0
    for part in parts:
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
        runs.append(done)
    return runs, seconds


def shard_pairs(runs: int, shard: tuple[int, int]) -> list[int]:
    """The pairs (seeds 2i, 2i + 1) of shard (K, N): every N-th from the K-th. Whole pairs, so a
    shard can analyse each of its pairs as soon as it has made it."""
    first, step = shard
    return list(range(first, runs // 2, step))


def generate(parts: list[Part], runs: int, cache: Path) -> tuple[list[list[Path]], float]:
    """Phase 1: a finished run of every part for seeds BASE_SEED .. BASE_SEED + runs - 1; returns
    the run folders per seed and the recorded seconds of all of them."""
    seeds, seconds = [], 0.0
    for i in range(runs):
        folders, spent = run_seed(parts, i, cache)
        seeds.append(folders)
        seconds += spent
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
                        help="make and analyse only every N-th pair from the K-th; no report")
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
            folder = pair_folder(args.cache, name, args.samples, args.inflation)
            if args.shard is not None:  # make and analyse this shard's pairs; no report
                for i in shard_pairs(args.runs, args.shard):
                    baseline, current = (run_seed(parts, j, args.cache)[0]
                                         for j in (2 * i, 2 * i + 1))
                    cached_pair(folder, i, baseline, current, args.inflation)
                continue
            seeds, seconds = generate(parts, args.runs, args.cache)
            results = [cached_pair(folder, i, seeds[2 * i], seeds[2 * i + 1], args.inflation)
                       for i in range(args.runs // 2)]
            report = summarise(results, args.inflation)
            samples = args.samples or ("mixed" if name == "ci" else
                                       get_suite(name).default_samples)
            report |= {"configuration": name, "parts": [p.spec for p in parts],
                       "samples": samples, "run_seconds": seconds,
                       "analysis_seconds": sum(r["seconds"] for r in results)}
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
