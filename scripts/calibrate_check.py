"""Measure `bench check`'s error rates: false alarms on same-code, different-seed runs and power
against an injected variance inflation.

    # the default gaussian-quadratic grid at its default 4000 samples
    .venv/bin/python scripts/calibrate_check.py --runs 80
    # the CI gate's configuration (.ci/run): several parts, composed per seed
    .venv/bin/python scripts/calibrate_check.py --runs 80 \
        --part "gaussian-quadratic --keep dim=30,1000" \
        --part "gaussian-quadratic --set dim=1 --samples 100000" \
        --part "gaussian-exp --samples 100000" --part "gaussian-cos --samples 100000"

Phase 1 (expensive, cached): for seeds 1000, 1001, ... run every part once through the real
runner (`gradbench.app.execute.execute`, the code path of `bench run`), one results folder
per part and
seed under --cache. Cached runs are reused, so the experiment can be grown or re-analysed for
free; all runs are made by one process, so they use the same code even if files change meanwhile.
A part is `SUITE [--set KEY=V1,V2]... [--samples N] [--keep KEY=V1,V2]...`; --keep selects cells
after the run, which is exact, not an approximation: each cell's seed derives from its own key, so
a cell's numbers do not depend on which other cells ran (a cached full grid serves a sub-grid).

Phase 2 (cheap): disjoint seed pairs (0, 1), (2, 3), ..., so pairs are independent and a
binomial confidence interval is honest; each seed's results are all its parts together.
  - null: `gradbench.app.check.compare(current=seed 2i+1, baseline=seed 2i)`; a false alarm is
    a pair
    where anything is flagged (variance or bias regression).
  - power: the same pairs with every current row's variance and variance_se multiplied by the
    inflation factor. That is exactly what the degraded estimator mean + sqrt(c) (X - mean) would
    give on the same draws (every standardised moment unchanged). It keeps the estimator's
    relative SE (its kurtosis) as it was; a degradation by adding independent noise lowers the
    kurtosis, so it is easier to detect: scaling is the conservative choice. A real degraded
    estimator (three independent draws mixed, variance exactly 1.5x) is in tests/test_check.py.
It also reports the null distribution of the per-row z statistics (their calibration in the
tail) and sweeps tolerance and alpha, so the defaults in bench/check.py can be read off it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradbench.app import check, execute, planning  # noqa: E402
from gradbench.app.errors import BenchError  # noqa: E402
from gradbench.results import decisions, store  # noqa: E402

BASE_SEED = 1000


@dataclass(frozen=True)
class Part:
    """One `bench run` of the configuration, plus an optional post-hoc cell selection."""

    spec: str
    suite: str
    sets: tuple[str, ...]
    samples: int | None
    keep: tuple[str, ...]

    @staticmethod
    def parse(spec: str) -> Part:
        parser = argparse.ArgumentParser(prog="--part", add_help=False, exit_on_error=False)
        parser.add_argument("suite")
        parser.add_argument("--set", action="append", default=[])
        parser.add_argument("--samples", type=int, default=None)
        parser.add_argument("--keep", action="append", default=[])
        try:
            parsed = parser.parse_args(shlex.split(spec))
        except (argparse.ArgumentError, SystemExit):
            raise BenchError(f"--part {spec!r}: write SUITE [--set K=V,...] [--samples N] "
                             "[--keep K=V,...]") from None
        return Part(spec, parsed.suite, tuple(parsed.set), parsed.samples, tuple(parsed.keep))

    def request(self, estimators: tuple[str, ...], seed: int) -> planning.RunRequest:
        return planning.RunRequest(suite=self.suite, estimators=estimators,
                                 overrides=planning.parse_assignments(self.sets),
                                 samples=self.samples, seed=seed)

    def folder(self, cache: Path, estimators: tuple[str, ...]) -> Path:
        """Cache folder for this part's runs (the cell selection does not change the runs)."""
        key = json.dumps([self.suite, sorted(self.sets), self.samples, list(estimators)])
        slug = "-".join([self.suite, *[s.replace("=", "") for s in self.sets],
                         f"n{self.samples or 'default'}"])
        return cache / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"

    def select(self, frame: pd.DataFrame) -> pd.DataFrame:
        for key, values in planning.parse_assignments(self.keep).items():
            if key not in frame:
                raise BenchError(f"--keep {key}: no such column in {self.suite} results")
            column = frame[key]
            wanted = {float(v) for v in values} if pd.api.types.is_numeric_dtype(column) \
                else set(values)
            frame = frame[column.isin(wanted)]
        return frame


def finished_run(folder: Path) -> Path | None:
    """The finished run under a seed's folder, if any (a run is finished when _run.json says so)."""
    if not folder.is_dir():
        return None
    for run_dir in sorted(p for p in folder.iterdir() if not p.name.startswith(("_", "."))):
        try:
            if "finished_at" in store.read_run_json(run_dir):
                return run_dir
        except ValueError:  # no metadata: an unfinished or foreign folder
            continue
    return None


def check_cached(run_dir: Path, request: planning.RunRequest) -> None:
    """A cached run must have been made with the options asked for now."""
    made = store.read_run_json(run_dir).get("request", {})
    asked = execute.request_to_json(request)
    if made != asked:
        raise BenchError(f"{run_dir} was made with other options ({made}); give another --cache "
                         "for these options")


def generate(args: argparse.Namespace, parts: list[Part]) -> list[list[Path]]:
    """Phase 1: make sure every part has a run for seeds BASE_SEED .. BASE_SEED + runs - 1;
    returns, per seed, the run folders of its parts."""
    estimators = tuple(args.estimator or ())
    seeds: list[list[Path]] = [[] for _ in range(args.runs)]
    for part in parts:  # part by part: a cheap part's runs are all there before a costly one's
        for i in range(args.runs):
            seed = BASE_SEED + i
            folder = part.folder(args.cache, estimators) / f"seed-{seed:05d}"
            request = part.request(estimators, seed)
            done = finished_run(folder)
            if done is not None:
                check_cached(done, request)
            else:
                start = time.perf_counter()
                # A half-finished run from an interrupted call is resumed, not duplicated.
                partial = sorted(folder.iterdir()) if folder.is_dir() else []
                outcome = execute.execute(request, folder, command="scripts/calibrate_check.py",
                                         run_id=partial[0].name if partial else None)
                done = outcome.run_dir
                print(f"seed {seed} {part.spec}: {len(outcome.plan.cells)} cells in "
                      f"{time.perf_counter() - start:.1f} s", flush=True)
            seeds[i].append(done)
    return seeds


def load(runs: list[Path], parts: list[Part]) -> pd.DataFrame:
    return pd.concat([part.select(store.read_results(run)) for run, part in zip(runs, parts,
                                                                              strict=True)],
                     ignore_index=True)


# ---------------------------------------------------------------- phase 2: analysis


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval for k successes in n trials."""
    from scipy.stats import beta

    tail = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return lo, hi


def rate(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{k}/{n} = {k / n:.1%} (95% CI {lo:.1%} .. {hi:.1%})"


def inflate(frame: pd.DataFrame, factor: float) -> pd.DataFrame:
    """The results the degraded estimator mean + sqrt(factor) (X - mean) would have given on the
    same draws: variance and its SE scale by factor, std by sqrt(factor), the mean is unchanged."""
    out = frame.copy()
    out["variance"] = out["variance"] * factor
    out["variance_se"] = out["variance_se"] * factor
    out["std"] = out["std"] * math.sqrt(factor)
    return out


def flags(rows: pd.DataFrame, tolerance: float, alpha: float) -> pd.Series:
    """Which rows `compare` would flag at this tolerance and alpha (check.decide on the rows'
    statistics: one comparison serves the whole sweep)."""
    decided, _ = check.decide(rows, tolerance, alpha)
    return decided["verdict"].isin(check.REGRESSIONS)


def dims(rows: pd.DataFrame) -> pd.Series:
    return rows["settings"].str.extract(r"\bdim=(\d+)")[0].fillna("-")


def analyse(args: argparse.Namespace, parts: list[Part], seeds: list[list[Path]]) -> dict:
    pairs = len(seeds) // 2
    if pairs < 1:
        raise BenchError("need at least 2 runs (1 pair); raise --runs")
    tolerances = (1.0, 1.05, 1.10, 1.15, 1.20, 1.25, 1.30)
    alphas = (0.001, 0.005, 0.01, 0.05)
    null_any = {(t, a): 0 for t in tolerances for a in alphas}
    power_any = {(t, a): 0 for t in tolerances for a in alphas}
    # The same, counting only estimators with (warm) or without (cold) a warm-up.
    null_warm = dict.fromkeys(null_any, 0)
    null_cold = dict.fromkeys(null_any, 0)
    null_flagged_rows: list[pd.DataFrame] = []
    z_null: list[pd.DataFrame] = []
    power_rows: list[pd.DataFrame] = []
    sweep_hits: list[dict] = []
    tests = rows_per_run = 0
    start = time.perf_counter()
    for i in range(pairs):
        baseline = load(seeds[2 * i], parts)
        current = load(seeds[2 * i + 1], parts)
        null = check.compare(current, baseline, tolerance=args.tolerance, alpha=args.alpha)
        rows = null.rows
        tests, rows_per_run = null.tests, len(rows)
        default = flags(rows, args.tolerance, args.alpha)
        assert default.equals(rows["verdict"].isin(check.REGRESSIONS)), "flags() != compare()"
        warm = rows["warmup"].to_numpy()
        for key in null_any:
            flagged = flags(rows, *key).to_numpy()
            null_any[key] += bool(flagged.any())
            null_warm[key] += bool(flagged[warm].any())
            null_cold[key] += bool(flagged[~warm].any())
        if default.any():
            null_flagged_rows.append(rows[default].assign(pair=i))
        z_null.append(rows[["estimator", "param", "z_variance", "z_bias", "warmup"]].assign(
            dim=dims(rows)))

        inflated = check.compare(inflate(current, args.inflation), baseline,
                                 tolerance=args.tolerance, alpha=args.alpha)
        rows = inflated.rows
        for key in power_any:
            power_any[key] += bool(flags(rows, *key).any())
        # Inflatable rows: a variance to scale and a test (naive's zeros stay zero).
        target = rows["z_variance"].notna()
        keep = rows.loc[target, ["_cell", "estimator", "param", "coord", "settings",
                                 "log_ratio_se", "q_variance", "ratio", "warmup"]]
        power_rows.append(keep.assign(pair=i, dim=dims(keep)))
        for t, a in power_any:
            hit = flags(rows, t, a)[target]
            per_cell = hit.groupby(rows.loc[target, "_cell"]).any()
            warm_cell = rows.loc[target, "warmup"].groupby(rows.loc[target, "_cell"]).first()
            sweep_hits.extend({"tolerance": t, "alpha": a, "hit": h, "warmup": w}
                              for h, w in zip(per_cell, warm_cell.loc[per_cell.index],
                                              strict=True))
        print(f"pair {i}: null {'FLAGGED' if default.any() else 'clean'}, inflated "
              f"{int(flags(rows, args.tolerance, args.alpha)[target].sum())}/{int(target.sum())}"
              f" rows flagged ({time.perf_counter() - start:.0f} s)", flush=True)

    report: dict = {"parts": [p.spec for p in parts], "estimators": args.estimator or "all",
                    "pairs": pairs, "rows_per_check": rows_per_run, "tests_per_check": tests,
                    "tolerance": args.tolerance, "alpha": args.alpha,
                    "inflation": args.inflation}
    print(f"\n== {' + '.join(p.spec for p in parts)}: {pairs} independent seed pairs, "
          f"{rows_per_run} rows and {tests} tests per check")

    # ---- false alarms
    key = (args.tolerance, args.alpha)
    print(f"\nfalse alarms (runs with any flag), tolerance {args.tolerance:g}, alpha "
          f"{args.alpha:g}: {rate(null_any[key], pairs)}")
    report["false_alarm_runs"] = null_any[key]
    if null_flagged_rows:
        flagged = pd.concat(null_flagged_rows)
        print(flagged[["pair", "estimator", "settings", "param", "coord", "verdict", "ratio",
                       "z_variance", "z_bias"]].to_string(index=False))
    for title, counts in (("", null_any), (", estimators without a warm-up", null_cold),
                          (", estimators with a warm-up", null_warm)):
        print(f"\nfalse-alarm rate{title}, by tolerance (rows) and alpha (columns):")
        print(pd.DataFrame({f"alpha={a:g}": [counts[(t, a)] / pairs for t in tolerances]
                            for a in alphas}, index=[f"{t:g}" for t in tolerances]).to_string())
    report["false_alarm_sweep"] = {f"{t:g},{a:g}": null_any[(t, a)] for t, a in null_any}

    # ---- calibration of the per-row statistics in the tail
    z = pd.concat(z_null, ignore_index=True)
    thresholds = (2.0, 3.0, 3.5, 4.0, 4.5, 5.0)
    nominal = decisions.normal_sf(np.array(thresholds))
    for column, sides, title in (("z_variance", 1, "variance z (one-sided): P(z > t)"),
                                 ("z_bias", 2, "bias |z| (two-sided): P(|z| > t)")):
        print(f"\nnull calibration, {title}, observed / nominal, all rows of all pairs:")
        table = {}
        groups = [(name, part) for name, part in z.groupby("estimator")]
        groups.append(("pooled, no warm-up", z[~z["warmup"]]))
        for name, part in groups:
            values = part[column].dropna().to_numpy()
            if len(values):
                table[name] = [np.mean(values > t) / (sides * p)
                               for t, p in zip(thresholds, nominal, strict=True)]
                table[name].append(len(values))
        print(pd.DataFrame(table, index=[f"t={t:g}" for t in thresholds] + ["rows"]).T
              .to_string(float_format=lambda v: f"{v:.3g}"))
        values = z.loc[~z["warmup"], column].dropna().to_numpy()
        counts = ", ".join(f"t={t:g}: {int(np.sum(values > t))} vs {sides * p * len(values):.1f}"
                           for t, p in zip(thresholds, nominal, strict=True))
        print(f"pooled rows without a warm-up, observed vs expected counts: {counts}")
    report["max_null_z_variance"] = float(z["z_variance"].max())
    report["max_null_z_bias"] = float(z["z_bias"].max())
    print(f"largest null z: variance {report['max_null_z_variance']:.2f}, bias "
          f"{report['max_null_z_bias']:.2f}")

    # ---- power
    power = pd.concat(power_rows, ignore_index=True)
    power["hit"] = (power["q_variance"] <= args.alpha) & (power["ratio"] > args.tolerance)
    cell = power.groupby(["pair", "_cell"]).agg(hit=("hit", "any"), estimator=("estimator",
                                                "first"), dim=("dim", "first"))
    cell_param = power.groupby(["pair", "_cell", "param"])["hit"].any()
    report["power_runs"] = power_any[key]
    report["power_cells"] = float(cell["hit"].mean())
    report["power_cell_params"] = float(cell_param.mean())
    report["power_rows"] = float(power["hit"].mean())
    print(f"\npower against {args.inflation:g}x variance inflation of every cell, tolerance "
          f"{args.tolerance:g}, alpha {args.alpha:g}:")
    print(f"  runs failing: {rate(power_any[key], pairs)}")
    print(f"  cells flagged (any coordinate): {int(cell['hit'].sum())}/{len(cell)} = "
          f"{cell['hit'].mean():.1%}")
    print(f"  (cell, param) pairs flagged: {cell_param.mean():.1%}")
    print(f"  rows (param, coord) flagged: {power['hit'].mean():.1%}")
    print("\ncells flagged, by estimator (rows) and dim (columns):")
    print(cell.pivot_table(index="estimator", columns="dim", values="hit", aggfunc="mean")
          .to_string(float_format=lambda v: f"{v:.0%}"))
    print("\nmedian log-ratio SE per row, by estimator and dim (a 1.25x change is log 0.223):")
    print(power.pivot_table(index="estimator", columns="dim", values="log_ratio_se",
                            aggfunc="median").to_string(float_format=lambda v: f"{v:.3f}"))
    hits = pd.DataFrame(sweep_hits)
    for title, part in (("", hits), (", estimators without a warm-up", hits[~hits["warmup"]]),
                        (", estimators with a warm-up", hits[hits["warmup"]])):
        if len(part) == 0:
            continue
        print(f"\ncells flagged{title}, by tolerance (rows) and alpha (columns):")
        sweep = part.groupby(["tolerance", "alpha"])["hit"].mean().unstack()
        print(sweep.rename(columns=lambda a: f"alpha={a:g}").to_string(
            float_format=lambda v: f"{v:.1%}"))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", action="append", metavar="SPEC",
                        help="one run per seed: 'SUITE [--set K=V,...] [--samples N] "
                        "[--keep K=V,...]' (repeatable; default 'gaussian-quadratic')")
    parser.add_argument("--estimator", "-e", action="append",
                        help="estimator to include (repeatable); default: all that apply")
    parser.add_argument("--runs", type=int, default=20,
                        help="seeds to make or reuse; pairs = runs // 2 (default 20)")
    parser.add_argument("--cache", type=Path, default=ROOT / "results" / "calibration",
                        help="folder of cached runs (default results/calibration)")
    parser.add_argument("--inflation", type=float, default=1.25)
    parser.add_argument("--tolerance", type=float, default=check.DEFAULT_TOLERANCE)
    parser.add_argument("--alpha", type=float, default=check.DEFAULT_ALPHA)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        parts = [Part.parse(spec) for spec in args.part or ["gaussian-quadratic"]]
        seeds = generate(args, parts)
        report = analyse(args, parts, seeds)
    except BenchError as error:
        sys.exit(f"error: {error}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
