"""Throughput benchmarks (pytest-benchmark). Not part of the unit tests: `pytest` from the repo
root collects only tests/ (testpaths), and the project's addopts pass --benchmark-skip. Run:

    .venv/bin/pytest benchmarks --benchmark-only            # CPU (and CUDA when present)
    .venv/bin/pytest benchmarks --benchmark-only -k "pathwise and dim1"   # a subset

Each case times, interleaved round by round, the harness path
(gradbench.app.measure.run_cell: estimates
+ streaming statistics, one cell) and the limit: torch.randn of as many elements as the
estimates have coordinates (one normal per coordinate per estimate, the least any estimator of
a Gaussian needs), same dtype and device; plus the tutorials' loop, one backward pass per
sample, on fewer samples. The terminal summary prints rates and the ratios, per round, so a
noisy shared machine shows as spread rather than as a wrong number.

Clocks: on the CPU the process's CPU time (time.process_time; torch runs 1 thread), which other
processes' load does not inflate; on CUDA wall time with a synchronize inside each timed call.
pytest-benchmark's own table reports the harness rounds with its wall-clock timer.
"""

from __future__ import annotations

import statistics

import pytest
import torch
from throughput_cases import LAYER_RESULTS, PEER_CASE, RESULTS, Case
from train_cases import TRAIN_RESULTS

from gradbench.app.process import tune_malloc

THREADS = 1  # torch intra-op threads while timing (the CLI's default)


@pytest.fixture(scope="session", autouse=True)
def like_bench():
    """The process as `bench run` sets up its own and its workers' (gradbench.app.process):
    one torch thread, and glibc's malloc kept from unmapping chunk-sized blocks after every
    chunk. Without the latter, measured here, pathwise at dim 1 in float64 paid ~590,000 page
    faults per case and ran at 0.29 of `randn` instead of 0.60 in some processes."""
    before = torch.get_num_threads()
    tune_malloc()  # process-wide and irreversible, as in bench's own processes
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def record():
    def add(case: Case) -> Case:
        RESULTS.append(case)
        return case

    return add


def _fmt(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.3g}"


# Issue 13's targets: (estimator, suite, dims) -> the least harness/floor ratio on the CPU.
TARGETS = {("pathwise", "gaussian-quadratic", (1,)): 0.8,
           ("score-function", "gaussian-quadratic", (1,)): 0.8,
           ("measure-valued", "gaussian-quadratic", (1,)): 0.8,
           ("score-function", "bernoulli-toy", (1, 20)): 0.5,
           ("arm", "bernoulli-toy", (1, 20)): 0.5,
           ("disarm", "bernoulli-toy", (1, 20)): 0.5}
OPTAX_PEER = 1.2e8  # optax monte_carlo pathwise, dim 1, float32, jitted (issue 13's measurement)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    _train_summary(terminalreporter)
    _layer_summary(terminalreporter)
    if not RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("gradbench throughput (estimates/s; ratios per round)")
    write(f"torch {torch.__version__}, {THREADS} thread(s); CPU clock: "
          "process time; CUDA: wall time with synchronize")
    header = (f"{'case':40} {'dev':5} {'dtype':8} {'harness':>9} {'marginal':>9} {'floor':>9} "
              f"{'floor drawn':>20} {'harness/floor [min, max]':>25} "
              f"{'marginal/floor [min, max]':>26} {'loop':>9} {'vs loop':>9}")
    write(header)
    write("-" * len(header))
    for case in RESULTS:
        loop = case.loop_rate()
        vs_loop = f"{case.harness_rate() / loop:.3g}x" if loop else "-"
        write(f"{case.name:40} {case.device:5} {case.dtype:8} {_fmt(case.harness_rate()):>9} "
              f"{_fmt(case.marginal_rate()):>9} {_fmt(case.limit_rate()):>9} {case.floor:>20} "
              f"{_spread(case.ratios()):>25} {_spread(case.marginal_ratios()):>26} "
              f"{_fmt(loop):>9} {vs_loop:>9}")
    write("harness: whole cells (fixed work included); marginal: the last half of a cell's "
          "estimates, time(n) - time(n/2), the issue's measure; ratios are medians per round")
    _goals(write)


def _finite(ratios: list[float]) -> list[float]:
    return [r for r in ratios if r == r]  # a NaN: a round whose half cell took longer


def _spread(ratios: list[float]) -> str:
    ratios = _finite(ratios)
    if not ratios:
        return "-"
    return f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}]"


def _median(ratios: list[float]) -> float:
    ratios = _finite(ratios)
    return statistics.median(ratios) if ratios else float("nan")


def _goals(write) -> None:
    for (estimator, suite, dims), least in TARGETS.items():
        for dim in dims:
            for case in RESULTS:
                if case.name == f"{estimator} {suite} dim{dim}" and case.device == "cpu":
                    marginal, whole = _median(case.marginal_ratios()), _median(case.ratios())
                    verdict = "met" if marginal >= least else "MISSED"
                    write(f"goal: {case.name} {case.dtype} >= {least:.0%} of its RNG floor "
                          f"(marginal): {verdict} ({marginal:.0%} marginal, {whole:.0%} whole "
                          f"cells; medians)")
    peers = [case for case in RESULTS if case.name == PEER_CASE]
    peer, source = ((peers[0].harness_rate(), "measured in this run") if peers else
                    (OPTAX_PEER, "the issue's figure; install the peer extra to measure it"))
    for case in RESULTS:
        if case.name == "pathwise gaussian-quadratic dim1" and case.dtype == "float32" \
                and case.device == "cpu":
            rate, marginal = case.harness_rate(), case.marginal_rate() or float("nan")
            write(f"goal: pathwise dim 1 float32 >= the optax peer ({peer:.3g}/s, {source}): "
                  f"{'met' if marginal >= peer else 'MISSED'} (marginal {marginal:.3g}/s, "
                  f"{marginal / peer:.2f}x the peer; whole cells {rate:.3g}/s, "
                  f"{rate / peer:.2f}x)")


def _train_summary(terminalreporter) -> None:
    """bench train's overhead per step (benchmarks/test_train_overhead.py)."""
    if not TRAIN_RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("bench train: ms per step (CPU time, medians over rounds)")
    write(f"{'estimator':22} {'trajectory':>10} {'limit':>8} {'overhead':>9} {'share':>7}")
    for case in TRAIN_RESULTS:
        harness, limit, overhead = case.per_step_ms()
        write(f"{case.estimator:22} {harness:10.3f} {limit:8.3f} {overhead:9.3f} "
              f"{overhead / harness:7.1%}")


def _layer_summary(terminalreporter) -> None:
    """test_bayes_layer.py: harness time per estimate / one training step, per round."""
    if not LAYER_RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("gradbench scale (per-sample gradients with statistics vs one "
                             "training step)")
    for case in LAYER_RESULTS:
        ratios = case.ratios()
        if not ratios:
            write(f"{case.name}: no complete round")
            continue
        median = statistics.median(ratios)
        write(f"{case.name}: {case.samples} estimates per round; per estimate "
              f"{1e3 * statistics.median(case.harness_s):.2f} ms, training step "
              f"{1e3 * statistics.median(case.step_s):.2f} ms (medians, CPU time)")
        write(f"  ratio per round: {', '.join(f'{r:.2f}' for r in ratios)}; median "
              f"{median:.2f}: goal <= 2x {'met' if median <= 2 else 'MISSED'}")
