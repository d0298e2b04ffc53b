"""Every suite's first grid point runs through the runner (gradbench.app.measure: estimates,
streaming statistics, reliability verdicts, tensor rows) with every applicable estimator, at 64
estimates (about 15 s in all). The statistics layers were written against some suites; this
catches a suite they do not fit (a VAE's encoder weights are not laid out along q's batch, which
the rare-state rule assumed, and every vae-bernoulli cell failed)."""

import math

import pytest
import torch

from gradbench.app import measure, planning
from gradbench.core.estimator import all_estimators
from gradbench.core.suite import all_suites


def first_cell(suite_name: str) -> tuple[tuple[str, object], ...]:
    suite = all_suites()[suite_name]
    return tuple((name, spec.default[0]) for name, spec in suite.settings.items())


def applicable(suite_name: str) -> list[str]:
    problem = all_suites()[suite_name].problem(dict(first_cell(suite_name)),
                                               device=torch.device("cpu"), dtype=torch.float64)
    return [name for name, spec in sorted(all_estimators().items())
            if spec.applicability(problem) is None]


def run(suite_name: str, estimator: str) -> dict:
    spec = all_estimators()[estimator]
    hyper = tuple((h.name, h.default) for h in spec.hyperparams.values())
    return measure.run_cell(planning.Cell(suite_name, first_cell(suite_name), estimator, hyper,
                                          "cpu", "float64", 64, 0))


def check(rows: dict) -> None:
    levels = set(rows["level"])
    assert levels == {"coord", "tensor"} or levels == {"tensor"}
    assert all(n == 64 for n in rows["n"]) or any(rows["nonfinite"])
    assert all(math.isfinite(v) for v in rows["variance"])
    assert len(rows["reliable"]) == len(rows["mean"])


@pytest.mark.parametrize("suite_name", sorted(all_suites()))
def test_each_suite_runs_with_every_applicable_estimator(suite_name):
    names = applicable(suite_name)
    assert names, f"no estimator applies to {suite_name}'s first grid point"
    for estimator in names:
        check(run(suite_name, estimator))
