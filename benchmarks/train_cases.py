"""The record of bench train's per-step overhead, shared by conftest.py (the summary) and
test_train_overhead.py (a module of its own, as throughput_cases)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class TrainCase:
    estimator: str
    steps: int
    harness_s: list[float] = field(default_factory=list)  # one trajectory, CPU seconds
    limit_s: list[float] = field(default_factory=list)  # problem + estimator per step only
    evaluation_s: list[float] = field(default_factory=list)  # one evaluation point

    def per_step_ms(self) -> tuple[float, float, float]:
        """(trajectory, limit, overhead) in ms per step, medians over rounds; the trajectory
        net of its two evaluation points."""
        evaluation = 2 * statistics.median(self.evaluation_s)
        harness = (statistics.median(self.harness_s) - evaluation) / self.steps * 1e3
        limit = statistics.median(self.limit_s) / self.steps * 1e3
        return harness, limit, harness - limit


TRAIN_RESULTS: list[TrainCase] = []
