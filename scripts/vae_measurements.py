"""The numbers quoted for the VAE suites (issue 11's closing note), reproducibly.

    .venv/bin/python scripts/vae_measurements.py gaussian   # MC-KL / analytic-KL / STL variances
    .venv/bin/python scripts/vae_measurements.py bernoulli  # discrete estimators' log-variance
    .venv/bin/python scripts/vae_measurements.py train      # short trainings via the Trainer

Variances are of ONE gradient estimate, summed over every encoder coordinate (the trace of the
covariance), from n estimates at a fixed seed; the SE treats the squared deviations
||g_i - mean||^2 as i.i.d. (their mean is the trace). `train` runs a plain Adam loop on the
suite's Trainer (one estimate per step, Adam, the same minibatch rows for every estimator at a
given seed): a stand-in for `bench train` with the same protocol, for the final-ELBO comparison.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from gradbench.core.seeding import derive_seed, seeded
from gradbench.estimators import all_estimators, get_estimator
from gradbench.suites import get_suite

CPU = torch.device("cpu")


def variant(spec: str) -> tuple[str, dict[str, object]]:
    """'name' or 'name:key=value,...' -> (name, hyperparameters over the defaults)."""
    name, _, rest = spec.partition(":")
    estimator = get_estimator(name)
    hyper = {h.name: h.default for h in estimator.hyperparams.values()}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        hyper[key] = estimator.hyperparams[key].parse(value)
    return name, hyper


def draws(spec: str, problem, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    name, hyper = variant(spec)
    estimator = get_estimator(name)
    with seeded(seed, CPU):
        state = {"state": estimator.warmup(problem, **hyper)} if estimator.warmup else {}
        return estimator.fn(problem, n, **hyper, **state)


def trace_and_bias(out: dict[str, torch.Tensor], truth: dict[str, torch.Tensor]
                   ) -> tuple[float, float, float]:
    """(trace of the covariance, its SE, relative squared bias ||E g - truth||^2 / ||truth||^2).

    The squared bias is estimated without the noise of the mean: E||mean - truth||^2 =
    ||bias||^2 + trace / n, so trace / n is subtracted (the estimate may then be < 0 for an
    unbiased estimator; it is reported as it is)."""
    flat = torch.cat([v.reshape(v.shape[0], -1) for v in out.values()], dim=1)
    n = flat.shape[0]
    dev = (flat - flat.mean(0)).square().sum(1) * n / (n - 1)
    target = torch.cat([truth[k].reshape(-1) for k in out])
    squared_bias = float((flat.mean(0) - target).square().sum()) - float(dev.mean()) / n
    rel_bias = squared_bias / float(target.square().sum())
    return float(dev.mean()), float(dev.std() / math.sqrt(n)), rel_bias


def gaussian(samples: int) -> None:
    print("| latents | encoder | MC-KL (pathwise) | analytic KL | STL |")
    print("|---|---|---|---|---|")
    for latents in (2, 8):
        for encoder in (0.0, 0.5, 1.0):
            problem = get_suite("vae-gaussian").problem(
                {"latents": latents, "batch": 16, "encoder": encoder})
            cells = []
            for name in ("pathwise", "pathwise-analytic-kl", "pathwise-stl"):
                value, se, _ = trace_and_bias(draws(name, problem, samples),
                                              problem.exact_gradient)
                cells.append(f"{value:.4g} ± {se:.2g}")
            print(f"| {latents} | {encoder} | " + " | ".join(cells) + " |")


def bernoulli(samples: int, latents: tuple[int, ...], extra: list[str]) -> None:
    names = [n for n, e in all_estimators().items()
             if e.applicability(get_suite("vae-bernoulli").problem(
                 {"latents": 4, "batch": 2, "point": "init", "nonlinear": False})) is None]
    names += extra
    print("| latents | point | estimator | evals | log10 trace var ± SE | log10 (var x evals) "
          "| rel. squared bias | CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for k in latents:
        for point in ("init", "1000"):
            problem = get_suite("vae-bernoulli").problem(
                {"latents": k, "batch": 8, "point": point, "nonlinear": False})
            for spec in names:
                name, hyper = variant(spec)
                if get_estimator(name).applicability(problem) is not None:
                    continue
                start = time.process_time()
                value, se, bias = trace_and_bias(draws(spec, problem, samples),
                                                 problem.exact_gradient)
                seconds = time.process_time() - start
                evals = get_estimator(name).evals_per_estimate(problem, hyper)
                if name != "exact":
                    log_var = f"{math.log10(value):.3f} ± {se / value / math.log(10):.3f}"
                    cost = f"{math.log10(value * evals):.3f}"
                else:
                    log_var, cost = "-inf (exact: zero variance)", "-inf"
                print(f"| {k} | {point} | {spec} | {evals:g} | {log_var} | {cost} | "
                      f"{bias:.1e} | {seconds:.1f} |")


def train(steps: int, seeds: int, estimators: list[str], lr: float) -> None:
    trainer = get_suite("vae-bernoulli").trainer(
        {"latents": 8, "batch": 8, "point": "init", "nonlinear": False})
    print(f"| estimator | final train -ELBO (exact) mean ± SE over {seeds} seeds | held-out "
          "IWAE bound (64) | CPU s per step |")
    print("|---|---|---|---|")
    for spec in estimators:
        name, hyper = variant(spec)
        estimator = get_estimator(name)
        finals, bounds, per_step = [], [], []
        for seed in range(seeds):
            params = {k: v.clone().requires_grad_(True) for k, v in trainer.initial().items()}
            optimizer = torch.optim.Adam(params.values(), lr=lr)
            rows_gen = torch.Generator().manual_seed(derive_seed("rows", seed))
            start = time.process_time()
            with seeded(derive_seed("draws", spec, seed), CPU):
                for _ in range(steps):
                    rows = torch.randint(0, trainer.train_rows, (trainer.batch,),
                                         generator=rows_gen)
                    grads = estimator.fn(trainer.problem(params, rows), 1, **hyper)
                    for key, value in params.items():
                        value.grad = grads[key][0]
                    optimizer.step()
            per_step.append((time.process_time() - start) / steps)
            metrics = trainer.evaluate(params, torch.Generator().manual_seed(seed))
            finals.append(metrics["train_negative_elbo"].value)
            bounds.append(metrics["heldout_iw_bound"].value)
        mean = sum(finals) / seeds
        se = math.sqrt(sum((f - mean) ** 2 for f in finals) / (seeds - 1) / seeds)
        bound = sum(bounds) / seeds
        print(f"| {spec} | {mean:.3f} ± {se:.3f} | {bound:.3f} | "
              f"{sum(per_step) / seeds * 1e3:.2f} ms |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("gaussian", "bernoulli", "train"))
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--latents", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--estimators", nargs="+", help="name or name:key=value,... (train)",
                        default=["disarm", "score-function-loo:draws=2", "score-function-loo",
                                 "rebar"])
    parser.add_argument("--extra", nargs="*", default=["score-function-loo:draws=2"],
                        help="more variants for `bernoulli`, as name:key=value,...")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.part == "gaussian":
        gaussian(args.samples)
    elif args.part == "bernoulli":
        bernoulli(args.samples, tuple(args.latents), args.extra)
    else:
        train(args.steps, args.seeds, args.estimators, args.lr)


if __name__ == "__main__":
    main()
