"""Tensor rows (issue 10, point 5): every aggregate and its jackknife SE against a direct
computation on the stored samples (numpy, deleting each group's rows by hand), the SEs against
the spread of replicated cells, and the rows a cell writes with and without --coords."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from gradbench.app import measure, planning
from gradbench.core.aggregates import aggregate
from gradbench.core.streaming import StreamingMoments

COORDS = 6


def correlated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Estimates with a common factor (correlated coordinates), a skewed coordinate, a mean
    that differs from the truth in one coordinate, and that truth."""
    rng = np.random.default_rng(seed)
    factor = rng.standard_normal((n, 1))
    x = 0.8 * factor + rng.standard_normal((n, COORDS)) * np.linspace(0.5, 2.0, COORDS)
    x[:, 2] += rng.exponential(1.0, n) - 1.0
    mean = np.array([1.0, -2.0, 0.5, 3.0, 0.0, 1.5])
    truth = mean + np.array([0.0, 0.0, 0.0, 0.2, 0.0, 0.0])
    return x + mean, truth


def tensor_row(x: np.ndarray, truth: np.ndarray) -> dict:
    stats = StreamingMoments(x.shape[1], samples=x.shape[0], tail_size=101,
                             blocks=[(0, x.shape[1])])
    tensor = torch.from_numpy(x)
    for start in range(0, x.shape[0], 333):
        stats.add(tensor[start:start + 333])
    return aggregate(stats.moments(), stats.groups(), stats.tails().block_norms(0),
                     torch.from_numpy(truth), None, None)


def statistics(x: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """The aggregates, computed directly (module docstring of gradbench.core.aggregates)."""
    n = x.shape[0]
    mean, var = x.mean(0), x.var(0, ddof=1)
    total = var.sum()
    mse = total + ((mean - truth) ** 2).sum() - total / n
    return {"variance": total, "mean_coord_variance": total / x.shape[1],
            "max_coord_variance": var.max(),
            "grad_snr": ((mean**2).sum() - total / n) / total,
            "cosine": mean @ truth / (np.linalg.norm(mean) * np.linalg.norm(truth)),
            "mse": mse, "relative_mse": mse / (truth @ truth)}


def jackknife_se(x: np.ndarray, truth: np.ndarray, groups: int = 64) -> dict[str, float]:
    label = np.arange(x.shape[0]) * groups // x.shape[0]
    full = statistics(x, truth)
    reps = [statistics(x[label != g], truth) for g in range(groups)]
    out = {}
    for key in full:
        values = np.array([r[key] for r in reps])
        if key == "variance":  # on the log scale, mapped back by the delta method
            values = np.log(values)
        out[key] = math.sqrt((groups - 1) / groups * ((values - values.mean()) ** 2).sum())
    out["variance"] *= full["variance"]
    return out


def test_aggregates_and_their_jackknife_ses_match_a_direct_computation():
    x, truth = correlated(3000, seed=1)
    row = tensor_row(x, truth)
    direct, se = statistics(x, truth), jackknife_se(x, truth)
    for key, value in direct.items():
        # Streamed sums about a shift against numpy's two-pass: ~1e-12 relative.
        assert row[key] == pytest.approx(value, rel=1e-9), key
        if key != "mean_coord_variance":
            assert row[f"{key}_se"] == pytest.approx(se[key], rel=1e-7), key
    assert row["mean_coord_variance_se"] == pytest.approx(se["variance"] / COORDS, rel=1e-7)
    assert row["std"] == pytest.approx(math.sqrt(direct["variance"]))
    assert row["coords"] == COORDS and row["n"] == 3000 and row["variance_df"] == 63
    # The worst coordinate is the biased one (bias 0.2 / SE ~0.05 = z ~ 4), and the row carries
    # its mean, truth and bias.
    assert row["worst_coord"] == 3
    assert row["bias"] == pytest.approx(x[:, 3].mean() - truth[3])
    assert row["truth"] == truth[3] and row["reliable"]


@pytest.mark.slow
def test_tensor_ses_match_the_spread_of_replicated_cells():
    # 300 replicates of 1000 estimates: the SD of each aggregate over replicates has a relative
    # SE of 1/sqrt(2 x 299) = 4%; the median jackknife SE (63 dof each, relative SE 9%, median
    # over 300) must be within 20% of it (the jackknife variance is biased up, mildly).
    rows = [tensor_row(*correlated(1000, seed=100 + r)) for r in range(300)]
    frame = pd.DataFrame(rows)
    for key in ("variance", "max_coord_variance", "grad_snr", "cosine", "relative_mse"):
        ratio = frame[f"{key}_se"].median() / frame[key].std(ddof=1)
        assert 0.85 < ratio < 1.2, (key, ratio)
    # And the 95% interval of the total variance covers its exact value.
    exact = 6 * 0.64 + (np.linspace(0.5, 2.0, COORDS) ** 2).sum() + 1.0
    covered = ((frame["variance_lo"] <= exact) & (exact <= frame["variance_hi"])).mean()
    assert 0.92 <= covered <= 0.98


# ---------------------------------------------------------------- the rows of a cell


def cell(coords: int) -> planning.Cell:
    request = planning.RunRequest(suite="gaussian-quadratic", estimators=("score-function",),
                                  samples=500, coords=coords,
                                  overrides=planning.parse_assignments(
                                      ["mu=1", "sigma=1", "k=0", "dim=5"]))
    return planning.plan(request).cells[0]


def test_a_cell_writes_coordinate_rows_up_to_coords_and_always_tensor_rows():
    full = pd.DataFrame(measure.run_cell(cell(1000)))
    assert full.groupby(["param", "level"]).size().to_dict() == {
        ("mu", "coord"): 5, ("mu", "tensor"): 1, ("sigma", "coord"): 5, ("sigma", "tensor"): 1}
    capped = pd.DataFrame(measure.run_cell(cell(2)))
    assert capped.groupby("level").size().to_dict() == {"coord": 4, "tensor": 2}
    none = pd.DataFrame(measure.run_cell(cell(0)))
    assert set(none["level"]) == {"tensor"} and (none["coord"] == -1).all()
    # Which rows are written does not change what is measured (seeds follow the cell's key).
    key = ["param", "level", "coord"]
    merged = capped.merge(full, on=key, suffixes=("", "_full"))
    for column in ("mean", "variance", "variance_lo", "grad_snr", "cosine", "tail_index"):
        np.testing.assert_array_equal(merged[column], merged[f"{column}_full"], column)
    assert (full["param_size"] == 5).all()
    tensor = full[full["level"] == "tensor"].set_index("param")
    coords = full[full["level"] == "coord"].groupby("param")["variance"].sum()
    np.testing.assert_allclose(tensor["variance"], coords.loc[tensor.index], rtol=1e-12)


def test_coords_must_not_be_negative():
    with pytest.raises(Exception, match="--coords -1"):
        cell(-1)


def test_tensor_verdict_with_rare_states_known_but_none_rare():
    # Two equally likely values per coordinate (p_eff infinite) and a heavy-tailed tensor norm:
    # the tensor row is judged on its tail alone (this crashed on bernoulli-toy at theta = 0).
    from gradbench.core.reliability import RareStates

    rng = np.random.default_rng(4)
    x = rng.standard_t(2.5, size=(4000, 3)) ** 3
    stats = StreamingMoments(3, samples=4000, tail_size=190, blocks=[(0, 3)])
    stats.add(torch.from_numpy(x))
    rare = RareStates(probability=np.full(3, np.inf), kurtosis=np.ones(3))
    row = aggregate(stats.moments(), stats.groups(), stats.tails().block_norms(0), None, None,
                    rare)
    assert row["reliable"] is False and row["reliability_reason"].startswith("heavy tail")


def test_the_table_shows_tensor_rows_of_parameters_without_coordinate_rows():
    from rich.console import Console

    from gradbench.app.table import compact, full_table, summary_table

    frame = pd.DataFrame(measure.run_cell(cell(0))).assign(run_id="r", cell_id="c")
    trace = frame.loc[frame["param"] == "sigma", "variance"].iloc[0]
    for table, shown in ((summary_table, compact(trace)), (full_table, f"{trace:.3g}")):
        console = Console(width=200, record=True)
        console.print(table(frame))
        text = console.export_text()
        assert "sigma" in text and shown in text, (table.__name__, text)
