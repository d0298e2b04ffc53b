"""Interval calibration as a published, repeatable measurement (issue 12): how often the 95%
intervals of the mean and of the variance of one cell cover the exact values, before (the
plug-in SEs of `Moments.summarize`) and after (gradbench.core.uncertainty: grouped jackknife,
two-point binomial intervals), and how often the reliability diagnostics flag the cell.

    .venv/bin/python scripts/calibrate_intervals.py                  # every case, n = 200, 2000
    .venv/bin/python scripts/calibrate_intervals.py --replicates 500 --case gq-sf-sigma
    .venv/bin/python scripts/calibrate_intervals.py --markdown docs/calibration-intervals.md
    .venv/bin/python scripts/calibrate_intervals.py --replicates 10000 --seed 12 --seed 13 \
        --markdown docs/calibration-intervals.md    # the published table: 20,000 per row

Each case is one coordinate of one cell: a suite setting, an estimator, a parameter. For each n,
R independent replicates of n estimates are drawn with the estimator itself and laid side by side
as R columns of one [n, R] stream, which goes through the runner's own statistics
(StreamingMoments with groups and tails, then uncertainty.summarize): column r is exactly what a
cell of n estimates would report. A replicate covers when truth lies in its interval: the mean
+- t(n-1) mean_se (the mean's SE is unchanged: plug-in), the variance +- 1.96 variance_se
(before) or [variance_lo, variance_hi] (after).

Exact moments: the mean is the suite's exact gradient. The variance and fourth moment come from
the estimate written as a function of the draw: Gauss-Hermite quadrature (60 nodes, exact for
these polynomials of a Gaussian) for the one-dimensional Gaussian cases, enumeration of the
support for the discrete ones (score-function-cv with its fitted coefficient, the same warm-up
the runner uses); a case whose estimate is not such a function (gamma's implicit pathwise) takes
a reference from REFERENCE_DRAWS draws, whose own SE is reported. Every case's formula is checked
against the estimator's draws (the z of their mean and variance against the exact values).

Target (issue 12): each interval covers 93-97%, or the cell is flagged unreliable in at least 95%
of the runs (`reliable` for the variance, `mean_reliable` for the mean). Results are cached per
(case, n, replicates, seed) under --cache: rerunning only computes what is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from check_pairs import clopper_pearson  # noqa: E402

from gradbench.app import planning  # noqa: E402
from gradbench.app.measure import _warmup_state  # noqa: E402
from gradbench.core import uncertainty  # noqa: E402
from gradbench.core.autograd import log_prob_sum, per_sample_grad  # noqa: E402
from gradbench.core.enumeration import joint_support  # noqa: E402
from gradbench.core.estimator import get_estimator  # noqa: E402
from gradbench.core.rare_states import rare_states  # noqa: E402
from gradbench.core.reliability import RareStates  # noqa: E402
from gradbench.core.seeding import seeded  # noqa: E402
from gradbench.core.streaming import StreamingMoments  # noqa: E402
from gradbench.core.student_t import t_isf  # noqa: E402
from gradbench.core.suite import get_suite  # noqa: E402
from gradbench.core.tail_index import tail_size  # noqa: E402

Z = 1.959963984540054
REFERENCE_DRAWS = 20_000_000
QUAD = dict(mu=1.0, sigma=1.0, k=0.0, dim=1)


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    suite: str
    settings: dict
    estimator: str
    param: str
    coord: int
    moments: str  # "hermite", "enumeration" or "reference"
    source: str  # "issue" (the table) or "own"


CASES = (
    Case("gq-pw-mu", "gaussian-quadratic pathwise d/dmu", "gaussian-quadratic", QUAD,
         "pathwise", "mu", 0, "hermite", "issue"),
    Case("gq-pw-sigma", "gaussian-quadratic pathwise d/dsigma", "gaussian-quadratic", QUAD,
         "pathwise", "sigma", 0, "hermite", "issue"),
    Case("gq-sf-mu", "gaussian-quadratic score-function d/dmu", "gaussian-quadratic", QUAD,
         "score-function", "mu", 0, "hermite", "issue"),
    Case("gq-sf-sigma", "gaussian-quadratic score-function d/dsigma", "gaussian-quadratic",
         QUAD, "score-function", "sigma", 0, "hermite", "issue"),
    Case("toy-sf", "bernoulli-toy score-function (theta=0.5, t=0.45)", "bernoulli-toy",
         dict(theta=0.5, t=0.45, dim=1), "score-function", "logits", 0, "enumeration", "issue"),
    Case("cat-sfcv-rare", "categorical scale=3 score-function-cv, rare class logit",
         "categorical", dict(categories=3, dim=2, scale=3.0, t=0.45), "score-function-cv",
         "logits", 0, "enumeration", "issue"),
    Case("cat-sfcv-common", "categorical scale=3 score-function-cv, common class logit",
         "categorical", dict(categories=3, dim=2, scale=3.0, t=0.45), "score-function-cv",
         "logits", 2, "enumeration", "own"),
    Case("gq-sf-sigma-k10", "gaussian-quadratic score-function d/dsigma, k=10",
         "gaussian-quadratic", dict(QUAD, k=10.0), "score-function", "sigma", 0, "hermite",
         "own"),
    Case("toy-sf-rare", "bernoulli-toy score-function (theta=-2.5, t=0.45)", "bernoulli-toy",
         dict(theta=-2.5, t=0.45, dim=1), "score-function", "logits", 0, "enumeration", "own"),
    Case("gamma-pw-conc", "gamma pathwise d/dconcentration (0.5, rate 2, log cost)", "gamma",
         dict(concentration=0.5, rate=2.0, cost="log", a=1.0, dim=1), "pathwise",
         "concentration", 0, "reference", "own"),
)


def make_cell(case: Case, n: int) -> planning.Cell:
    request = planning.RunRequest(suite=case.suite, estimators=(case.estimator,),
                                  overrides={k: [str(v)] for k, v in case.settings.items()},
                                  samples=n)
    return planning.plan(request).cells[0]


def problem_and_state(case: Case, n: int):
    cell = make_cell(case, n)
    problem = get_suite(case.suite).problem(cell.settings_dict())
    estimator = get_estimator(case.estimator)
    state = _warmup_state(cell, estimator, problem, torch.device("cpu"))
    return problem, estimator, state


# ---------------------------------------------------------------- exact moments


def _hermite_values(case: Case, eps: np.ndarray) -> np.ndarray:
    """The estimate as a function of the standard normal draw (one coordinate)."""
    mu, sigma, k = case.settings["mu"], case.settings["sigma"], case.settings["k"]
    z = mu + sigma * eps
    f = (z - k) ** 2
    return {("pathwise", "mu"): 2 * (z - k), ("pathwise", "sigma"): 2 * (z - k) * eps,
            ("score-function", "mu"): f * eps / sigma,
            ("score-function", "sigma"): f * (eps**2 - 1) / sigma}[(case.estimator, case.param)]


def _enumerated(case: Case, problem, state) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, estimate values) over the joint support, for score-function estimates
    (f(z) - c) d/dtheta log q(z); c = 0, or the fitted control-variate coefficient."""
    states = joint_support(problem)
    count = states.shape[0]
    with torch.enable_grad():
        params = problem.expand_params(count, requires_grad=True)
        log_q = log_prob_sum(problem.distribution(**params), states)
        score = per_sample_grad(log_q, params)[case.param].reshape(count, -1)[:, case.coord]
    cost = problem.cost(states).detach()
    c = 0.0 if not state else float(state["state"][case.param].reshape(-1)[case.coord])
    return log_q.detach().exp().numpy(), ((cost - c) * score).numpy()


def exact_moments(case: Case, problem, state) -> dict[str, float]:
    truth = float(problem.exact_gradient[case.param].reshape(-1)[case.coord])
    if case.moments == "hermite":
        nodes, weights = np.polynomial.hermite_e.hermegauss(60)
        weights = weights / math.sqrt(2 * math.pi)
        values = _hermite_values(case, nodes)
    elif case.moments == "enumeration":
        weights, values = _enumerated(case, problem, state)
    else:
        return {"truth": truth, **_reference(case, problem, state)}
    mean = float((weights * values).sum())
    dev = values - mean
    return {"truth": truth, "mean": mean, "variance": float((weights * dev**2).sum()),
            "mu4": float((weights * dev**4).sum()), "reference_se": 0.0}


def _reference(case: Case, problem, state) -> dict[str, float]:
    draws = _draw(case, problem, state, REFERENCE_DRAWS, seed=999)
    mean = float(draws.mean())
    dev = draws - mean
    variance, mu4 = float((dev**2).mean()), float((dev**4).mean())
    return {"mean": mean, "variance": variance, "mu4": mu4,
            "reference_se": math.sqrt(max(mu4 - variance**2, 0.0) / draws.size)}


def _draw(case: Case, problem, state, total: int, seed: int) -> np.ndarray:
    estimator = get_estimator(case.estimator)
    out = []
    with seeded(seed, torch.device("cpu")):
        for start in range(0, total, 1 << 18):
            m = min(1 << 18, total - start)
            got = estimator.fn(problem, m, **state)[case.param].reshape(m, -1)[:, case.coord]
            out.append(got.to(torch.float64))
    return torch.cat(out).numpy()


# ---------------------------------------------------------------- one (case, n)


def replicate_statistics(case: Case, n: int, replicates: int, seed: int) -> dict:
    problem, _, state = problem_and_state(case, n)
    exact = exact_moments(case, problem, state)
    draws = _draw(case, problem, state, n * replicates, seed)
    x = torch.from_numpy(draws.reshape(replicates, n).T.copy())  # [n, R]: a column per run
    stats = StreamingMoments(replicates, samples=n, tail_size=tail_size(n) + 1,
                             blocks=[(0, 1)])
    for start in range(0, n, 4096):
        stats.add(x[start:start + 4096])
    moments = stats.moments()
    rare = rare_states(problem)
    per = None
    if rare is not None:
        one = rare[case.param]
        per = RareStates(probability=np.full(replicates, one.probability[case.coord]),
                         kurtosis=np.full(replicates, one.kurtosis[case.coord]))
    truth = torch.full((replicates,), exact["truth"], dtype=torch.float64)
    after = uncertainty.summarize(moments, stats.groups(), stats.tails().deviations, truth,
                                  None, per)
    before = moments.summarize(truth)
    true_var = exact["variance"]
    true_se = math.sqrt(max(exact["mu4"] - (n - 3) / (n - 1) * true_var**2, 0.0) / n)
    # The mean's interval: t with n - 1 degrees of freedom (the gate's bias test uses it too).
    mean_cover = np.abs(after["mean"] - exact["truth"]) <= t_isf(0.025, n - 1) * after["mean_se"]
    return {
        "exact": exact, "true_variance_se": true_se,
        "formula_check_z": _formula_check(draws, exact),
        "mean_cover": mean_cover.tolist(),
        "var_cover_before": (np.abs(before["variance"] - true_var)
                             <= Z * before["variance_se"]).tolist(),
        "var_cover_after": ((after["variance_lo"] <= true_var)
                            & (true_var <= after["variance_hi"])).tolist(),
        "se_ratio_before": float(np.median(before["variance_se"]) / true_se),
        "se_ratio_after": float(np.median(after["variance_se"]) / true_se),
        "reliable": after["reliable"].tolist(),
        "tail_index": after["tail_index"].tolist(),
        "skewness": after["skewness"].tolist(),
        "mean_reliable": after["mean_reliable"].tolist(),
        "samples_needed": float(np.nanmedian(after["samples_needed"]))
        if np.isfinite(after["samples_needed"]).any() else math.nan,
        "reasons": sorted({r.split(":")[0] for r in after["reliability_reason"] if r}),
    }


def _formula_check(draws: np.ndarray, exact: dict[str, float]) -> list[float]:
    """z of the draws' mean against the exact truth and of their variance against the exact
    variance (plug-in SEs of the pooled draws; large samples)."""
    n = draws.size
    mean, var = draws.mean(), draws.var()
    mean_z = (mean - exact["truth"]) / math.sqrt(var / n)
    var_se = math.sqrt(max(exact["mu4"] - exact["variance"] ** 2, 0.0) / n
                       + exact["reference_se"] ** 2)
    return [float(mean_z), float((var - exact["variance"]) / var_se)]


# ---------------------------------------------------------------- tables


def share(flags: list[bool]) -> str:
    k, n = int(sum(flags)), len(flags)
    lo, hi = clopper_pearson(k, n)
    return f"{k / n:.3f} ({lo:.3f}-{hi:.3f})"


def verdict(cover: list[bool], reliable: list[bool]) -> str:
    """The issue's target: covers 93-97%, or flagged in >= 95% of runs."""
    rate = float(np.mean(cover))
    flagged = 1.0 - float(np.mean(reliable))
    if 0.93 <= rate <= 0.97:
        return "ok (covers)"
    if flagged >= 0.95:
        return "ok (flagged)"
    conditional = [c for c, r in zip(cover, reliable, strict=True) if r]
    note = f"; {np.mean(conditional):.3f} when not flagged" if conditional else ""
    return f"MISSES target (flagged {flagged:.0%}{note})"


def table(results: dict) -> str:
    head = ("| case | n | mean: covers | flagged (mean) | target | variance: covers before | "
            "after | flagged | target | median SE / true SE before → after | reasons |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for key, r in results.items():
        name, n = key.rsplit("@", 1)
        case = next(c for c in CASES if c.name == name)
        mean_flag = [not x for x in r["mean_reliable"]]
        flag = [not x for x in r["reliable"]]
        lines.append(
            f"| {case.title}{' *' if case.source == 'own' else ''} | {n} | {share(r['mean_cover'])}"
            f" | {np.mean(mean_flag):.0%} | {verdict(r['mean_cover'], r['mean_reliable'])} | "
            f"{share(r['var_cover_before'])} | {share(r['var_cover_after'])} | "
            f"{np.mean(flag):.0%} | {verdict(r['var_cover_after'], r['reliable'])} | "
            f"{r['se_ratio_before']:.2f} → {r['se_ratio_after']:.2f} | "
            f"{', '.join(r['reasons']) or '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", choices=[c.name for c in CASES])
    parser.add_argument("--n", action="append", type=int)
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--seed", type=int, action="append",
                        help="repeatable: independent runs whose replicates the table pools "
                             "(default 12)")
    parser.add_argument("--cache", type=Path, default=ROOT / "results" / "calibration" /
                        "intervals")
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.cache.mkdir(parents=True, exist_ok=True)
    results = {}
    for case in [c for c in CASES if not args.case or c.name in args.case]:
        for n in args.n or (200, 2000):
            runs = [_cached_run(case, n, args.replicates, seed, args.cache)
                    for seed in args.seed or [12]]
            results[f"{case.name}@{n}"] = pool(runs)
    text = table(results)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")


def _cached_run(case: Case, n: int, replicates: int, seed: int, cache: Path) -> dict:
    path = cache / f"{case.name}-n{n}-r{replicates}-s{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    start = time.perf_counter()
    got = replicate_statistics(case, n, replicates, seed + n)
    got["seconds"] = time.perf_counter() - start
    path.write_text(json.dumps(got))
    print(f"{case.name} n={n} seed {seed}: {got['seconds']:.0f} s, formula check z = "
          f"{got['formula_check_z'][0]:.2f}, {got['formula_check_z'][1]:.2f}", flush=True)
    return got


POOLED = ("mean_cover", "var_cover_before", "var_cover_after", "reliable", "mean_reliable")


def pool(runs: list[dict]) -> dict:
    """Independent runs of one case as one: their replicates side by side (the coverage and
    flag lists), the SE ratios' medians averaged over runs, the reasons united."""
    if len(runs) == 1:
        return runs[0]
    pooled = dict(runs[0])
    for key in POOLED:
        pooled[key] = [flag for run in runs for flag in run[key]]
    for key in ("se_ratio_before", "se_ratio_after"):
        pooled[key] = float(np.mean([run[key] for run in runs]))
    pooled["reasons"] = sorted({reason for run in runs for reason in run["reasons"]})
    return pooled


if __name__ == "__main__":
    main()
