"""Shared by the tests: run `bench` in process, check the bad-input contract, count cost calls."""

from collections.abc import Callable

import torch
from torch import Tensor
from typer.testing import CliRunner

from gradbench.app.cli import app

_runner = CliRunner()


def invoke(*args):
    """Run `bench ARGS...` in process (CliRunner); arguments may be paths or numbers."""
    return _runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> None:
    """Bad input: exit code 2, no traceback, one line on stderr containing every fragment."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


class CountingCost:
    """Wraps a batched cost, recording how many rows each call received (vectorisation and
    evaluation-count checks)."""

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        self.fn = fn
        self.rows: list[int] = []

    def __call__(self, z: Tensor, params: object = None) -> Tensor:
        self.rows.append(z.shape[0])
        return self.fn(z, params)


def assert_estimate_contract(out: dict[str, Tensor], problem, n: int, dtype: torch.dtype) -> None:
    """An estimator's output: one [n, *shape] tensor per parameter, in the problem's dtype,
    detached and finite."""
    assert set(out) == set(problem.params)
    for param, value in problem.params.items():
        assert out[param].shape == (n, *value.shape)
        assert out[param].dtype == dtype
        assert not out[param].requires_grad
        assert torch.isfinite(out[param]).all()
