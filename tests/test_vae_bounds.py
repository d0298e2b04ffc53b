"""The held-out importance-weighted bound's standard error is the Monte Carlo noise of the
estimate: replicate it many times on synthetic log-weights and compare the spread."""

from __future__ import annotations

import math

import pytest
import torch

from gradbench.suites import _bounds


def test_the_standard_error_matches_the_spread_of_replicates() -> None:
    gen = torch.Generator().manual_seed(0)
    rows, replicates = 40, 400
    centre = torch.randn(rows, generator=gen, dtype=torch.float64)
    spread = 0.5 + torch.rand(rows, generator=gen, dtype=torch.float64)  # differs per row
    values, ses = [], []
    for _ in range(replicates):
        noise = torch.randn(_bounds.GROUPS, _bounds.DRAWS, rows, generator=gen,
                            dtype=torch.float64)
        result = _bounds.importance_weighted(centre + spread * noise)
        values.append(result.value)
        ses.append(result.se)
    observed = torch.tensor(values).std().item()
    reported = math.sqrt(sum(se**2 for se in ses) / replicates)
    # The SD of 400 replicates is known to ~3.5% (1 / sqrt(2 * 400)); 15% is > 4 of those.
    assert reported == pytest.approx(observed, rel=0.15)


def test_the_bound_is_below_the_log_mean_weight_and_refuses_one_group() -> None:
    log_w = torch.zeros(2, 8, 3, dtype=torch.float64)
    log_w[:, 0] = math.log(8.0)  # one weight of 8, seven of 1: mean weight 15/8
    result = _bounds.importance_weighted(log_w)
    assert result.value == pytest.approx(math.log(15 / 8))
    assert result.se == 0.0
    assert result.higher_is_better
    with pytest.raises(ValueError, match="at least 2 groups"):
        _bounds.importance_weighted(log_w[:1])
