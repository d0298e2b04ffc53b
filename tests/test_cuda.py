"""The GPU path: cells run on CUDA with device generators and device-side statistics, agree with
the CPU statistically, are labelled with the GPU's name, and cost no host round-trip per chunk.
Skipped without a CUDA device (torch.cuda.is_available())."""

import math
import warnings

import pytest
import torch
from typer.testing import CliRunner

from gradbench.app import measure, planning
from gradbench.app.cli import app
from gradbench.estimators import get_estimator
from gradbench.results import store
from gradbench.suites import get_suite

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SETTINGS = (("mu", 1.0), ("sigma", 2.0), ("k", 3.0), ("dim", 3))


def cell(estimator: str, device: str, samples: int = 200_000, dtype: str = "float64"):
    hyper = tuple((h.name, h.default) for h in get_estimator(estimator).hyperparams.values())
    return planning.Cell("gaussian-quadratic", SETTINGS, estimator, hyper, device, dtype, samples,
                       0)


@pytest.mark.parametrize("estimator", ["pathwise", "score-function", "measure-valued"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cuda_cell_agrees_with_cpu(estimator, dtype):
    cpu = measure.run_cell(cell(estimator, "cpu", dtype=dtype))
    gpu = measure.run_cell(cell(estimator, "cuda", dtype=dtype))
    assert gpu["device"][0] == "cuda"
    assert gpu["device_name"][0] == torch.cuda.get_device_name()
    assert gpu["n"] == cpu["n"] == [200_000] * len(cpu["n"])
    assert 0 < gpu["seconds_per_estimate"][0] < math.inf
    # Independent draws (different generators): each difference within 5 combined SEs.
    for i in range(len(cpu["mean"])):
        se = math.hypot(cpu["mean_se"][i], gpu["mean_se"][i])
        assert abs(cpu["mean"][i] - gpu["mean"][i]) < 5 * se, (estimator, i)
        var_se = math.hypot(cpu["variance_se"][i], gpu["variance_se"][i])
        assert abs(cpu["variance"][i] - gpu["variance"][i]) < 5 * var_se, (estimator, i)
        assert abs(gpu["bias"][i]) < 5 * gpu["bias_se"][i], (estimator, i)


@pytest.mark.parametrize("estimator", ["score-function", "arm", "disarm"])
@pytest.mark.parametrize("dim", [1, 20])
def test_cuda_discrete_cell_agrees_with_cpu(estimator, dim):
    # Discrete cells add what Gaussian ones do not: rare-state reliability (enumerated on the
    # cell's device) and Bernoulli draws.
    settings = (("theta", 2.0), ("t", 0.45), ("dim", dim))

    hyper = tuple((h.name, h.default) for h in get_estimator(estimator).hyperparams.values())

    def bernoulli(device: str) -> dict:
        return measure.run_cell(planning.Cell("bernoulli-toy", settings, estimator, hyper,
                                              device, "float64", 100_000, 0))

    cpu, gpu = bernoulli("cpu"), bernoulli("cuda")
    assert gpu["device"][0] == "cuda" and len(gpu["mean"]) == len(cpu["mean"])
    for i in range(len(cpu["mean"])):
        if cpu["level"][i] != "coord":
            continue  # a tensor row's mean is the coordinate it selects as worst
        se = math.hypot(cpu["mean_se"][i], gpu["mean_se"][i])
        assert abs(cpu["mean"][i] - gpu["mean"][i]) < 5 * se, (estimator, i)
        assert abs(gpu["bias"][i]) < 5 * gpu["bias_se"][i], (estimator, i)


def test_no_host_round_trip_per_chunk():
    # The fused pathwise path, 8 chunks vs 40: the host syncs (the problem's one-off setup, the
    # first chunk's shift check, timing read-back, the summary's copies to the host) are the
    # same in number, i.e. none of them happens per chunk.
    problem = get_suite("gaussian-quadratic").problem(dict(SETTINGS), device=torch.device("cuda"))
    size = measure.chunk_size(problem, 10**12, 1.0, "cuda")
    measure.run_cell(cell("pathwise", "cuda", samples=1000))  # CUDA context and kernels warm

    def syncs(chunks: int) -> int:
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                rows = measure.run_cell(cell("pathwise", "cuda", samples=size * chunks))
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert rows["chunks"][0] == chunks
        return sum("synchroniz" in str(w.message).lower() for w in caught)

    assert syncs(40) == syncs(8)


def test_cli_runs_cpu_and_cuda_in_one_run(results_dir):
    result = CliRunner().invoke(app, ["run", "-s", "gaussian-quadratic", "-e", "pathwise",
                                      "--set", "dim=1", "--set", "sigma=1", "--set", "k=0",
                                      "--samples", "20000", "--device", "cpu", "--device",
                                      "cuda", "--out", str(results_dir)])
    assert result.exit_code == 0, result.output
    frame = store.read_results(results_dir)
    assert set(frame["device"]) == {"cpu", "cuda"}
    names = set(frame.loc[frame["device"] == "cuda", "device_name"])
    assert names == {torch.cuda.get_device_name()}


@pytest.mark.parametrize("suite", ["binary-latent", "vae-gaussian", "vae-bernoulli",
                                   "bayes-logistic"])
def test_every_trainable_suite_trains_on_cuda(suite, tmp_path):
    # The trainers' evaluations draw with a generator on the trajectory's device (the first GPU
    # run found vae-bernoulli's held-out bound drawing on the CPU with a CUDA generator).
    result = CliRunner().invoke(app, ["train", "--suite", suite, "--device", "cuda", "--steps",
                                      "4", "--seeds", "1", "--eval-every", "2",
                                      "--variance-draws", "4", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = store.read_training(tmp_path)
    assert (rows["device"] == "cuda").all() and sorted(set(rows["step"])) == [0, 2, 4]


@pytest.mark.parametrize("columns", [list(range(24)), [0, 20]])  # entry staging, row staging
def test_screened_tails_on_cuda_equal_the_unscreened(columns, monkeypatch):
    """The tail buffer's host-side screen (CPU-only by default, tail_buffer.screens) is exact on
    CUDA too: with it on, the same top-T magnitudes and block norms as without it."""
    from gradbench.core import tail_buffer
    from gradbench.core.streaming import StreamingMoments
    x = torch.randn(20_000, 40, dtype=torch.float64, device="cuda") * torch.arange(
        1, 41, device="cuda")

    def tails():
        acc = StreamingMoments(40, "cuda", samples=20_000, tail_size=51,
                               tail_coords=torch.tensor(columns, device="cuda"),
                               blocks=[(0, 20), (20, 40)])
        for start in range(0, 20_000, 500):
            acc.add(x[start:start + 500])
        return acc.tails()

    plain = tails()
    monkeypatch.setattr(tail_buffer, "screens", lambda device: True)
    screened = tails()
    assert torch.equal(plain.deviations.abs().sort(0).values,
                       screened.deviations.abs().sort(0).values)
    for block in range(2):
        assert torch.equal(plain.block_norms(block).sort().values,
                           screened.block_norms(block).sort().values)
