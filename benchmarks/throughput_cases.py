"""The record of one throughput case, shared by conftest.py (the summary) and the tests. A
module of its own, not conftest: tests/conftest.py has the same module name."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Case:
    name: str
    device: str
    dtype: str
    coords: int  # coordinates per estimate
    samples: int
    floor: str = "randn"  # the random numbers the limit draws (test_throughput.rng_floor)
    harness_s: list[float] = field(default_factory=list)
    limit_s: list[float] = field(default_factory=list)
    loop_samples: int = 0
    loop_s: list[float] = field(default_factory=list)
    # Per round: time(samples) - time(samples // 2), i.e. what the last samples // 2 estimates
    # cost: the "marginal estimates/s", without a cell's fixed work (warm-up, truths,
    # per-coordinate summaries), which does not grow with --samples.
    marginal_s: list[float] = field(default_factory=list)

    def harness_rate(self) -> float:
        return self.samples / min(self.harness_s)

    def limit_rate(self) -> float:
        return self.samples / min(self.limit_s)  # estimates/s the RNG floor alone would allow

    def ratios(self) -> list[float]:
        return [lim / har for lim, har in zip(self.limit_s, self.harness_s, strict=True)]

    def marginal_ratios(self) -> list[float]:
        """Per round: the marginal rate over the floor's rate (the floor drew `samples`)."""
        if not self.marginal_s:  # a case without half cells (the JAX peer)
            return []
        extra = self.samples - self.samples // 2
        return [lim * extra / (self.samples * m) if m > 0 else float("nan")
                for lim, m in zip(self.limit_s, self.marginal_s, strict=True)]

    def marginal_rate(self) -> float | None:
        """Median over rounds, not the best round as harness_rate: a difference of two timings
        is noisy, and its minimum would flatter."""
        extra = self.samples - self.samples // 2
        valid = [m for m in self.marginal_s if m > 0]
        return extra / statistics.median(valid) if valid else None

    def loop_rate(self) -> float | None:
        return self.loop_samples / min(self.loop_s) if self.loop_s else None


RESULTS: list[Case] = []
PEER_CASE = "optax peer pathwise gaussian-quadratic dim1"  # test_peer_optax.py's Case


@dataclass
class LayerCase:
    """The scale benchmark: per-estimate time of the harness (estimates + statistics) against
    one ordinary training step of the same layer, round by round."""

    name: str
    samples: int
    harness_s: list[float] = field(default_factory=list)  # per estimate
    step_s: list[float] = field(default_factory=list)  # per training step

    def ratios(self) -> list[float]:
        return [h / s for h, s in zip(self.harness_s, self.step_s, strict=True)]


LAYER_RESULTS: list[LayerCase] = []
