"""`bench report`: statistics behind the report (coordinate aggregation, bias test, cost
normalisation, leaderboard) on synthetic frames with known answers, and the report folder end to
end from small real runs plus a fabricated CUDA copy."""

import math
import re

import numpy as np
import pandas as pd
import pytest
from helpers import assert_one_line_error, invoke
from PIL import Image

from gradbench.app.report import builder, summaries
from gradbench.app.report.figures import estimator_styles, held_settings, sweep_figure
from gradbench.core.schema import SCHEMA_VERSION
from gradbench.results import decisions, store
from gradbench.results.store import REQUIRED_COLUMNS

BASE = {
    "run_id": "run-1", "suite": "synthetic", "estimator": "A", "device": "cpu", "param": "theta",
    "coord": 0, "n": 1000, "mean": 1.0, "truth": 1.0, "truth_method": "analytic", "bias": 0.0,
    "bias_se": 0.01, "variance": 1.0, "variance_se": 0.05, "evals_per_estimate": 1.0,
    "seconds_per_estimate": 1e-6, "seconds_per_estimate_se": 0.0, "seed": 0, "unbiased": True,
    "estimator_family": "test", "dtype": "float64", "device_name": "test cpu",
    "started_at": "2026-01-01T00:00:00+00:00", "s": 1, "schema_version": SCHEMA_VERSION,
    "settings": '{"s":1}', "hyperparams": "{}", "level": "coord",
}


SETTINGS, HYPERPARAMS = ("s", "t", "cost"), ("K",)


def tidy(rows):
    """A results frame: BASE overridden by each row's entries; the key's `settings` and
    `hyperparams` JSON name the setting and hyperparameter columns a row has (as bench run
    writes them)."""
    out = []
    for row in rows:
        full = {**BASE, **row}
        keys = {name: full[name] for name in SETTINGS if full.get(name) is not None}
        hyper = {name: full[name] for name in HYPERPARAMS if full.get(name) is not None}
        out.append({**full, "settings": store.canonical_json(keys),
                    "hyperparams": store.canonical_json(hyper)})
    return pd.DataFrame(out)


# ---------------------------------------------------------------- statistics


def test_cost_normalised_se_is_the_delta_method():
    # se(v c)^2 = (c se_v)^2 + (v se_c)^2 for independent v and c; counts are exact (se_c = 0).
    value, se = summaries.cost_normalised(4.0, 0.2, 3.0, 0.1)
    assert value == 12.0
    assert se == pytest.approx(math.sqrt((3 * 0.2) ** 2 + (4 * 0.1) ** 2))
    value, se = summaries.cost_normalised(4.0, 0.2, 7.0)
    assert (value, se) == (28.0, pytest.approx(1.4))
    # Against simulation: Var(v c) = mv^2 sc^2 + mc^2 sv^2 + sv^2 sc^2 for independent normals;
    # the delta method drops the last term (4e-4 of 0.52, well inside the 5-SE tolerance).
    draws = np.random.default_rng(0).normal([4.0, 3.0], [0.2, 0.1], size=(200_000, 2))
    product = draws[:, 0] * draws[:, 1]
    measured = product.var(ddof=1)
    tolerance = 5 * measured * math.sqrt(2 / len(product))  # SE of a near-normal variance
    assert abs(measured - se_squared(4.0, 0.2, 3.0, 0.1)) < tolerance


def se_squared(v, se_v, c, se_c):
    return summaries.cost_normalised(v, se_v, c, se_c)[1] ** 2


def test_summary_propagates_cost_se_per_cell():
    frame = tidy([
        {"estimator": "A", "variance": 2.0, "variance_se": 0.1, "evals_per_estimate": 4.0,
         "seconds_per_estimate": 3e-6, "seconds_per_estimate_se": 1e-7},
    ])
    row = summaries.summarize(frame).iloc[0]
    assert row["var_x_evals"] == 8.0 and row["var_x_evals_se"] == pytest.approx(0.4)
    assert row["var_x_seconds"] == pytest.approx(6e-6)
    assert row["var_x_seconds_se"] == pytest.approx(math.hypot(3e-6 * 0.1, 2.0 * 1e-7))


def test_coordinates_are_averaged_with_a_dependence_free_se():
    frame = tidy([{"coord": i, "variance": v, "variance_se": se, "bias": b, "bias_se": 0.1,
                   "truth": t, "mean": t + b}
                  for i, (v, se, b, t) in enumerate([(1, .1, .05, 1), (2, .2, -.05, -2),
                                                     (3, .3, .15, 3)])])
    row = summaries.summarize(frame).iloc[0]
    assert row["coords"] == 3
    assert row["variance"] == pytest.approx(2.0)  # trace / d
    assert row["variance_se"] == pytest.approx(0.2)  # mean SE >= SE of the mean (Minkowski)
    assert row["bias"] == pytest.approx(0.05) and row["bias_se"] == pytest.approx(0.1)
    # Along the truth g = (1, -2, 3): b.g / |g|^2 = (0.05 + 0.1 + 0.45) / 14, and its SE bound
    # sum |g_i| se_i / |g|^2 = 0.1 * 6 / 14.
    assert row["rel_bias"] == pytest.approx(0.6 / 14)
    assert row["rel_bias_se"] == pytest.approx(0.6 / 14)


def test_relative_bias_does_not_cancel_across_coordinates():
    # Softmax-logit-like: truth and bias both sum to zero, so the mean bias is 0, but an
    # estimator returning half the gradient has b = -g/2: relative bias along g is -1/2.
    truth = [0.3, -0.1, -0.2]
    frame = tidy([{"coord": i, "truth": g, "bias": -g / 2, "mean": g / 2, "bias_se": 1e-3}
                  for i, g in enumerate(truth)])
    row = summaries.summarize(frame).iloc[0]
    assert row["bias"] == pytest.approx(0.0, abs=1e-15)
    assert row["rel_bias"] == pytest.approx(-0.5)
    assert row["measured_biased"]


def test_bias_threshold_is_bonferroni_but_never_below_four():
    assert decisions.bias_threshold(1) == 4.0  # Phi^-1(1 - 5e-4) = 3.29 < 4
    assert decisions.bias_threshold(1000) == pytest.approx(4.8916, abs=1e-3)  # Phi^-1(1 - 5e-7)


def test_bias_test_flags_the_whole_cell_and_respects_multiplicity():
    one = [{"estimator": "A", "param": p, "coord": 0, "bias": b, "bias_se": 0.01}
           for p, b in (("mu", 0.045), ("sigma", 0.0))]  # z = 4.5 > 4 on one parameter
    many = [{"estimator": "B", "coord": i, "bias": 0.045 if i == 7 else 0.0, "bias_se": 0.01}
            for i in range(1000)]  # z = 4.5 < 4.89 among 1000 coordinates: chance
    summary = summaries.summarize(tidy(one + many)).set_index(["estimator", "param"])
    assert summary.loc[("A", "mu"), "measured_biased"]
    assert summary.loc[("A", "sigma"), "measured_biased"]  # the cell is biased as a whole
    assert not summary.loc[("B", "theta"), "measured_biased"]


def test_deterministic_estimators_rounding_is_not_bias_or_variance():
    frame = tidy([
        {"estimator": "exact", "bias": 1e-17, "bias_se": 0.0, "variance": 1e-33,
         "variance_se": 1e-34, "mean": 1.0},
        {"estimator": "naive", "unbiased": False, "bias": -2.0, "bias_se": 0.0, "variance": 0.0,
         "variance_se": 0.0, "mean": -1.0},
    ])
    summary = summaries.summarize(frame).set_index("estimator")
    assert not summary.loc["exact", "measured_biased"]
    assert summary.loc["exact", "variance"] == 0.0
    assert summary.loc["naive", "measured_biased"]


def synthetic_leaderboard_frame():
    """Known answer. Per evaluation: s=1 A (1.0) beats B (0.2 x 10 = 2.0); s=2 B (0.05 x 10 =
    0.5) beats A. C (biased by design) and D (measured bias, z = 100) are far lower but must
    never be picked; s=3 has only C and D."""
    rows = []
    for s in (1, 2, 3):
        if s != 3:
            b_var = 0.2 if s == 1 else 0.05
            rows += [
                {"s": s, "estimator": "A", "variance": 1.0, "variance_se": 0.05},
                {"s": s, "estimator": "B", "variance": b_var, "variance_se": b_var / 20,
                 "evals_per_estimate": 10.0, "seconds_per_estimate": 2e-6},
            ]
        rows += [
            {"s": s, "estimator": "C", "unbiased": False, "variance": 0.01, "bias": 0.5},
            {"s": s, "estimator": "D", "variance": 0.05, "bias": 1.0, "bias_se": 0.01},
        ]
    return tidy(rows)


def test_leaderboard_picks_the_lowest_cost_normalised_unbiased_estimator():
    summary = summaries.summarize(synthetic_leaderboard_frame())
    board = summaries.leaderboard(summary, "var_x_evals").set_index("s")
    assert board.loc[1, "best"] == "A" and board.loc[1, "runner_up"] == "B"
    assert board.loc[2, "best"] == "B" and board.loc[2, "runner_up"] == "A"
    assert pd.isna(board.loc[3, "best"]) and board.loc[3, "candidates"] == 0
    # ratio 2 in both; se = r sqrt((se_a/a)^2 + (se_b/b)^2) = 2 sqrt(2 * 0.05^2)
    for s in (1, 2):
        assert board.loc[s, "ratio"] == pytest.approx(2.0)
        assert board.loc[s, "ratio_se"] == pytest.approx(2 * math.sqrt(2) * 0.05)
        assert "C (biased by design)" in board.loc[s, "excluded"]
        assert "D (measured bias)" in board.loc[s, "excluded"]
    assert not set(board["best"].dropna()) & {"C", "D"}
    assert not set(board["runner_up"].dropna()) & {"C", "D"}
    # Per second the answer changes at s=1: B costs 2e-6 s, A 1e-6 s -> 4e-7 vs 1e-6.
    seconds = summaries.leaderboard(summary, "var_x_seconds").set_index("s")
    assert seconds.loc[1, "best"] == "B" and seconds.loc[1, "ratio"] == pytest.approx(2.5)


def test_later_runs_supersede_earlier_rows_of_the_same_cell(tmp_path):
    old = tidy([{"estimator": "A", "variance": 5.0}, {"estimator": "B", "variance": 3.0}])
    new = tidy([{"estimator": "A", "variance": 1.0, "run_id": "run-2",
                 "started_at": "2026-02-01T00:00:00+00:00"}])
    old.to_parquet(tmp_path / "old.parquet")
    new.to_parquet(tmp_path / "new.parquet")
    frame, superseded = summaries.load([tmp_path])
    assert superseded == 1
    assert frame.set_index("estimator")["variance"].to_dict() == {"A": 1.0, "B": 3.0}


def test_palette_is_fixed_by_sorted_names_and_distinct():
    assert estimator_styles(["b", "a", "c"]) == estimator_styles(["c", "a", "b", "a"])
    for n in (6, 10, 20):
        colors = [s.color for s in estimator_styles([f"e{i:02d}" for i in range(n)]).values()]
        assert len(set(colors)) == n


def test_sweep_figure_holds_other_settings_at_their_middle_value(tmp_path):
    rows = [{"s": s, "t": t, "estimator": e, "variance": s * t * (1 + i)}
            for s in (1, 10, 100) for t in (0.5, 1.5, 2.5) for i, e in enumerate("AB")]
    summary = summaries.summarize(tidy(rows))
    cols = summaries.suite_columns(summary)
    assert cols.swept == ["s", "t"]
    path = tmp_path / "sweep.png"
    info = sweep_figure(summary, cols, "s", estimator_styles("AB"), path, "cpu")
    assert info.fixed == {"t": 1.5}
    assert Image.open(path).format == "PNG"
    # Several runs need not form a full grid: hold t where s has the most values.
    ragged = summary[(summary["t"] != 1.5) & ~((summary["t"] == 0.5) & (summary["s"] == 10))]
    assert held_settings(ragged, ["s", "t"], "s") == {"t": 2.5}
    # ... and draw nothing when no combination leaves two values of x.
    single = summary[summary["s"] == 1]
    assert sweep_figure(single, cols, "s", estimator_styles("AB"), path, "cpu") is None


# ---------------------------------------------------------------- the report, end to end


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    results = root / "results"
    quadratic = invoke("run", "--suite", "gaussian-quadratic", "-e", "pathwise", "-e",
                       "score-function", "-e", "naive", "--set", "mu=1", "--set", "sigma=0.5,2",
                       "--set", "k=0", "--set", "dim=3", "--samples", "400", "--out", results)
    assert quadratic.exit_code == 0, quadratic.output
    cos = invoke("run", "--suite", "gaussian-cos", "-e", "pathwise", "--set", "sigma=1",
                 "--set", "k=1", "--set", "dim=1", "--samples", "400", "--out", results)
    assert cos.exit_code == 0, cos.output
    # A GPU run of the quadratic suite, fabricated: same rows, device cuda, 10x faster.
    frame = pd.read_parquet(next(p for p in store.run_dirs(results)
                                 if store.read_run_json(p)["request"]["suite"]
                                 == "gaussian-quadratic"))
    gpu = root / "gpu"
    gpu.mkdir()
    frame.assign(device="cuda", device_name="fabricated GPU",
                 seconds_per_estimate=frame["seconds_per_estimate"] / 10,
                 seconds_per_estimate_se=frame["seconds_per_estimate_se"] / 10,
                 ).to_parquet(gpu / "cuda.parquet")
    out = root / "out"
    result = invoke("report", results, gpu, "--out", out)
    assert result.exit_code == 0, result.output
    assert "wrote report" in result.output
    return out


def test_every_referenced_figure_exists(built):
    page = (built / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) >= 7  # quadratic: sweep over sigma, cost, bias, time; cos: 3
    for name in images:
        with Image.open(built / name) as image:
            assert image.format == "PNG" and image.width > 500 and image.height > 300
    markdown = (built / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert sorted(linked) == sorted(images)


def test_page_names_every_estimator_suite_and_device(built):
    page = (built / "index.html").read_text()
    for name in ("pathwise", "score-function", "naive", "gaussian-quadratic", "gaussian-cos"):
        assert name in page
    assert "Budget: wall time on cpu" in page and "Budget: wall time on cuda" in page
    assert "naive: biased by design" in page
    summary = pd.read_csv(built / "summary.csv")
    quadratic = summary[summary["suite"] == "gaussian-quadratic"]
    assert set(quadratic["device"]) == {"cpu", "cuda"}


def test_real_leaderboard_prefers_pathwise_on_the_quadratic(built):
    # Pathwise per-coordinate estimates of f = sum (z_i - k)^2, z = mu + sigma eps, cost 1 eval:
    #   d/dmu    2(z - k):      variance 4 sigma^2
    #   d/dsigma 2(z - k) eps:  variance 4 (mu - k)^2 + 8 sigma^2   (Var eps^2 = 2, E eps^3 = 0)
    # The score function also carries the other coordinates' terms of f: far noisier.
    board = pd.read_csv(built / "leaderboard.csv")
    quadratic = board[(board["suite"] == "gaussian-quadratic")
                      & (board["budget"] == "evaluations")]
    assert len(quadratic) == 4  # 2 sigmas x 2 parameters, cpu rows
    assert set(quadratic["best"]) == {"pathwise"}
    assert set(quadratic["runner_up"]) == {"score-function"}
    assert (quadratic["ratio"] - 2 * quadratic["ratio_se"] > 1).all()  # "clear" wins
    for row in quadratic.itertuples():
        exact = (4 * row.sigma**2 if row.param == "mu"
                 else 4 * (row.mu - row.k) ** 2 + 8 * row.sigma**2)
        assert abs(row.best_value - exact) < 5 * row.best_se, (row.param, row.sigma)


def test_bad_input_is_one_line_exit_2(tmp_path):
    assert_one_line_error(invoke("report", tmp_path / "missing"), "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(invoke("report", empty), "no .parquet results")
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "other.parquet")
    assert_one_line_error(invoke("report", tmp_path / "other.parquet"), "not gradbench results")
    tidy([{}]).iloc[:0].to_parquet(tmp_path / "zero.parquet")
    assert_one_line_error(invoke("report", tmp_path / "zero.parquet"), "no result rows")
    good = tmp_path / "good.parquet"
    tidy([{}]).to_parquet(good)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_one_line_error(invoke("report", good, "--out", blocker / "report"),
                          "cannot write to --out")


def test_synthetic_frame_has_the_schema():
    assert set(REQUIRED_COLUMNS) <= set(BASE)


def test_generic_suite_without_truth_with_hyperparameter_variants(tmp_path):
    # An unregistered suite: a numeric and a string setting, no ground truth (bias unknown),
    # estimator B swept over a hyperparameter K that A does not have (null in A's rows).
    rows = []
    for s in (1.0, 100.0):
        for cost in ("square", "log"):
            rows.append({"suite": "no-truth", "s": s, "cost": cost, "estimator": "A",
                         "K": None, "variance": s, "truth": np.nan, "bias": np.nan,
                         "bias_se": np.nan})
            for k in (2, 4):
                rows.append({"suite": "no-truth", "s": s, "cost": cost, "estimator": "B",
                             "K": k, "variance": s / k, "evals_per_estimate": float(k),
                             "truth": np.nan, "bias": np.nan, "bias_se": np.nan})
    tidy(rows).to_parquet(tmp_path / "rows.parquet")
    out = builder.build_report([tmp_path / "rows.parquet"], tmp_path / "out")
    page = (out / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(images) == sorted([
        "no-truth-variance-vs-s.png", "no-truth-variance-vs-cost.png",
        "no-truth-variance-vs-K.png", "no-truth-cost.png", "no-truth-time.png"])  # no bias
    assert all((out / name).is_file() for name in images)
    assert "B (K=2)" in page and "B (K=4)" in page
    # Per evaluation A (s) and B (s/K x K = s) tie exactly; per second B costs the same 1e-6
    # s as A, so B (K=4) wins with s/4: ratio to the runner-up B (K=2), s/2, is 2.
    board = pd.read_csv(out / "leaderboard.csv")
    seconds = board[board["budget"] == "seconds"]
    assert set(seconds["best"]) == {"B (K=4)"} and set(seconds["runner_up"]) == {"B (K=2)"}
    assert np.allclose(seconds["ratio"], 2.0)
