"""How long a planned run will take, before it starts, and how much is left while it runs.

Memory is checked when planning (planning.plan refuses a cell whose one estimate cannot fit).
Time has no formula: it depends on the machine and on f. So:

- A lower bound that costs nothing: the plan's work (coordinate-evaluations of f, warm-ups
  included; planning.Plan.work) at FAST_UNITS_PER_S, faster than any estimator measured here
  (pathwise at dim 1 does ~4e7 estimates of 2 coordinates per second).
- When that bound says the run is long, a timed probe: for each estimator without a warm-up,
  its costliest cell draws estimates until PROBE_S has passed, giving seconds per unit of work
  for that estimator; cells of estimators that could not be probed (a warm-up would have to
  run first, e.g. a fitted control variate) count at the fastest probed rate, so the total is
  then "at least".
- While running, the ETA scales the time spent so far by the work left (`Eta`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from gradbench.app.measure import chunk_size
from gradbench.app.planning import DTYPES, Cell, Plan
from gradbench.core.estimator import get_estimator
from gradbench.core.seeding import derive_seed, seeded
from gradbench.core.suite import get_suite

FAST_UNITS_PER_S = 1e9
LONG_S = 60.0  # runs whose lower bound exceeds this get a probe and a printed estimate
PROBE_S = 0.05  # time spent probing each estimator


@dataclass(frozen=True)
class TimeEstimate:
    seconds: float
    at_least: bool  # some cells were counted at a rate faster than theirs
    probed: tuple[str, ...]  # estimators whose rate was measured

    def text(self, workers: int = 1) -> str:
        scope = f" on {workers} workers" if workers > 1 else ""
        how = (f"timed probe of {', '.join(self.probed)}" if self.probed
               else "counting evaluations of f at 1e9 coordinates/s")
        bound = "at least" if self.at_least else "about"
        return f"estimated time{scope}: {bound} {duration(self.seconds)} ({how})"


def lower_bound_s(plan: Plan, cells: Iterable[Cell]) -> float:
    return sum(plan.work[c.cell_id] for c in cells) / FAST_UNITS_PER_S


def estimate(plan: Plan, cells: list[Cell], workers: int = 1) -> TimeEstimate | None:
    """The run's time on `workers` parallel workers, or None when it is short for sure."""
    parallel = max(1, min(workers, len(cells)))
    if lower_bound_s(plan, cells) / parallel < LONG_S:
        return None
    rates: dict[str, float] = {}
    for name in sorted({c.estimator for c in cells}):
        mine = [c for c in cells if c.estimator == name]
        costliest = max(mine, key=lambda c: plan.work[c.cell_id])
        try:
            rate = _probe(costliest)
        except Exception:  # the run itself will report what is wrong with this cell
            rate = None
        if rate is not None:
            rates[name] = rate
    fastest = min(rates.values(), default=1.0 / FAST_UNITS_PER_S)
    total = sum(plan.work[c.cell_id] * rates.get(c.estimator, fastest) for c in cells)
    at_least = any(c.estimator not in rates for c in cells)
    return TimeEstimate(total / parallel, at_least, tuple(sorted(rates)))


def _probe(cell: Cell) -> float | None:
    """Seconds per coordinate-evaluation of `cell`'s estimator, or None if it needs a warm-up."""
    estimator = get_estimator(cell.estimator)
    if estimator.warmup is not None:
        return None
    device = torch.device(cell.device)
    problem = get_suite(cell.suite).problem(cell.settings_dict(), device=device,
                                            dtype=DTYPES[cell.dtype])
    hyper = cell.hyperparams_dict()
    units = estimator.evals_per_estimate(problem, hyper) * problem.numel
    largest = chunk_size(problem, cell.samples, estimator.memory_per_estimate(problem, hyper),
                         device)
    m, spent, drawn = 1, 0.0, 0
    with seeded(derive_seed(cell.cell_seed, "probe"), device):
        while spent < PROBE_S and drawn < cell.samples:
            m = min(m, largest)
            start = time.perf_counter()
            estimator.fn(problem, m, **hyper)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            spent += time.perf_counter() - start
            drawn += m
            m *= 2
    return spent / (drawn * max(units, 1.0))


class Eta:
    """Time left while a run goes: the time so far scaled by the work left, once a cell has
    finished; before that, the up-front estimate (if any) minus the time so far."""

    def __init__(self, plan: Plan, cells: list[Cell], up_front: TimeEstimate | None) -> None:
        self.work = {c.cell_id: plan.work[c.cell_id] for c in cells}
        self.total = sum(self.work.values())
        self.done = 0.0
        self.started = time.monotonic()
        self.up_front = up_front.seconds if up_front is not None else None

    def finished(self, cell: Cell) -> None:
        self.done += self.work.get(cell.cell_id, 0.0)

    def remaining_s(self) -> float | None:
        elapsed = time.monotonic() - self.started
        if self.done > 0:
            return elapsed * max(self.total - self.done, 0.0) / self.done
        if self.up_front is not None:
            return max(self.up_front - elapsed, 0.0)
        return None


def duration(seconds: float) -> str:
    """A duration in the largest sensible unit: 45 s, 12 min, 3.2 h, 4.1 days, 2.3 years."""
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.0f} s"
